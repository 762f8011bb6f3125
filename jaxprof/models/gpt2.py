"""GPT-2: learned positions, pre-LayerNorm blocks, GELU (tanh) MLP, tied output embedding.

Same interface as `llama.py` (param_specs, init_cache, forward, unembedding); layers are stacked
and scanned. Shapes: B batch, T query length, S cache slots, D width, N heads, H head dim, F MLP.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxprof.models import layers
from jaxprof.models.cache import KVCache, Prefix
from jaxprof.models.layers import ParamSpec


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  max_position_embeddings: int = 1024
  intermediate_size: int | None = None  # default 4 * hidden_size
  layer_norm_eps: float = 1e-5
  model_type: str = "gpt2"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def mlp_size(self) -> int:
    return self.intermediate_size or 4 * self.hidden_size

  @property
  def num_kv_heads(self) -> int:
    return self.num_heads

  tie_embeddings = True


def param_specs(cfg: GPT2Config) -> dict[str, ParamSpec]:
  d, f, n, h, l = cfg.hidden_size, cfg.mlp_size, cfg.num_heads, cfg.head_dim, cfg.num_layers
  w = layers.normal(0.02)
  z, o = layers.zeros, layers.ones
  return {
      "embed": ParamSpec((cfg.vocab_size, d), ("vocab", "embed"), w),
      "pos_embed": ParamSpec((cfg.max_position_embeddings, d), (None, "embed"), w),
      "final_norm/scale": ParamSpec((d,), ("norm",), o),
      "final_norm/bias": ParamSpec((d,), ("norm",), z),
      "layers/ln1/scale": ParamSpec((l, d), ("layers", "norm"), o),
      "layers/ln1/bias": ParamSpec((l, d), ("layers", "norm"), z),
      "layers/q": ParamSpec((l, d, n, h), ("layers", "embed", "heads", "head_dim"), w),
      "layers/k": ParamSpec((l, d, n, h), ("layers", "embed", "heads", "head_dim"), w),
      "layers/v": ParamSpec((l, d, n, h), ("layers", "embed", "heads", "head_dim"), w),
      "layers/q_bias": ParamSpec((l, n, h), ("layers", "heads", "head_dim"), z),
      "layers/k_bias": ParamSpec((l, n, h), ("layers", "heads", "head_dim"), z),
      "layers/v_bias": ParamSpec((l, n, h), ("layers", "heads", "head_dim"), z),
      "layers/o": ParamSpec((l, n, h, d), ("layers", "heads", "head_dim", "embed"), w),
      "layers/o_bias": ParamSpec((l, d), ("layers", "norm"), z),
      "layers/ln2/scale": ParamSpec((l, d), ("layers", "norm"), o),
      "layers/ln2/bias": ParamSpec((l, d), ("layers", "norm"), z),
      "layers/fc": ParamSpec((l, d, f), ("layers", "embed", "mlp"), w),
      "layers/fc_bias": ParamSpec((l, f), ("layers", "mlp"), z),
      "layers/proj": ParamSpec((l, f, d), ("layers", "mlp", "embed"), w),
      "layers/proj_bias": ParamSpec((l, d), ("layers", "norm"), z),
  }


def init_cache(cfg: GPT2Config, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
  return KVCache.zeros(cfg.num_layers, batch, max_len, cfg.num_heads, cfg.head_dim, dtype)


def _block(cfg: GPT2Config, x, p, attention):
  """One GPT-2 layer on x [B, T, D]; matmuls on the flattened tokens (see llama._block)."""
  b, t, d = x.shape
  x = x.reshape(b * t, d)
  h = layers.layer_norm(x, p["ln1"]["scale"], p["ln1"]["bias"], cfg.layer_norm_eps)
  q = jnp.einsum("MD,DNH->MNH", h, p["q"]) + p["q_bias"]
  k = jnp.einsum("MD,DNH->MNH", h, p["k"]) + p["k_bias"]
  v = jnp.einsum("MD,DNH->MNH", h, p["v"]) + p["v_bias"]
  q = q.reshape(b, t, *q.shape[1:])
  k = layers.heads_first(k.reshape(b, t, *k.shape[1:]))
  v = layers.heads_first(v.reshape(b, t, *v.shape[1:]))
  attn, kv = attention(q, k, v)
  x = x + jnp.einsum("MNH,NHD->MD", attn.reshape(b * t, *attn.shape[2:]), p["o"]) + p["o_bias"]
  h = layers.layer_norm(x, p["ln2"]["scale"], p["ln2"]["bias"], cfg.layer_norm_eps)
  h = jax.nn.gelu(jnp.einsum("MD,DF->MF", h, p["fc"]) + p["fc_bias"], approximate=True)
  x = x + jnp.einsum("MF,FD->MD", h, p["proj"]) + p["proj_bias"]
  return x.reshape(b, t, d), kv


def forward(params: dict, cfg: GPT2Config, tokens: jax.Array, mask: jax.Array,
            positions: jax.Array | None = None, cache: KVCache | None = None,
            remat: bool = False, prefix: Prefix | None = None
            ) -> tuple[jax.Array, KVCache | Prefix]:
  """Runs GPT-2. Same contract as `llama.forward`: hidden [B, T, D] (after ln_f) and the updated
  cache, or the tokens' own keys and values as a Prefix."""
  ctx = layers.attention_inputs(mask, positions, cache, prefix)
  x = params["embed"][tokens] + params["pos_embed"][ctx.positions]
  block = functools.partial(_block, cfg)
  x, kv = layers.scan_layers(block, x, params["layers"], ctx, cache, prefix, remat)
  return _final_norm(params, cfg, x), kv if cache is not None else Prefix(k=kv[0], v=kv[1],
                                                                          mask=mask)


def _final_norm(params: dict, cfg: GPT2Config, x: jax.Array) -> jax.Array:
  return layers.layer_norm(x, params["final_norm"]["scale"], params["final_norm"]["bias"],
                           cfg.layer_norm_eps)


def forward_continuations(params: dict, cfg: GPT2Config, prompt_ids: jax.Array,
                          prompt_mask: jax.Array, ids: jax.Array, mask: jax.Array,
                          remat: bool | str = False) -> tuple[jax.Array, jax.Array]:
  """Same contract as `llama.forward_continuations`."""
  ctx_p = layers.attention_inputs(prompt_mask, None, None)
  ctx_c = layers.attention_inputs(mask, None, None, Prefix(k=None, v=None, mask=prompt_mask))
  xp = params["embed"][prompt_ids] + params["pos_embed"][ctx_p.positions]
  xc = params["embed"][ids] + params["pos_embed"][ctx_c.positions]
  block = functools.partial(_block, cfg)
  xp, xc = layers.scan_prompts_and_continuations(block, block, xp, xc, params["layers"], ctx_p,
                                                 ctx_c, remat)
  return _final_norm(params, cfg, xp), _final_norm(params, cfg, xc)


def unembedding(params: dict, cfg: GPT2Config) -> jax.Array:
  del cfg
  return params["embed"].T
