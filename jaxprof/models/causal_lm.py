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


def per_layer(params: dict) -> dict:
  """params with the stacked decoder layers split into a tuple of per-layer dicts (a copy of
  the layer weights): what a decode loop reads without slicing (`layers.scan_layers`)."""
  return {**params, "layers": layers.unstack_layers(params["layers"])}


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


def group_first(x: jax.Array, group_size: int) -> jax.Array:
  """The first row of each group of `group_size` consecutive rows: [R, ...] -> [R / G, ...].

  A reshape and a slice (not a strided gather), so a batch sharded over devices in whole groups
  stays local: each device reads its own groups' prompts.
  """
  if x.shape[0] % group_size:
    raise ValueError(f"{x.shape[0]} rows are not whole groups of {group_size}")
  return x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])[:, 0]


def continue_prompts(params: dict, cfg: LMConfig, prompt_ids: jax.Array, prompt_mask: jax.Array,
                     ids: jax.Array, mask: jax.Array, group_size: int,
                     remat: bool | str = False) -> tuple[jax.Array, jax.Array]:
  """Each prompt once, then its group's continuations attend to it: the shared-prefix forward.

  Args:
    prompt_ids, prompt_mask: [R, P] left-padded, identical within each group of `group_size`
      consecutive rows (only each group's first row is read).
    ids, mask: [R, T] right-padded continuations (completions, or completions minus their last
      token when predicting them).
  Returns:
    (prompt_last [R, D]: the state after each row's prompt, hidden [R, T, D]: the continuations'
    states), equal to one forward of concat(prompt, continuation) per row. Each layer runs the
    group's prompt once, then its G continuations attending to that layer's prompt keys and values
    (never repeated); gradients from all G rows flow back into the one prompt pass.
  """
  h_prompt, hidden = family(cfg).forward_continuations(
      params, cfg, group_first(prompt_ids, group_size), group_first(prompt_mask, group_size), ids,
      mask, remat)
  return jnp.repeat(h_prompt[:, -1], group_size, axis=0), hidden


def continuation_states(params: dict, cfg: LMConfig, prompt_ids: jax.Array, prompt_mask: jax.Array,
                        comp_ids: jax.Array, comp_mask: jax.Array, group_size: int = 1,
                        remat: bool | str = False) -> jax.Array:
  """Hidden states [R, N, D] that predict each completion token from the prompt and the tokens
  before it (the last completion token is never fed: nothing follows it).

  prompt_ids/mask: [R, P] left-padded; comp_ids/mask: [R, N] right-padded. With group_size=G > 1
  the rows come in groups of G that share one prompt (rollout order) and the prompt runs once per
  group (`continue_prompts`); G=1 is the plain path, one [P + N - 1] sequence per row, which the
  shared path is tested against.
  """
  p = prompt_ids.shape[1]
  if group_size == 1:
    tokens = jnp.concatenate([prompt_ids, comp_ids[:, :-1]], axis=1)
    mask = jnp.concatenate([prompt_mask, comp_mask[:, :-1]], axis=1)
    return forward(params, cfg, tokens, mask, remat=remat)[0][:, p - 1:]
  first, hidden = continue_prompts(params, cfg, prompt_ids, prompt_mask, comp_ids[:, :-1],
                                   comp_mask[:, :-1], group_size, remat)
  return jnp.concatenate([first[:, None], hidden], axis=1)


def token_logprobs(params: dict, cfg: LMConfig, hidden: jax.Array, targets: jax.Array,
                   chunk_size: int = 512, with_entropy: bool = False, temperature: float = 1.0):
  """log p(targets) under the LM head, computed a chunk of tokens at a time.

  Args:
    hidden: [B, T, D] hidden states; targets: [B, T] int32 token ids that each position predicts.
    chunk_size: tokens (of the flattened B * T) per chunk; peak memory is chunk_size * V floats
      instead of B * T * V.
    with_entropy: also return the per-position entropy of the predictive distribution.
    temperature: a Python float; the distribution is softmax(logits / temperature), the one a
      sampler at that temperature draws from.
  Returns:
    logprobs [B, T] float32 (and entropy [B, T] float32 if asked). Backward recomputes each chunk's
    logits (jax.checkpoint) so the gradient does not keep them either.
  """
  b, t, d = hidden.shape
  w = unembedding(params, cfg)
  m = b * t
  chunk = min(chunk_size, m)
  pad = (-m) % chunk
  h = jnp.pad(hidden.reshape(m, d), ((0, pad), (0, 0))).reshape(-1, chunk, d)  # [n, C, D]
  y = jnp.pad(targets.reshape(m), (0, pad)).reshape(-1, chunk)

  @jax.checkpoint
  def one_chunk(h_c, y_c):
    z = jnp.einsum("CD,DV->CV", h_c, w, preferred_element_type=jnp.float32)
    if temperature != 1.0:
      z = z / temperature
    logz = jax.nn.logsumexp(z, axis=-1)
    lp = jnp.take_along_axis(z, y_c[:, None], axis=-1)[:, 0] - logz
    if not with_entropy:
      return lp, None
    probs = jnp.exp(z - logz[:, None])
    return lp, logz - jnp.sum(probs * z, axis=-1)

  lp, ent = jax.lax.map(lambda args: one_chunk(*args), (h, y))
  lp = lp.reshape(-1)[:m].reshape(b, t)
  if not with_entropy:
    return lp
  return lp, ent.reshape(-1)[:m].reshape(b, t)


def sequence_logprobs(params: dict, cfg: LMConfig, tokens: jax.Array, mask: jax.Array,
                      chunk_size: int = 512, remat: bool | str = False,
                      with_entropy: bool = False):
  """Log-probs [B, T - 1] of tokens[:, 1:] given their prefix, for tokens [B, T]."""
  hidden, _ = forward(params, cfg, tokens[:, :-1], mask[:, :-1], remat=remat)
  return token_logprobs(params, cfg, hidden, tokens[:, 1:], chunk_size, with_entropy)
