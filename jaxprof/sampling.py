"""Jitted sampling: one prefill over the prompts, then a `lax.while_loop` decoding into a KV cache.

Prompts are left-padded so they all end together. With `num_samples=G`, each prompt is prefilled
once and its keys and values are kept once, as a `Prefix` that the G completions of its group
attend to (row order: prompt-major, row b * G + g); the KV cache holds only the completions' own
slots. Nothing returns to the host until the whole batch is done.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxprof.models import causal_lm
from jaxprof.models.cache import KVCache, Prefix


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen. temperature=0 means greedy; top_k=0 and top_p=1 disable."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  def choose(self, logits: jax.Array, key: jax.Array) -> jax.Array:
    """Token ids [B] from float32 logits [B, V]."""
    if self.temperature == 0.0:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / self.temperature
    if self.top_k > 0:
      kth = jax.lax.top_k(logits, self.top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    if self.top_p < 1.0:
      sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
      probs = jax.nn.softmax(sorted_logits, axis=-1)
      # Keep the smallest prefix whose mass reaches top_p (the first token always survives).
      before = jnp.cumsum(probs, axis=-1) - probs
      cutoff = jnp.min(jnp.where(before < self.top_p, sorted_logits, jnp.inf), axis=-1)
      logits = jnp.where(logits < cutoff[:, None], -jnp.inf, logits)
    return categorical(key, logits)

  def log_probs(self, logits: jax.Array) -> jax.Array:
    """log softmax(logits / temperature) [B, V] (raw logits when greedy): the log-probabilities
    recorded for RL. top-k and top-p are not applied: like TRL and verl, the ratio and KL refer
    to the tempered full distribution, of which the truncated one is a renormalised part."""
    t = self.temperature or 1.0
    return jax.nn.log_softmax(logits / t if t != 1.0 else logits)


def categorical(key: jax.Array, logits: jax.Array, block: int = 256) -> jax.Array:
  """Exact draws from softmax(logits) [B, V] -> [B] int32, with two uniforms per row.

  Inverse-CDF sampling in two levels: pick a block of `block` tokens by its mass, then a token in
  it. `jax.random.categorical` draws Gumbel noise for every logit instead (B x V random numbers):
  at B=32 over SmolLM2's 49,152 tokens that took 13.2 ms per decode step here, this 0.4 ms
  (bench/profile_decode.py). Logits of -inf (top-k/top-p filtered) have zero mass.
  """
  b, v = logits.shape
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.pad(weights, ((0, 0), (0, (-v) % block))).reshape(b, -1, block)
  cum_blocks = jnp.cumsum(jnp.sum(weights, axis=-1), axis=-1)  # [B, V / block]
  u = jax.random.uniform(key, (b,)) * cum_blocks[:, -1]
  last_block = cum_blocks.shape[1] - 1
  chosen = jnp.minimum(jnp.sum(cum_blocks <= u[:, None], axis=-1), last_block)
  before = jnp.take_along_axis(cum_blocks, jnp.maximum(chosen - 1, 0)[:, None], axis=-1)[:, 0]
  before = jnp.where(chosen > 0, before, 0.0)
  in_block = jnp.take_along_axis(weights, chosen[:, None, None], axis=1)[:, 0]  # [B, block]
  inner = jnp.sum(jnp.cumsum(in_block, axis=-1) <= (u - before)[:, None], axis=-1)
  # Rounding can leave u a hair past the block's last token: take the block's last nonzero one.
  last_nonzero = block - 1 - jnp.argmax(in_block[:, ::-1] > 0, axis=-1)
  inner = jnp.minimum(inner, last_nonzero)
  return jnp.minimum(chosen * block + inner, v - 1).astype(jnp.int32)


@struct.dataclass
class Completions:
  """tokens, logprobs, mask: [B * G, N]; mask marks generated tokens up to and including EOS.

  logprobs are `Sampling.log_probs` at the chosen tokens: log-softmax of the logits divided by the
  temperature (raw logits when greedy), the distribution the tokens were drawn from.
  """

  tokens: jax.Array
  logprobs: jax.Array
  mask: jax.Array

  @property
  def lengths(self) -> jax.Array:
    return jnp.sum(self.mask, axis=-1)


@struct.dataclass
class DecodeState:
  """What the decode loop carries: a step counter, per-row done flags [R], the logits [R, V] the
  next token is drawn from, the completion so far ([R, N] tokens, logprobs, mask) and the KV cache
  of the completions' own slots. R = prompts * num_samples."""

  step: jax.Array
  done: jax.Array  # [R] bool
  last_logits: jax.Array  # [R, V] float32
  tokens: jax.Array
  logprobs: jax.Array
  mask: jax.Array
  cache: KVCache


def prefill(params: dict, cfg: causal_lm.LMConfig, prompt_tokens: jax.Array,
            prompt_mask: jax.Array, *, max_new_tokens: int, num_samples: int = 1, pad_id: int = 0,
            cache_dtype=None) -> tuple[Prefix, DecodeState]:
  """One pass over the prompts: (their keys and values as a Prefix, kept once per group, and the
  decode loop's first state with an empty cache of `max_new_tokens` slots per row).

  prompt_tokens: [B, P] int32, left-padded; prompt_mask: [B, P] bool.
  """
  rows = prompt_tokens.shape[0] * num_samples
  cache_dtype = cache_dtype or jax.tree.leaves(params)[0].dtype
  hidden, prefix = causal_lm.forward(params, cfg, prompt_tokens, prompt_mask)
  prefix = prefix.replace(k=prefix.k.astype(cache_dtype), v=prefix.v.astype(cache_dtype))
  last_logits = causal_lm.logits(params, cfg, hidden[:, -1])
  if num_samples > 1:
    last_logits = jnp.repeat(last_logits, num_samples, axis=0)
  return prefix, DecodeState(
      step=jnp.zeros((), jnp.int32), done=jnp.zeros((rows,), bool), last_logits=last_logits,
      tokens=jnp.full((rows, max_new_tokens), pad_id, jnp.int32),
      logprobs=jnp.zeros((rows, max_new_tokens), jnp.float32),
      mask=jnp.zeros((rows, max_new_tokens), bool),
      cache=causal_lm.init_cache(cfg, rows, max_new_tokens, cache_dtype))


def decode_step(params: dict, cfg: causal_lm.LMConfig, prefix: Prefix, s: DecodeState,
                key: jax.Array, *, eos_ids: tuple[int, ...], sampling: Sampling = Sampling(),
                pad_id: int = 0) -> DecodeState:
  """One token for every row: draw it from `s.last_logits` (key folded with the step), run it
  through the network against the prompt's `prefix` and the cache, record it."""
  rows = s.done.shape[0]
  token = sampling.choose(s.last_logits, jax.random.fold_in(key, s.step))
  logprob = jnp.take_along_axis(sampling.log_probs(s.last_logits), token[:, None], axis=-1)[:, 0]
  live = ~s.done
  token = jnp.where(live, token, pad_id)
  hidden, cache = causal_lm.forward(params, cfg, token[:, None], jnp.ones((rows, 1), bool),
                                    cache=s.cache, prefix=prefix)
  return DecodeState(
      step=s.step + 1, done=s.done | jnp.isin(token, jnp.asarray(eos_ids, jnp.int32)),
      last_logits=causal_lm.logits(params, cfg, hidden[:, 0]),
      tokens=s.tokens.at[:, s.step].set(token),
      logprobs=s.logprobs.at[:, s.step].set(jnp.where(live, logprob, 0.0)),
      mask=s.mask.at[:, s.step].set(live), cache=cache)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "eos_ids", "sampling",
                                             "num_samples", "pad_id", "cache_dtype", "per_layer"))
def sample(params: dict, cfg: causal_lm.LMConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
           key: jax.Array, *, max_new_tokens: int, eos_ids: tuple[int, ...],
           sampling: Sampling = Sampling(), num_samples: int = 1, pad_id: int = 0,
           cache_dtype=None, per_layer: bool | None = None) -> Completions:
  """Samples `num_samples` completions per prompt: `prefill`, then `decode_step` in a
  `lax.while_loop` until every row has ended or `max_new_tokens` are written.

  Args:
    prompt_tokens: [B, P] int32, left-padded; prompt_mask: [B, P] bool.
    key: PRNG key; step i of the loop uses fold_in(key, i), so results are reproducible.
    eos_ids: tokens that end a completion (kept in the completion, masked in).
    pad_id: written after a completion ends (masked out; never used to derive masks).
    per_layer: decode over per-layer copies of the weights, prompt keys and cache (one copy of
      the layer weights per call) instead of scanning the stacked ones; None = on CPU, where a
      scan copies each layer's slices at every step (`layers.scan_layers`).
  Returns:
    Completions with [B * num_samples, max_new_tokens] arrays.
  """
  # The prompts' keys and values are computed once and kept once (a Prefix shared by each
  # group); the cache holds only the completions' own slots.
  prefix, init = prefill(params, cfg, prompt_tokens, prompt_mask, max_new_tokens=max_new_tokens,
                         num_samples=num_samples, pad_id=pad_id, cache_dtype=cache_dtype)
  if per_layer is None:
    per_layer = jax.default_backend() == "cpu"
  if per_layer:
    params, prefix = causal_lm.per_layer(params), prefix.per_layer()
    init = init.replace(cache=init.cache.per_layer())
  final = jax.lax.while_loop(
      lambda s: (s.step < max_new_tokens) & ~jnp.all(s.done),
      lambda s: decode_step(params, cfg, prefix, s, key, eos_ids=eos_ids, sampling=sampling,
                            pad_id=pad_id), init)
  return Completions(tokens=final.tokens, logprobs=final.logprobs, mask=final.mask)
