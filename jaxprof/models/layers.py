"""Building blocks shared by the model families: parameter specs, norms, RoPE, attention.

Parameters are nested dicts of arrays. Each family describes its parameters once as a flat table of
`ParamSpec`s (shape, logical axes, initialiser); `init_params` and `param_axes` both derive from
that table, so the sharding annotations can never drift from the shapes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxprof import parallel

Params = dict
Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def normal(stddev: float) -> Initializer:
  return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype)


def zeros(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
  del key
  return jnp.zeros(shape, dtype)


def ones(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
  del key
  return jnp.ones(shape, dtype)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical axis names, one per dim (see jaxprof/parallel.py)
  init: Initializer

  def __post_init__(self):
    assert len(self.shape) == len(self.axes), (self.shape, self.axes)


def init_from_specs(specs: Mapping[str, ParamSpec], key: jax.Array, dtype=jnp.float32) -> Params:
  """Initialises a nested param dict from a flat {"a/b/c": ParamSpec} table."""
  keys = jax.random.split(key, len(specs))
  flat = {tuple(name.split("/")): spec.init(k, spec.shape, dtype)
          for k, (name, spec) in zip(keys, sorted(specs.items()), strict=True)}
  return traverse_util.unflatten_dict(flat)


def axes_from_specs(specs: Mapping[str, ParamSpec]) -> dict:
  """Nested dict of logical-axis tuples with the same structure as the params."""
  return traverse_util.unflatten_dict({tuple(n.split("/")): s.axes for n, s in specs.items()})


def shapes_from_specs(specs: Mapping[str, ParamSpec]) -> dict[str, tuple[int, ...]]:
  return {name: spec.shape for name, spec in specs.items()}


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """RMSNorm computed in float32 (as HF does), cast back to x.dtype. x: [..., D]."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm in float32. x: [..., D]."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings (HF "rotate_half" layout: the two halves of each head are paired).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  theta: float
  kind: str = "default"  # "default" | "linear" | "llama3"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192

  SUPPORTED = ("default", "linear", "llama3")

  def __post_init__(self):
    if self.kind not in self.SUPPORTED:
      raise ValueError(f"unsupported rope type '{self.kind}'; supported: {self.SUPPORTED}")


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> jax.Array:
  """Inverse frequencies [head_dim // 2] (float32), with Llama-3 style scaling if configured."""
  inv_freq = 1.0 / (rope.theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if rope.kind == "linear":
    return inv_freq / rope.factor
  if rope.kind == "llama3":
    # Long wavelengths are slowed down by `factor`, short ones kept, and a smooth ramp in between.
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    is_mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return jnp.where(is_mid, smoothed, scaled)
  return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates x: [B, T, N, H] by positions: [B, T] int32."""
  angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]  # [B, T, H/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# Attention with an optional KV cache.
# ---------------------------------------------------------------------------------------------


_FLOOR = float(jnp.finfo(jnp.float32).min)  # masked scores: finite, so no row is ever all-NaN


def attend(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array,
           prefix: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> jax.Array:
  """Grouped-query softmax attention, optionally over a shared prefix as well.

  Args:
    q: [B, T, N, H] queries (N = K * G query heads).
    k, v: [B, K, S, H] keys and values (the KV cache's own layout, so nothing is transposed).
    visible: [B, T, S] bool, which key each query may attend to.
    prefix: (pk, pv [Bp, K, P, H], pmask [Bp, P] bool): keys and values of Bp prompts, each shared
      by B / Bp consecutive rows (a group of completions). Every query sees its prompt's real keys.
      The prompt is never repeated: the group's queries meet it in one matmul per (prompt, head).
  Returns:
    [B, T, N, H].
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[1]
  q = parallel.constrain(q, ("act_batch", "act_length", "act_heads", None))
  k, v = (parallel.constrain(x, ("act_batch", "act_kv_heads", None, None)) for x in (k, v))
  q = q.reshape(b, t, kv_heads, n // kv_heads, h)
  scale = 1.0 / math.sqrt(h)
  scores = jnp.einsum("BTKGH,BKSH->BKGTS", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(visible[:, None, None, :, :], scores, _FLOOR)
  if prefix is None:
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BKSH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)
  pk, pv, pmask = prefix
  bp, p, g = pk.shape[0], pk.shape[2], n // kv_heads
  r = b // bp
  # A prompt's rows, query heads of a KV head and positions are one query axis [R * G * T]: one
  # plain matmul per (prompt, KV head) against the prompt's keys, read once per step. The two
  # parts' softmax is merged through their common maximum, never concatenated.
  qp = q.reshape(bp, r, t, kv_heads, g, h).transpose(0, 3, 1, 4, 2, 5).reshape(bp, kv_heads, -1, h)
  pscores = jnp.einsum("BKQH,BKPH->BKQP", qp, pk, preferred_element_type=jnp.float32) * scale
  pscores = jnp.where(pmask[:, None, None, :], pscores, _FLOOR)
  pscores = pscores.reshape(bp, kv_heads, r, g, t, p).transpose(0, 2, 1, 3, 4, 5)
  pscores = pscores.reshape(b, kv_heads, g, t, p)
  top = jnp.maximum(jnp.max(pscores, -1, keepdims=True), jnp.max(scores, -1, keepdims=True))
  pexp, exp = jnp.exp(pscores - top), jnp.exp(scores - top)
  total = jnp.sum(pexp, -1, keepdims=True) + jnp.sum(exp, -1, keepdims=True)
  pprobs, probs = (pexp / total).astype(v.dtype), (exp / total).astype(v.dtype)
  pprobs = pprobs.reshape(bp, r, kv_heads, g, t, p).transpose(0, 2, 1, 3, 4, 5)
  pout = jnp.einsum("BKQP,BKPH->BKQH", pprobs.reshape(bp, kv_heads, -1, p), pv)
  pout = pout.reshape(bp, kv_heads, r, g, t, h).transpose(0, 2, 4, 1, 3, 5)
  out = pout.reshape(b, t, kv_heads, g, h) + jnp.einsum("BKGTS,BKSH->BTKGH", probs, v)
  return out.reshape(b, t, n, h)


def attend_causal(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array,
                  block: int = 64) -> jax.Array:
  """`attend` over a sequence's own keys (T = S), for a causal `visible` (no query sees a later
  slot), in blocks of `block` queries whose keys stop at the block's last query: about half of
  the T x T scores are never computed. Rows that see no key at all (left padding) attend
  uniformly to their block's keys instead of all keys; such rows are padding, never read.

  q: [B, T, N, H]; k, v: [B, K, T, H]; visible: [B, T, T] bool. Returns [B, T, N, H].
  """
  t = q.shape[1]
  if t <= block:
    return attend(q, k, v, visible)
  return jnp.concatenate(
      [attend(q[:, s:s + block], k[:, :, :s + block], v[:, :, :s + block],
              visible[:, s:s + block, :s + block]) for s in range(0, t, block)], axis=1)


def heads_first(x: jax.Array) -> jax.Array:
  """[B, T, K, H] -> [B, K, T, H], the layout attention and the cache use."""
  return jnp.swapaxes(x, 1, 2)


def default_positions(mask: jax.Array) -> jax.Array:
  """Positions that skip padding: [B, T] bool mask -> [B, T] int32 (0 at the first real token)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def visibility(key_mask: jax.Array, query_slots: jax.Array, key_slots: jax.Array) -> jax.Array:
  """[B, T, S] bool: causal over slots and restricted to real keys.

  Args:
    key_mask: [B, S] bool, real keys (padding queries still see real keys: no NaN rows).
    query_slots: [T] int32 slot of each query; key_slots: [S] int32 slot of each key.
  """
  causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
  return causal[None, :, :] & key_mask[:, None, :]


def write_kv(k_all: jax.Array, v_all: jax.Array, layer: jax.Array, k: jax.Array, v: jax.Array,
             index: jax.Array):
  """Writes one layer's new keys/values into the stacked cache and reads the layer back.

  Args:
    k_all, v_all: the whole cache [L, B, K, S, H] (carried through the layer scan, so XLA updates
      it in place); layer: this layer's index.
    k, v: [B, K, T, H] new keys/values, written at slots [index, index + T).
  Returns:
    (k_all, v_all, k_layer, v_layer) with k_layer/v_layer [B, K, S, H].
  """
  at = (layer, 0, 0, index, 0)
  k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), at)
  v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), at)
  return k_all, v_all, k_all[layer], v_all[layer]


class Context(NamedTuple):
  """What every layer's attention needs, computed once per forward by `attention_inputs`."""

  positions: jax.Array  # [B, T] int32 RoPE / learned positions
  visible: jax.Array  # [B, T, S] bool over the tokens' own keys (or the cache slots)
  key_mask: jax.Array | None  # [B, S] the cache's mask after this write (None without cache)
  index: jax.Array | None  # [] first cache slot written (None without cache)
  prefix_mask: jax.Array | None  # [Bp, P] real tokens of the shared prefix (None without one)


def attention_inputs(mask: jax.Array, positions: jax.Array | None, cache,
                     prefix=None) -> Context:
  """Positions, visibility and the new key mask, for tokens that may continue a cache or prefix.

  Args:
    mask: [B, T] bool real tokens; positions: [B, T] int32 or None (count real tokens only,
      continuing after the prefix's and the cache's real tokens); cache: a KVCache or None;
    prefix: a `cache.Prefix` of Bp prompts (B / Bp rows each) or None.
  """
  b, t = mask.shape
  if positions is None:
    positions = default_positions(mask)
    if prefix is not None:
      positions = positions + jnp.repeat(prefix.lengths, b // prefix.mask.shape[0])[:, None] * mask
    if cache is not None:
      positions = positions + jnp.sum(cache.mask, axis=-1, keepdims=True) * mask
  prefix_mask = None if prefix is None else prefix.mask
  if cache is None:
    slots = jnp.arange(t)
    return Context(positions, visibility(mask, slots, slots), None, None, prefix_mask)
  index = cache.index
  key_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, mask, index, axis=1)
  visible = visibility(key_mask, index + jnp.arange(t), jnp.arange(cache.max_len))
  return Context(positions, visible, key_mask, index, prefix_mask)


REMAT_POLICIES = {
    # Keep the outputs of the token-wise matmuls (q/k/v/o, MLP); recompute attention and
    # elementwise work in the backward pass: most of the memory saving of full remat for a
    # fraction of its cost (no matmul over the weights is repeated).
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep only each layer's input: the least memory, one extra forward pass.
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_policy(remat: bool | str):
  """None (no rematerialisation) or a jax.checkpoint policy: False/"none", "dots", True/"full"."""
  if remat in (False, None, "none", ""):
    return None
  if remat is True:
    remat = "full"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; expected 'none', {', '.join(map(repr, REMAT_POLICIES))}")
  return REMAT_POLICIES[remat]


# block(x [B, T, D], layer params, attention) -> (x, kv), where the block calls
# attention(q [B, T, N, H], k [B, K, T, H], v [B, K, T, H]) -> (out [B, T, N, H], kv) once.
Block = Callable[[jax.Array, dict, Callable], tuple[jax.Array, Any]]


HIDDEN_AXES = ("act_batch", "act_length", "act_embed")  # the residual stream [B, T, D]


def embed(table: jax.Array, tokens: jax.Array) -> jax.Array:
  """table[tokens] ([V, D], [B, T] -> [B, T, D]), looked up where the tokens are: the table is
  gathered whole first (as FSDP gathers any weight), never the batch's embeddings."""
  table = parallel.constrain(table, (None, None))
  return parallel.constrain(table[tokens], HIDDEN_AXES)


def unstack_layers(stacked: dict) -> tuple[dict, ...]:
  """Stacked layer params (every leaf [L, ...]) -> a tuple of L per-layer dicts."""
  n = jax.tree.leaves(stacked)[0].shape[0]
  return tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n))


def scan_layers(block: Block, x: jax.Array, stacked: dict | tuple[dict, ...], ctx: Context,
                cache=None, prefix=None, remat: bool | str = False):
  """Runs `block` over the layers; the block never sees how keys are stored.

  Without a cache each layer's (k, v) is a scan output: returns (x, (k, v) [L, B, K, T, H]), the
  tokens' own keys and values, ready to serve as a `Prefix` (unused outputs cost nothing: XLA drops
  them). With a cache the whole cache rides in the scan carry and each layer writes only its new
  slots (no per-step copy): returns (x, updated cache). With a prefix, its layer slices are scan
  inputs (read only, never repeated per row) and gradients flow back into them. `remat` picks
  what the backward pass recomputes per layer (`remat_policy`).

  Per-layer weights (`stacked` a tuple of L dicts, `unstack_layers`) or a per-layer cache
  (`KVCache.per_layer`) run the layers as a Python loop instead, reading each layer's arrays
  where they are: inside a scan XLA:CPU copies every layer's slice of a stacked array before a
  matmul reads it, which at a decode step (each weight and prompt key read once) cost a third of
  the step (BENCHMARKS.md, "Decoding over per-layer arrays"). Keys come back as tuples then.
  """
  policy = remat_policy(remat)
  if isinstance(stacked, tuple) or (cache is not None and isinstance(cache.k, tuple)):
    if not isinstance(stacked, tuple):
      stacked = unstack_layers(stacked)
    return _layer_loop(block, x, stacked, ctx, cache, prefix, policy)
  pk, pv = (None, None) if prefix is None else (prefix.k, prefix.v)

  def shared(k_layer, v_layer):
    return None if k_layer is None else (k_layer, v_layer, ctx.prefix_mask)

  if cache is None:
    def body(x, layer):
      p, k_layer, v_layer = layer
      x = parallel.constrain(x, HIDDEN_AXES)  # each device keeps its rows of the batch

      def attention(q, k, v):
        if k_layer is None:  # the sequence's own keys only, causally
          return attend_causal(q, k, v, ctx.visible), (k, v)
        return attend(q, k, v, ctx.visible, shared(k_layer, v_layer)), (k, v)
      return block(x, p, attention)

    if policy is not None:
      body = jax.checkpoint(body, policy=policy)
    return jax.lax.scan(body, x, (stacked, pk, pv))

  def cached_body(carry, layer):
    x, k_all, v_all = carry
    p, i, k_layer, v_layer = layer
    x = parallel.constrain(x, HIDDEN_AXES)

    def attention(q, k, v):
      k_new, v_new, k_read, v_read = write_kv(k_all, v_all, i, k, v, ctx.index)
      return attend(q, k_read, v_read, ctx.visible, shared(k_layer, v_layer)), (k_new, v_new)
    x, (k_all, v_all) = block(x, p, attention)
    return (x, k_all, v_all), None

  if policy is not None:
    cached_body = jax.checkpoint(cached_body, policy=policy)
  num_layers = cache.k.shape[0]
  (x, k_all, v_all), _ = jax.lax.scan(cached_body, (x, cache.k, cache.v),
                                      (stacked, jnp.arange(num_layers), pk, pv))
  cache = cache.replace(k=k_all, v=v_all, mask=ctx.key_mask, index=cache.index + x.shape[1])
  return x, cache


def _layer_loop(block: Block, x: jax.Array, per_layer: tuple[dict, ...], ctx: Context, cache,
                prefix, policy):
  """`scan_layers` as a Python loop over per-layer weights, cache and prefix arrays."""

  def layer(x, p, own, shared):  # own: this layer's cache (k, v) or None
    x = parallel.constrain(x, HIDDEN_AXES)

    def attention(q, k, v):
      if own is not None:  # write the new slots, then attend to every slot of the layer
        at = (0, 0, ctx.index, 0)
        k = jax.lax.dynamic_update_slice(own[0], k.astype(own[0].dtype), at)
        v = jax.lax.dynamic_update_slice(own[1], v.astype(own[1].dtype), at)
      elif shared is None:
        return attend_causal(q, k, v, ctx.visible), (k, v)
      return attend(q, k, v, ctx.visible, shared), (k, v)
    return block(x, p, attention)

  if policy is not None:
    layer = jax.checkpoint(layer, policy=policy)
  if cache is not None:
    cache = cache.per_layer()
  ks, vs = [], []
  for i, p in enumerate(per_layer):
    own = None if cache is None else (cache.k[i], cache.v[i])
    shared = None if prefix is None else (prefix.k[i], prefix.v[i], ctx.prefix_mask)
    x, (k, v) = layer(x, p, own, shared)
    ks.append(k)
    vs.append(v)
  if cache is None:
    return x, (tuple(ks), tuple(vs))
  return x, cache.replace(k=tuple(ks), v=tuple(vs), mask=ctx.key_mask,
                          index=cache.index + x.shape[1])


def scan_prompts_and_continuations(block_p: Block, block_c: Block, xp: jax.Array, xc: jax.Array,
                                   stacked: dict, ctx_p: Context, ctx_c: Context,
                                   remat: bool | str = False) -> tuple[jax.Array, jax.Array]:
  """Bp prompts xp [Bp, P, D] and their continuations xc [B, T, D] through the layers together.

  Each layer runs the prompts, then the continuations attending to that layer's prompt keys and
  values (B / Bp rows per prompt, `attend`'s prefix) and causally to themselves. One scan, so the
  backward pass accumulates one gradient per layer weight: two scans (prompts, then continuations
  over their stacked keys) would each build a full stacked weight gradient before adding them.
  Returns (xp, xc) after the last layer.
  """
  policy = remat_policy(remat)

  def body(carry, p):
    xp, xc = carry
    xp, xc = parallel.constrain(xp, HIDDEN_AXES), parallel.constrain(xc, HIDDEN_AXES)

    def attend_prompt(q, k, v):
      return attend_causal(q, k, v, ctx_p.visible), (k, v)
    xp, (kp, vp) = block_p(xp, p, attend_prompt)

    def attend_continuation(q, k, v):
      return attend(q, k, v, ctx_c.visible, (kp, vp, ctx_c.prefix_mask)), None
    xc, _ = block_c(xc, p, attend_continuation)
    return (xp, xc), None

  if policy is not None:
    body = jax.checkpoint(body, policy=policy)
  (xp, xc), _ = jax.lax.scan(body, (xp, xc), stacked)
  return xp, xc
