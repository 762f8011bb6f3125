"""One interface over the causal-LM families: init, forward, logits and chunked log-probs.

Every function is pure: `params` is a nested dict of arrays, `cfg` a frozen config dataclass whose
type picks the family. Training code calls `token_logprobs`, which never builds the full
[B, T, V] logits tensor: it projects the hidden states to the vocabulary in chunks of positions.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp

from jaxprof.models import gpt2, layers, llama
from jaxprof.models.cache import KVCache, Prefix
from jaxprof.models.gpt2 import GPT2Config
from jaxprof.models.llama import LlamaConfig

LMConfig = LlamaConfig | GPT2Config
_FAMILIES: dict[type, types.ModuleType] = {LlamaConfig: llama, GPT2Config: gpt2}


def family(cfg: LMConfig) -> types.ModuleType:
  try:
    return _FAMILIES[type(cfg)]
  except KeyError:
    raise TypeError(f"not a causal-LM config: {type(cfg).__name__}; "
                    f"expected one of {[c.__name__ for c in _FAMILIES]}") from None


def param_specs(cfg: LMConfig) -> dict[str, layers.ParamSpec]:
  return family(cfg).param_specs(cfg)


def init_params(cfg: LMConfig, key: jax.Array, dtype=jnp.float32) -> dict:
  """Random-init params (normal(0.02) weights, unit norms), as a nested dict."""
  return layers.init_from_specs(param_specs(cfg), key, dtype)


def param_axes(cfg: LMConfig) -> dict:
  """Logical axis names for every param, same tree structure as `init_params`."""
  return layers.axes_from_specs(param_specs(cfg))


def init_cache(cfg: LMConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
  return family(cfg).init_cache(cfg, batch, max_len, dtype)


def forward(params: dict, cfg: LMConfig, tokens: jax.Array, mask: jax.Array,
            positions: jax.Array | None = None, cache: KVCache | None = None,
            remat: bool = False, prefix: Prefix | None = None
            ) -> tuple[jax.Array, KVCache | Prefix]:
  """Hidden states [B, T, D] of tokens [B, T] (mask [B, T] bool), and the updated cache (or,
  without a cache, the tokens' keys and values as a Prefix). With `prefix` (Bp prompts, B / Bp
  rows each) the tokens continue their prompt: see `llama.forward`."""
  return family(cfg).forward(params, cfg, tokens, mask, positions=positions, cache=cache,
                             remat=remat, prefix=prefix)


def unembedding(params: dict, cfg: LMConfig) -> jax.Array:
  return family(cfg).unembedding(params, cfg)


def logits(params: dict, cfg: LMConfig, hidden: jax.Array) -> jax.Array:
  """Float32 logits [..., V] of hidden states [..., D]; for short slices (e.g. the last token)."""
  w = unembedding(params, cfg)
  return jnp.einsum("...D,DV->...V", hidden, w, preferred_element_type=jnp.float32)


def token_logprobs(params: dict, cfg: LMConfig, hidden: jax.Array, targets: jax.Array,
                   chunk_size: int = 128, with_entropy: bool = False):
  """log p(targets) under the LM head, computed a chunk of positions at a time.

  Args:
    hidden: [B, T, D] hidden states; targets: [B, T] int32 token ids that each position predicts.
    chunk_size: positions per chunk; peak memory is B * chunk_size * V floats instead of B * T * V.
    with_entropy: also return the per-position entropy of the predictive distribution.
  Returns:
    logprobs [B, T] float32 (and entropy [B, T] float32 if asked). Backward recomputes each chunk's
    logits (jax.checkpoint) so the gradient does not keep them either.
  """
  b, t, d = hidden.shape
  w = unembedding(params, cfg)
  chunk = min(chunk_size, t)
  pad = (-t) % chunk
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  y = jnp.pad(targets, ((0, 0), (0, pad)))
  n = (t + pad) // chunk
  h = h.reshape(b, n, chunk, d).swapaxes(0, 1)  # [n, B, C, D]
  y = y.reshape(b, n, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(h_c, y_c):
    z = jnp.einsum("BCD,DV->BCV", h_c, w, preferred_element_type=jnp.float32)
    logz = jax.nn.logsumexp(z, axis=-1)
    lp = jnp.take_along_axis(z, y_c[..., None], axis=-1)[..., 0] - logz
    probs = jnp.exp(z - logz[..., None])
    ent = logz - jnp.sum(probs * z, axis=-1)
    return lp, ent

  lp, ent = jax.lax.map(lambda args: one_chunk(*args), (h, y))
  lp = lp.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
  if not with_entropy:
    return lp
  return lp, ent.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


def sequence_logprobs(params: dict, cfg: LMConfig, tokens: jax.Array, mask: jax.Array,
                      chunk_size: int = 128, remat: bool = False,
                      with_entropy: bool = False):
  """Log-probs [B, T - 1] of tokens[:, 1:] given their prefix, for tokens [B, T]."""
  hidden, _ = forward(params, cfg, tokens[:, :-1], mask[:, :-1], remat=remat)
  return token_logprobs(params, cfg, hidden, tokens[:, 1:], chunk_size, with_entropy)
