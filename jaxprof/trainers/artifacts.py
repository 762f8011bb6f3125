"""Small pytrees (a reward model, a critic head) saved as one safetensors file plus a JSON card."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jaxprof import stages


def save_pytree(directory: str | os.PathLike, tree: Any, card: dict) -> pathlib.Path:
  """Writes directory/params.safetensors and directory/card.json (each atomically)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = {"/".join(k): np.asarray(jax.device_get(v))
          for k, v in traverse_util.flatten_dict(tree).items()}
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  os.close(fd)
  save_file(flat, tmp)
  os.replace(tmp, directory / "params.safetensors")
  stages.atomic_write_text(directory / "card.json", json.dumps(card, indent=2))
  return directory.resolve()


def load_pytree(directory: str | os.PathLike) -> tuple[dict, dict]:
  """(params, card) saved by `save_pytree`; names the missing file on error."""
  directory = pathlib.Path(directory)
  for name in ("params.safetensors", "card.json"):
    if not (directory / name).exists():
      raise FileNotFoundError(f"{directory / name} is missing (was the stage completed?)")
  flat = load_file(directory / "params.safetensors")
  tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  return tree, json.loads((directory / "card.json").read_text())
