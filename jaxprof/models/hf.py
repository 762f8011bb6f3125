"""Weights in and out of local Hugging Face directories (config.json + safetensors).

Each family has an explicit rename table: one `Rule` per parameter naming the HF tensor (with `{i}`
for the layer), and the reshapes/transposes between the HF layout and ours. Loading asserts that
every expected tensor is present with its expected shape and that nothing unexpected is left over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxprof.models import causal_lm, layers
from jaxprof.models.gpt2 import GPT2Config
from jaxprof.models.layers import RopeConfig
from jaxprof.models.llama import LlamaConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")
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


def _transpose(w: np.ndarray) -> np.ndarray:
  return w.T


# ---------------------------------------------------------------------------------------------
# config.json <-> config dataclasses
# ---------------------------------------------------------------------------------------------


def _rope_from_hf(hf: dict) -> RopeConfig:
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
  kind = params.get("rope_type", params.get("type", "default"))
  return RopeConfig(
      theta=float(theta), kind=kind, factor=float(params.get("factor", 1.0)),
      low_freq_factor=float(params.get("low_freq_factor", 1.0)),
      high_freq_factor=float(params.get("high_freq_factor", 4.0)),
      original_max_position=int(params.get("original_max_position_embeddings", 8192)))


def config_from_hf(hf: dict, source: str = "config.json") -> causal_lm.LMConfig:
  """Builds our config from a parsed HF config.json; errors name the unsupported field."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(f"{source}: unsupported model_type {model_type!r}; supported causal "
                          f"LMs: {', '.join(SUPPORTED_MODEL_TYPES)} (and 'bert' as an encoder)")
  if model_type == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
      raise CheckpointError(f"{source}: unsupported GPT-2 activation_function {act!r}")
    return GPT2Config(vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"],
                      num_layers=hf["n_layer"], num_heads=hf["n_head"],
                      max_position_embeddings=hf["n_positions"],
                      intermediate_size=hf.get("n_inner"),
                      layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))
  for flag in ("mlp_bias", "use_sliding_window"):
    if hf.get(flag):
      raise CheckpointError(f"{source}: {flag}=true is not supported")
  if model_type != "qwen2" and hf.get("attention_bias"):
    raise CheckpointError(f"{source}: attention_bias=true (bias on o_proj too) is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"{source}: unsupported hidden_act {hf['hidden_act']!r}; expected silu")
  heads = hf["num_attention_heads"]
  return LlamaConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, rope=_rope_from_hf(hf),
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", model_type != "qwen2")),
      qkv_bias=model_type == "qwen2",
      max_position_embeddings=hf.get("max_position_embeddings", 2048), model_type=model_type)


def config_to_hf(cfg: causal_lm.LMConfig) -> dict:
  """The config.json `transformers` needs to rebuild the same model."""
  if isinstance(cfg, GPT2Config):
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads, "n_positions": cfg.max_position_embeddings,
            "n_inner": cfg.intermediate_size, "layer_norm_epsilon": cfg.layer_norm_eps,
            "activation_function": "gelu_new", "tie_word_embeddings": True}
  rope = {"rope_type": cfg.rope.kind, "rope_theta": cfg.rope.theta}
  if cfg.rope.kind != "default":
    rope["factor"] = cfg.rope.factor
  if cfg.rope.kind == "llama3":
    rope.update(low_freq_factor=cfg.rope.low_freq_factor,
                high_freq_factor=cfg.rope.high_freq_factor,
                original_max_position_embeddings=cfg.rope.original_max_position)
  arch = {"qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}.get(
      cfg.model_type, "LlamaForCausalLM")
  return {"model_type": cfg.model_type, "architectures": [arch], "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
          "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
          "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
          "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
          "max_position_embeddings": cfg.max_position_embeddings,
          "tie_word_embeddings": cfg.tie_embeddings, "rope_theta": cfg.rope.theta,
          "rope_parameters": rope, "attention_bias": False}


# ---------------------------------------------------------------------------------------------
# Rename tables
# ---------------------------------------------------------------------------------------------


def _llama_rules(cfg: LlamaConfig) -> list[Rule]:
  d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

  def proj(heads):  # HF [heads*H, D] <-> ours [D, heads, H]
    return dict(to_ours=lambda w: w.T.reshape(d, heads, h),
                to_hf=lambda w: w.reshape(d, heads * h).T)

  def bias(heads):
    return dict(to_ours=lambda b: b.reshape(heads, h), to_hf=lambda b: b.reshape(heads * h))

  a, m = "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
  rules = [
      Rule("embed", "model.embed_tokens.weight"),
      Rule("final_norm", "model.norm.weight"),
      Rule("layers/attn_norm", "model.layers.{i}.input_layernorm.weight"),
      Rule("layers/mlp_norm", "model.layers.{i}.post_attention_layernorm.weight"),
      Rule("layers/q", f"{a}.q_proj.weight", **proj(n)),
      Rule("layers/k", f"{a}.k_proj.weight", **proj(k)),
      Rule("layers/v", f"{a}.v_proj.weight", **proj(k)),
      Rule("layers/o", f"{a}.o_proj.weight", to_ours=lambda w: w.T.reshape(n, h, d),
           to_hf=lambda w: w.reshape(n * h, d).T),
      Rule("layers/gate", f"{m}.gate_proj.weight", _transpose, _transpose),
      Rule("layers/up", f"{m}.up_proj.weight", _transpose, _transpose),
      Rule("layers/down", f"{m}.down_proj.weight", _transpose, _transpose),
  ]
  if cfg.qkv_bias:
    rules += [Rule("layers/q_bias", f"{a}.q_proj.bias", **bias(n)),
              Rule("layers/k_bias", f"{a}.k_proj.bias", **bias(k)),
              Rule("layers/v_bias", f"{a}.v_proj.bias", **bias(k))]
  if not cfg.tie_embeddings:
    rules.append(Rule("lm_head", "lm_head.weight", _transpose, _transpose))
  return rules


def _gpt2_rules(cfg: GPT2Config) -> list[Rule]:
  # c_attn is split into q/k/v by `_split_gpt2_qkv` before the table applies. HF GPT-2 uses Conv1D,
  # whose weights are already [in, out].
  d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  heads = dict(to_ours=lambda w: w.reshape(d, n, h), to_hf=lambda w: w.reshape(d, n * h))
  heads_bias = dict(to_ours=lambda b: b.reshape(n, h), to_hf=lambda b: b.reshape(n * h))
  blk = "h.{i}"
  rules = [Rule("embed", "wte.weight"), Rule("pos_embed", "wpe.weight"),
           Rule("final_norm/scale", "ln_f.weight"), Rule("final_norm/bias", "ln_f.bias"),
           Rule("layers/o", f"{blk}.attn.c_proj.weight", to_ours=lambda w: w.reshape(n, h, d),
                to_hf=lambda w: w.reshape(n * h, d)),
           Rule("layers/o_bias", f"{blk}.attn.c_proj.bias"),
           Rule("layers/fc", f"{blk}.mlp.c_fc.weight"),
           Rule("layers/fc_bias", f"{blk}.mlp.c_fc.bias"),
           Rule("layers/proj", f"{blk}.mlp.c_proj.weight"),
           Rule("layers/proj_bias", f"{blk}.mlp.c_proj.bias")]
  for ln in ("ln_1", "ln_2"):
    ours = "ln1" if ln == "ln_1" else "ln2"
    rules += [Rule(f"layers/{ours}/scale", f"{blk}.{ln}.weight"),
              Rule(f"layers/{ours}/bias", f"{blk}.{ln}.bias")]
  for x in "qkv":
    rules += [Rule(f"layers/{x}", f"{blk}.attn.c_attn_{x}.weight", **heads),
              Rule(f"layers/{x}_bias", f"{blk}.attn.c_attn_{x}.bias", **heads_bias)]
  return rules


def _rules(cfg: causal_lm.LMConfig) -> list[Rule]:
  return _gpt2_rules(cfg) if isinstance(cfg, GPT2Config) else _llama_rules(cfg)


def _split_gpt2_qkv(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for name, w in tensors.items():
    name = name.removeprefix("transformer.")
    if name.endswith(".attn.c_attn.weight") or name.endswith(".attn.c_attn.bias"):
      stem, kind = name.rsplit(".", 1)
      for x, part in zip("qkv", np.split(w, 3, axis=-1), strict=True):
        out[f"{stem}_{x}.{kind}"] = part
    elif name != "lm_head.weight":  # GPT-2's head is always tied to wte
      out[name] = w
  return out


def _merge_gpt2_qkv(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for name, w in tensors.items():
    if ".attn.c_attn_" in name:
      stem, kind = name.rsplit(".", 1)
      if stem.endswith("_q"):
        base = stem[:-2]
        parts = [tensors[f"{base}_{x}.{kind}"] for x in "qkv"]
        out[f"transformer.{base}.{kind}"] = np.concatenate(parts, axis=-1)
    else:
      out[f"transformer.{name}"] = w
  return out


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


def params_from_tensors(tensors: dict[str, np.ndarray], cfg: causal_lm.LMConfig,
                        dtype=jnp.float32, source: str = "checkpoint") -> dict:
  """Our causal-LM params from HF tensors (float32 numpy), checking every name and shape."""
  if isinstance(cfg, GPT2Config):
    tensors = _split_gpt2_qkv(tensors)
  if getattr(cfg, "tie_embeddings", False):
    tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}  # a stored tied copy
  shapes = layers.shapes_from_specs(causal_lm.param_specs(cfg))
  return apply_rules(tensors, _rules(cfg), shapes, cfg.num_layers, dtype, source)


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


def load_hf(path: str | os.PathLike, dtype=jnp.float32) -> tuple[causal_lm.LMConfig, dict]:
  """Loads a causal LM from a local HF directory: (config, params in `dtype`)."""
  path = pathlib.Path(path)
  cfg = config_from_hf(read_hf_config(path), source=str(path / "config.json"))
  logging.info("loading %s (%s) from %s", type(cfg).__name__, cfg.model_type, path)
  return cfg, params_from_tensors(read_safetensors(path), cfg, dtype, source=str(path))


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def params_to_tensors(params: dict, cfg: causal_lm.LMConfig) -> dict[str, np.ndarray]:
  flat = {"/".join(k): np.asarray(jax.device_get(v), np.float32)
          for k, v in traverse_util.flatten_dict(params).items()}
  out = {}
  for rule in _rules(cfg):
    value = flat[rule.ours]
    if rule.ours.startswith("layers/"):
      for i in range(cfg.num_layers):
        out[rule.hf.format(i=i)] = np.ascontiguousarray(rule.to_hf(value[i]))
    else:
      out[rule.hf] = np.ascontiguousarray(rule.to_hf(value))
  if isinstance(cfg, GPT2Config):
    out = _merge_gpt2_qkv(out)
  return out


def save_hf(params: dict, cfg: causal_lm.LMConfig, out_dir: str | os.PathLike,
            tokenizer_dir: str | os.PathLike | None = None,
            max_shard_bytes: int | None = None) -> pathlib.Path:
  """Writes an HF directory (config.json, float32 safetensors, tokenizer files) atomically.

  With `max_shard_bytes`, weights go to several shards plus model.safetensors.index.json.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  try:
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
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
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
