"""Llama-family decoder: Llama-2/3.x, SmolLM/SmolLM2, Qwen2 (q/k/v bias), Mistral-style GQA.

Layers are stacked on a leading "layers" axis and run with `lax.scan`, so a 30-layer model compiles
as fast as a 1-layer one. Shapes: B batch, T query length, S key length (cache slots), D model
width, N query heads, K kv heads, H head dim, F MLP width, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxprof.models import layers
from jaxprof.models.cache import KVCache, Prefix
from jaxprof.models.hf import CheckpointError, Rule, transpose
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


def _block(cfg: LlamaConfig, inv_freq: jax.Array, positions: jax.Array, x: jax.Array, p: dict,
           attention):
  """One decoder layer. x: [B, T, D]; p: this layer's params; attention: see layers.Block.

  Matmuls run on the flattened tokens [M = B * T, D]: XLA:CPU differentiates 2-D matmuls about
  1.6x faster than the same einsums over [B, T, D] (each weight gradient contracts one axis).
  """
  b, t, d = x.shape
  x = x.reshape(b * t, d)
  h = layers.rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  q = jnp.einsum("MD,DNH->MNH", h, p["q"])
  k = jnp.einsum("MD,DKH->MKH", h, p["k"])
  v = jnp.einsum("MD,DKH->MKH", h, p["v"])
  if cfg.qkv_bias:
    q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
  q = layers.apply_rope(q.reshape(b, t, *q.shape[1:]), positions, inv_freq)
  k = layers.heads_first(layers.apply_rope(k.reshape(b, t, *k.shape[1:]), positions, inv_freq))
  v = layers.heads_first(v.reshape(b, t, *v.shape[1:]))
  attn, kv = attention(q, k, v)
  x = x + jnp.einsum("MNH,NHD->MD", attn.reshape(b * t, *attn.shape[2:]), p["o"])
  h = layers.rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
  gated = jax.nn.silu(jnp.einsum("MD,DF->MF", h, p["gate"])) * jnp.einsum("MD,DF->MF", h, p["up"])
  x = x + jnp.einsum("MF,FD->MD", gated, p["down"])
  return x.reshape(b, t, d), kv


def forward(params: dict, cfg: LlamaConfig, tokens: jax.Array, mask: jax.Array,
            positions: jax.Array | None = None, cache: KVCache | None = None,
            remat: bool = False, prefix: Prefix | None = None
            ) -> tuple[jax.Array, KVCache | Prefix]:
  """Runs the decoder.

  Args:
    tokens: [B, T] int32; mask: [B, T] bool (real tokens).
    positions: [B, T] int32 RoPE positions; default counts real tokens only (left padding safe),
      continuing after the prefix's and the cache's real tokens.
    cache: if given, the T tokens are written at slots [cache.index, cache.index + T) and attend to
      every earlier real slot; the updated cache is returned.
    prefix: keys/values of Bp prompts the B rows continue (B / Bp rows per prompt); every token
      also attends to its prompt's real tokens.
  Returns:
    hidden: [B, T, D] after the final norm, and the updated cache, or without a cache the tokens'
    own keys and values as a Prefix (what a continuation attends to).
  """
  ctx = layers.attention_inputs(mask, positions, cache, prefix)
  x, block = _stream(params, cfg, tokens, ctx)
  x, kv = layers.scan_layers(block, x, params["layers"], ctx, cache, prefix, remat)
  x = layers.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  return x, kv if cache is not None else Prefix(k=kv[0], v=kv[1], mask=mask)


def _stream(params: dict, cfg: LlamaConfig, tokens: jax.Array, ctx: layers.Context):
  """(embedded tokens [B, T, D], the layer function at their positions)."""
  inv_freq = layers.rope_inv_freq(cfg.rope, cfg.head_dim)
  block = functools.partial(_block, cfg, inv_freq, ctx.positions)
  return layers.embed(params["embed"], tokens), block


def forward_continuations(params: dict, cfg: LlamaConfig, prompt_ids: jax.Array,
                          prompt_mask: jax.Array, ids: jax.Array, mask: jax.Array,
                          remat: bool | str = False) -> tuple[jax.Array, jax.Array]:
  """(prompt states [Bp, P, D], continuation states [B, T, D]), both after the final norm: Bp
  left-padded prompts and B right-padded continuations of them (B / Bp each), in one layer pass
  (`layers.scan_prompts_and_continuations`)."""
  ctx_p = layers.attention_inputs(prompt_mask, None, None)
  ctx_c = layers.attention_inputs(mask, None, None, Prefix(k=None, v=None, mask=prompt_mask))
  (xp, block_p), (xc, block_c) = (_stream(params, cfg, prompt_ids, ctx_p),
                                  _stream(params, cfg, ids, ctx_c))
  xp, xc = layers.scan_prompts_and_continuations(block_p, block_c, xp, xc, params["layers"],
                                                 ctx_p, ctx_c, remat)
  norm = lambda x: layers.rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  return norm(xp), norm(xc)


def unembedding(params: dict, cfg: LlamaConfig) -> jax.Array:
  """[D, V] output projection (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints: config.json and the tensor rename table (loader: hf.py)
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


def config_from_hf(hf: dict, source: str = "config.json") -> LlamaConfig:
  """Our config from a Llama / Mistral / Qwen2 config.json; errors name the unsupported field."""
  model_type = hf.get("model_type")
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


def config_to_hf(cfg: LlamaConfig) -> dict:
  """The config.json `transformers` needs to rebuild the same model."""
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


def hf_rules(cfg: LlamaConfig) -> list[Rule]:
  """HF tensor name and layout of every param (Llama, Mistral, Qwen2 naming)."""
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
      Rule("layers/gate", f"{m}.gate_proj.weight", transpose, transpose),
      Rule("layers/up", f"{m}.up_proj.weight", transpose, transpose),
      Rule("layers/down", f"{m}.down_proj.weight", transpose, transpose),
  ]
  if cfg.qkv_bias:
    rules += [Rule("layers/q_bias", f"{a}.q_proj.bias", **bias(n)),
              Rule("layers/k_bias", f"{a}.k_proj.bias", **bias(k)),
              Rule("layers/v_bias", f"{a}.v_proj.bias", **bias(k))]
  if not cfg.tie_embeddings:
    rules.append(Rule("lm_head", "lm_head.weight", transpose, transpose))
  return rules
