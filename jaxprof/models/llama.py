"""Llama-family decoder: Llama-2/3.x, SmolLM/SmolLM2, Qwen2 (q/k/v bias), Mistral-style GQA.

Layers are stacked on a leading "layers" axis and run with `lax.scan`, so a 30-layer model compiles
as fast as a 1-layer one. Shapes: B batch, T query length, S key length (cache slots), D model
width, N query heads, K kv heads, H head dim, F MLP width, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxprof.models import layers
from jaxprof.models.cache import KVCache
from jaxprof.models.layers import ParamSpec, RopeConfig


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope: RopeConfig = RopeConfig(theta=10_000.0)
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2
  max_position_embeddings: int = 2048
  model_type: str = "llama"  # kept for export: "llama" | "qwen2" | "mistral"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")


def param_specs(cfg: LlamaConfig) -> dict[str, ParamSpec]:
  d, f, n, k, h, l = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                      cfg.head_dim, cfg.num_layers)
  w = layers.normal(0.02)
  specs = {
      "embed": ParamSpec((cfg.vocab_size, d), ("vocab", "embed"), w),
      "final_norm": ParamSpec((d,), ("norm",), layers.ones),
      "layers/attn_norm": ParamSpec((l, d), ("layers", "norm"), layers.ones),
      "layers/q": ParamSpec((l, d, n, h), ("layers", "embed", "heads", "head_dim"), w),
      "layers/k": ParamSpec((l, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), w),
      "layers/v": ParamSpec((l, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), w),
      "layers/o": ParamSpec((l, n, h, d), ("layers", "heads", "head_dim", "embed"), w),
      "layers/mlp_norm": ParamSpec((l, d), ("layers", "norm"), layers.ones),
      "layers/gate": ParamSpec((l, d, f), ("layers", "embed", "mlp"), w),
      "layers/up": ParamSpec((l, d, f), ("layers", "embed", "mlp"), w),
      "layers/down": ParamSpec((l, f, d), ("layers", "mlp", "embed"), w),
  }
  if cfg.qkv_bias:
    specs["layers/q_bias"] = ParamSpec((l, n, h), ("layers", "heads", "head_dim"), layers.zeros)
    specs["layers/k_bias"] = ParamSpec((l, k, h), ("layers", "kv_heads", "head_dim"), layers.zeros)
    specs["layers/v_bias"] = ParamSpec((l, k, h), ("layers", "kv_heads", "head_dim"), layers.zeros)
  if not cfg.tie_embeddings:
    specs["lm_head"] = ParamSpec((d, cfg.vocab_size), ("embed", "vocab"), w)
  return specs


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
  return KVCache.zeros(cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim, dtype)


def _block(cfg: LlamaConfig, inv_freq: jax.Array, x: jax.Array, p: dict, positions: jax.Array,
           visible: jax.Array, kv: tuple[jax.Array, jax.Array] | None, index: jax.Array | None):
  """One decoder layer. x: [B, T, D]; p: this layer's params; kv: (cache k, v, layer) or None."""
  h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  q = jnp.einsum("BTD,DNH->BTNH", h, p["q"])
  k = jnp.einsum("BTD,DKH->BTKH", h, p["k"])
  v = jnp.einsum("BTD,DKH->BTKH", h, p["v"])
  if cfg.qkv_bias:
    q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
  q = layers.apply_rope(q, positions, inv_freq)
  k = layers.heads_first(layers.apply_rope(k, positions, inv_freq))
  v = layers.heads_first(v)
  if kv is not None:
    kv, k, v = layers.write_kv(kv, k, v, index)
  attn = layers.attend(q, k, v, visible)
  x = x + jnp.einsum("BTNH,NHD->BTD", attn, p["o"])
  h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
  gated = jax.nn.silu(jnp.einsum("BTD,DF->BTF", h, p["gate"])) * jnp.einsum(
      "BTD,DF->BTF", h, p["up"])
  x = x + jnp.einsum("BTF,FD->BTD", gated, p["down"])
  return x, kv


def forward(params: dict, cfg: LlamaConfig, tokens: jax.Array, mask: jax.Array,
            positions: jax.Array | None = None, cache: KVCache | None = None,
            remat: bool = False) -> tuple[jax.Array, KVCache | None]:
  """Runs the decoder.

  Args:
    tokens: [B, T] int32; mask: [B, T] bool (real tokens).
    positions: [B, T] int32 RoPE positions; default counts real tokens only (left padding safe).
    cache: if given, the T tokens are written at slots [cache.index, cache.index + T) and attend to
      every earlier real slot; the updated cache is returned.
  Returns:
    hidden: [B, T, D] after the final norm, and the cache (None if none was given).
  """
  positions, visible, index, key_mask = layers.attention_inputs(mask, positions, cache)
  inv_freq = layers.rope_inv_freq(cfg.rope, cfg.head_dim)
  block = lambda x, p, kv: _block(cfg, inv_freq, x, p, positions, visible, kv, index)
  x, cache = layers.scan_layers(block, params["embed"][tokens], params["layers"], cache, key_mask,
                                remat)
  x = layers.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  return x, cache


def unembedding(params: dict, cfg: LlamaConfig) -> jax.Array:
  """[D, V] output projection (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]
