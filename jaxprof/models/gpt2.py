"""GPT-2: learned positions, pre-LayerNorm blocks, GELU (tanh) MLP, tied output embedding.

Same interface as `llama.py` (param_specs, init_cache, forward, unembedding); layers are stacked
and scanned. Shapes: B batch, T query length, S cache slots, D width, N heads, H head dim, F MLP.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof.models import layers
from jaxprof.models.cache import KVCache, Prefix
from jaxprof.models.hf import CheckpointError, Rule
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
  x = layers.embed(params["embed"], tokens) + params["pos_embed"][ctx.positions]
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
  xp = layers.embed(params["embed"], prompt_ids) + params["pos_embed"][ctx_p.positions]
  xc = layers.embed(params["embed"], ids) + params["pos_embed"][ctx_c.positions]
  block = functools.partial(_block, cfg)
  xp, xc = layers.scan_prompts_and_continuations(block, block, xp, xc, params["layers"], ctx_p,
                                                 ctx_c, remat)
  return _final_norm(params, cfg, xp), _final_norm(params, cfg, xc)


def unembedding(params: dict, cfg: GPT2Config) -> jax.Array:
  del cfg
  return params["embed"].T


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints: config.json and the tensor rename table (loader: hf.py)
# ---------------------------------------------------------------------------------------------


def config_from_hf(hf: dict, source: str = "config.json") -> GPT2Config:
  """Our config from a GPT-2 config.json; errors name the unsupported field."""
  act = hf.get("activation_function", "gelu_new")
  if act not in ("gelu_new", "gelu_pytorch_tanh"):
    raise CheckpointError(f"{source}: unsupported GPT-2 activation_function {act!r}")
  return GPT2Config(vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"],
                    num_layers=hf["n_layer"], num_heads=hf["n_head"],
                    max_position_embeddings=hf["n_positions"],
                    intermediate_size=hf.get("n_inner"),
                    layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def config_to_hf(cfg: GPT2Config) -> dict:
  """The config.json `transformers` needs to rebuild the same model."""
  return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
          "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
          "n_head": cfg.num_heads, "n_positions": cfg.max_position_embeddings,
          "n_inner": cfg.intermediate_size, "layer_norm_epsilon": cfg.layer_norm_eps,
          "activation_function": "gelu_new", "tie_word_embeddings": True}


def hf_rules(cfg: GPT2Config) -> list[Rule]:
  """HF tensor name and layout of every param (after `hf_tensors_in` splits c_attn)."""
  # c_attn is split into q/k/v by `hf_tensors_in` before the table applies. HF GPT-2 uses Conv1D,
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


def hf_tensors_in(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF tensors -> the names `hf_rules` reads: c_attn split into q, k, v."""
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


def hf_tensors_out(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of `hf_tensors_in`, for export."""
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
