"""Small pytrees (a reward model, a critic head) saved as one safetensors file plus a JSON card.

The directory may be on an object store (`gs://`): both files go through `jaxprof.paths`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from etils import epath
from flax import traverse_util

from jaxprof import paths


def save_pytree(directory: str | os.PathLike, tree: Any, card: dict) -> epath.Path:
  """Writes directory/params.safetensors and directory/card.json (each atomically; process 0
  only, every process gets the path). `tree` holds host arrays (`jax.device_get` first)."""
  directory = paths.absolute(directory, resolve=True)
  if jax.process_index() == 0:  # one writer of a shared directory
    flat = {"/".join(k): np.asarray(jax.device_get(v))
            for k, v in traverse_util.flatten_dict(tree).items()}
    paths.atomic_write_bytes(directory / "params.safetensors", safetensors.numpy.save(flat))
    paths.atomic_write_text(directory / "card.json", json.dumps(card, indent=2))
  return directory


def load_pytree(directory: str | os.PathLike) -> tuple[dict, dict]:
  """(params, card) saved by `save_pytree`; names the missing file on error."""
  directory = paths.as_path(directory)
  for name in ("params.safetensors", "card.json"):
    if not (directory / name).exists():
      raise FileNotFoundError(f"{directory / name} is missing (was the stage completed?)")
  flat = safetensors.numpy.load((directory / "params.safetensors").read_bytes())
  tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  return tree, json.loads((directory / "card.json").read_text())
