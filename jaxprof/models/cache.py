"""The KV cache: an explicit pytree passed into the forward pass and returned updated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
  """Keys and values of every layer, stacked.

  k, v: [L, B, K, S, H] (heads before slots: the layout attention reads).
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
    return self.k.shape[3]

  def repeat(self, times: int) -> KVCache:
    """Each row repeated `times` times (row-major): shares one prompt's cache across a group."""
    rep = lambda x, axis: jnp.repeat(x, times, axis=axis)
    return self.replace(k=rep(self.k, 1), v=rep(self.v, 1), mask=rep(self.mask, 0))
