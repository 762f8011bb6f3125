"""The KV cache: an explicit pytree passed into the forward pass and returned updated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
  """Keys and values of every layer: stacked, or one array per layer (`per_layer`).

  k, v: [L, B, K, S, H] (heads before slots: the layout attention reads), or tuples of L arrays
  [B, K, S, H], what the decode loop over per-layer weights reads (`layers.scan_layers`).
  mask: [B, S] bool, which slots hold a real token.
  index: [] int32, the next slot to write (all rows share it: prompts are left-padded so they end
  together).
  """

  k: jax.Array
  v: jax.Array
  mask: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
            dtype=jnp.float32) -> KVCache:
    shape = (num_layers, batch, kv_heads, max_len, head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               mask=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return jax.tree.leaves(self.k)[0].shape[-2]

  def per_layer(self) -> KVCache:
    """This cache with k and v as tuples of per-layer arrays."""
    return self.replace(k=unstack(self.k), v=unstack(self.v))



@struct.dataclass
class Prefix:
  """Keys and values of Bp prompts that continuations attend to, shared, never repeated.

  k, v: [L, Bp, K, P, H] or tuples of L arrays [Bp, K, P, H] (`per_layer`); mask: [Bp, P] bool,
  real tokens (left padding is False). A batch of B continuations is B / Bp consecutive rows per
  prompt (a group of completions). What a forward without a cache returns as its second output:
  the tokens' own keys and values.
  """

  k: jax.Array
  v: jax.Array
  mask: jax.Array

  @property
  def lengths(self) -> jax.Array:
    """[Bp] int32 real tokens per prompt."""
    return jnp.sum(self.mask, axis=-1, dtype=jnp.int32)

  def per_layer(self) -> Prefix:
    """This prefix with k and v as tuples of per-layer arrays."""
    return self.replace(k=unstack(self.k), v=unstack(self.v))


def unstack(x: jax.Array | tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """[L, ...] -> a tuple of L arrays [...] (a tuple is returned as it is)."""
  return x if isinstance(x, tuple) else tuple(x[i] for i in range(x.shape[0]))
