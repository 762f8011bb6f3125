"""BERT encoder (MiniLM and friends): post-LayerNorm blocks, exact GELU, mean pooling + L2 norm.

Shapes: B batch, T length, D width, N heads, H head dim, F MLP width, L layers.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp

from jaxprof.models import hf, layers
from jaxprof.models.layers import ParamSpec


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf_cfg: dict, source: str = "config.json") -> BertConfig:
    if hf_cfg.get("model_type") != "bert":
      raise hf.CheckpointError(f"{source}: model_type {hf_cfg.get('model_type')!r} is not an "
                               "encoder; supported encoders: bert")
    if hf_cfg.get("hidden_act", "gelu") != "gelu":
      raise hf.CheckpointError(f"{source}: unsupported hidden_act {hf_cfg['hidden_act']!r}")
    if hf_cfg.get("position_embedding_type", "absolute") != "absolute":
      raise hf.CheckpointError(f"{source}: only absolute position embeddings are supported")
    return cls(vocab_size=hf_cfg["vocab_size"], hidden_size=hf_cfg["hidden_size"],
               intermediate_size=hf_cfg["intermediate_size"],
               num_layers=hf_cfg["num_hidden_layers"], num_heads=hf_cfg["num_attention_heads"],
               max_position_embeddings=hf_cfg.get("max_position_embeddings", 512),
               type_vocab_size=hf_cfg.get("type_vocab_size", 2),
               layer_norm_eps=hf_cfg.get("layer_norm_eps", 1e-12))


def param_specs(cfg: BertConfig) -> dict[str, ParamSpec]:
  d, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  n, h = cfg.num_heads, cfg.head_dim
  w, z, o = layers.normal(0.02), layers.zeros, layers.ones
  specs = {
      "embed": ParamSpec((cfg.vocab_size, d), ("vocab", "embed"), w),
      "pos_embed": ParamSpec((cfg.max_position_embeddings, d), (None, "embed"), w),
      "type_embed": ParamSpec((cfg.type_vocab_size, d), (None, "embed"), w),
      "embed_norm/scale": ParamSpec((d,), ("norm",), o),
      "embed_norm/bias": ParamSpec((d,), ("norm",), z),
  }
  for x in "qkv":
    specs[f"layers/{x}"] = ParamSpec((l, d, n, h), ("layers", "embed", "heads", "head_dim"), w)
    specs[f"layers/{x}_bias"] = ParamSpec((l, n, h), ("layers", "heads", "head_dim"), z)
  specs |= {
      "layers/o": ParamSpec((l, n, h, d), ("layers", "heads", "head_dim", "embed"), w),
      "layers/o_bias": ParamSpec((l, d), ("layers", "norm"), z),
      "layers/fc": ParamSpec((l, d, f), ("layers", "embed", "mlp"), w),
      "layers/fc_bias": ParamSpec((l, f), ("layers", "mlp"), z),
      "layers/proj": ParamSpec((l, f, d), ("layers", "mlp", "embed"), w),
      "layers/proj_bias": ParamSpec((l, d), ("layers", "norm"), z),
  }
  for ln in ("ln1", "ln2"):
    specs[f"layers/{ln}/scale"] = ParamSpec((l, d), ("layers", "norm"), o)
    specs[f"layers/{ln}/bias"] = ParamSpec((l, d), ("layers", "norm"), z)
  return specs


def init_params(cfg: BertConfig, key: jax.Array, dtype=jnp.float32) -> dict:
  return layers.init_from_specs(param_specs(cfg), key, dtype)


def param_axes(cfg: BertConfig) -> dict:
  return layers.axes_from_specs(param_specs(cfg))


def hf_rules(cfg: BertConfig) -> list[hf.Rule]:
  d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  blk = "encoder.layer.{i}"
  heads = dict(to_ours=lambda w: w.T.reshape(d, n, h), to_hf=lambda w: w.reshape(d, n * h).T)
  heads_bias = dict(to_ours=lambda b: b.reshape(n, h), to_hf=lambda b: b.reshape(n * h))
  t = lambda w: w.T
  rules = [
      hf.Rule("embed", "embeddings.word_embeddings.weight"),
      hf.Rule("pos_embed", "embeddings.position_embeddings.weight"),
      hf.Rule("type_embed", "embeddings.token_type_embeddings.weight"),
      hf.Rule("embed_norm/scale", "embeddings.LayerNorm.weight"),
      hf.Rule("embed_norm/bias", "embeddings.LayerNorm.bias"),
      hf.Rule("layers/o", f"{blk}.attention.output.dense.weight",
              to_ours=lambda w: w.T.reshape(n, h, d), to_hf=lambda w: w.reshape(n * h, d).T),
      hf.Rule("layers/o_bias", f"{blk}.attention.output.dense.bias"),
      hf.Rule("layers/ln1/scale", f"{blk}.attention.output.LayerNorm.weight"),
      hf.Rule("layers/ln1/bias", f"{blk}.attention.output.LayerNorm.bias"),
      hf.Rule("layers/fc", f"{blk}.intermediate.dense.weight", t, t),
      hf.Rule("layers/fc_bias", f"{blk}.intermediate.dense.bias"),
      hf.Rule("layers/proj", f"{blk}.output.dense.weight", t, t),
      hf.Rule("layers/proj_bias", f"{blk}.output.dense.bias"),
      hf.Rule("layers/ln2/scale", f"{blk}.output.LayerNorm.weight"),
      hf.Rule("layers/ln2/bias", f"{blk}.output.LayerNorm.bias"),
  ]
  for x, name in zip("qkv", ("query", "key", "value"), strict=True):
    rules += [hf.Rule(f"layers/{x}", f"{blk}.attention.self.{name}.weight", **heads),
              hf.Rule(f"layers/{x}_bias", f"{blk}.attention.self.{name}.bias", **heads_bias)]
  return rules


def load_hf(path: str | os.PathLike, dtype=jnp.float32) -> tuple[BertConfig, dict]:
  """Loads a BERT encoder from a local HF directory (the pooler, unused, is dropped)."""
  path = pathlib.Path(path)
  cfg = BertConfig.from_hf(hf.read_hf_config(path), source=str(path / "config.json"))
  tensors = {k.removeprefix("bert."): v for k, v in hf.read_safetensors(path).items()}
  tensors = {k: v for k, v in tensors.items() if not k.startswith(("pooler.", "cls."))}
  shapes = layers.shapes_from_specs(param_specs(cfg))
  return cfg, hf.apply_rules(tensors, hf_rules(cfg), shapes, cfg.num_layers, dtype, str(path))


def _block(cfg: BertConfig, x: jax.Array, p: dict, visible: jax.Array) -> jax.Array:
  q = jnp.einsum("BTD,DNH->BTNH", x, p["q"]) + p["q_bias"]
  k = jnp.einsum("BTD,DNH->BTNH", x, p["k"]) + p["k_bias"]
  v = jnp.einsum("BTD,DNH->BTNH", x, p["v"]) + p["v_bias"]
  attn = layers.attend(q, layers.heads_first(k), layers.heads_first(v), visible)
  attn = jnp.einsum("BTNH,NHD->BTD", attn, p["o"]) + p["o_bias"]
  x = layers.layer_norm(x + attn, p["ln1"]["scale"], p["ln1"]["bias"], cfg.layer_norm_eps)
  h = jax.nn.gelu(jnp.einsum("BTD,DF->BTF", x, p["fc"]) + p["fc_bias"], approximate=False)
  h = jnp.einsum("BTF,FD->BTD", h, p["proj"]) + p["proj_bias"]
  return layers.layer_norm(x + h, p["ln2"]["scale"], p["ln2"]["bias"], cfg.layer_norm_eps)


def encode(params: dict, cfg: BertConfig, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Token states [B, T, D] of right-padded tokens [B, T] with mask [B, T] bool."""
  t = tokens.shape[1]
  x = params["embed"][tokens] + params["pos_embed"][jnp.arange(t)][None] + params["type_embed"][0]
  x = layers.layer_norm(x, params["embed_norm"]["scale"], params["embed_norm"]["bias"],
                        cfg.layer_norm_eps)
  visible = jnp.broadcast_to(mask[:, None, :], (tokens.shape[0], t, t))
  x, _ = jax.lax.scan(lambda x, p: (_block(cfg, x, p, visible), None), x, params["layers"])
  return x


def mean_pool(states: jax.Array, mask: jax.Array, normalize: bool = True) -> jax.Array:
  """Mean over real tokens: states [B, T, D], mask [B, T] -> [B, D] (L2-normalised if asked)."""
  m = mask.astype(states.dtype)[..., None]
  pooled = jnp.sum(states * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  if normalize:
    pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
  return pooled


def embed(params: dict, cfg: BertConfig, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Sentence embeddings [B, D]: mean-pooled, L2-normalised (sentence-transformers MiniLM)."""
  return mean_pool(encode(params, cfg, tokens, mask), mask)
