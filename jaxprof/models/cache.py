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



@struct.dataclass
class Prefix:
  """Keys and values of Bp prompts that continuations attend to, shared, never repeated.

  k, v: [L, Bp, K, P, H]; mask: [Bp, P] bool, real tokens (left padding is False). A batch of B
  continuations is B / Bp consecutive rows per prompt (a group of completions). What a forward
  without a cache returns as its second output: the tokens' own keys and values.
  """

  k: jax.Array
  v: jax.Array
  mask: jax.Array

  @property
  def lengths(self) -> jax.Array:
    """[Bp] int32 real tokens per prompt."""
    return jnp.sum(self.mask, axis=-1, dtype=jnp.int32)
