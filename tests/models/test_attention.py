"""The two attention shortcuts against plain attention over the same keys.

`attend_causal` skips the scores above the diagonal in blocks of queries; `attend`'s prefix path
meets a prompt's keys once for its whole group. Both must give what one softmax over every
visible key gives, values and gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.models import layers

B, K, G, H = 3, 2, 3, 8


def _qkv(key, b, t, s):
  kq, kk, kv = jax.random.split(jax.random.key(key), 3)
  return (jax.random.normal(kq, (b, t, K * G, H)), jax.random.normal(kk, (b, K, s, H)),
          jax.random.normal(kv, (b, K, s, H)))


@pytest.mark.parametrize("t", [40, 64, 150])  # one block, exactly one, three with a partial last
def test_causal_blocks_equal_full_attention_on_real_rows(t):
  q, k, v = _qkv(0, B, t, t)
  lengths = np.array([t, t - 37, 5])
  mask = jnp.asarray(np.arange(t)[None, :] >= t - lengths[:, None])  # left padding
  slots = jnp.arange(t)
  visible = layers.visibility(mask, slots, slots)
  weights = jax.random.normal(jax.random.key(1), (B, t, K * G, H)) * mask[:, :, None, None]

  def loss(fn, q, k, v):  # padding rows' outputs are never read: weight 0
    return jnp.sum(fn(q, k, v, visible) * weights)

  full = layers.attend(q, k, v, visible)
  blocked = layers.attend_causal(q, k, v, visible, block=64)
  real = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(blocked)[real], np.asarray(full)[real], atol=1e-5)
  want = jax.grad(lambda *a: loss(layers.attend, *a), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(lambda *a: loss(functools.partial(layers.attend_causal, block=64), *a),
                 argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-4)


@pytest.mark.parametrize("rows_per_prompt,t", [(1, 1), (4, 1), (3, 5)])
def test_prefix_equals_attention_over_the_prompt_repeated(rows_per_prompt, t):
  """Bp prompts of P keys, R rows each with T queries and S keys of their own: the same as each row
  attending to [its prompt's keys, its own keys] with the prompt copied into every row."""
  bp, p, s = 2, 11, 6
  b = bp * rows_per_prompt
  q, k, v = _qkv(2, b, t, s)
  _, pk, pv = _qkv(3, bp, 1, p)
  pmask = jnp.asarray(np.arange(p)[None, :] >= np.array([[0], [4]]))  # prompt 1 left-padded
  own = jax.random.bernoulli(jax.random.key(4), 0.6, (b, t, s)).at[:, :, 0].set(True)

  def shared(q, k, v, pk, pv):
    return layers.attend(q, k, v, own, (pk, pv, pmask))

  def repeated(q, k, v, pk, pv):
    rep = lambda x: jnp.repeat(x, rows_per_prompt, axis=0)
    keys = jnp.concatenate([rep(pk), k], axis=2)
    values = jnp.concatenate([rep(pv), v], axis=2)
    visible = jnp.concatenate([jnp.broadcast_to(rep(pmask)[:, None, :], (b, t, p)), own], -1)
    return layers.attend(q, keys, values, visible)

  np.testing.assert_allclose(shared(q, k, v, pk, pv), repeated(q, k, v, pk, pv), atol=1e-5)
  weights = jax.random.normal(jax.random.key(5), q.shape)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * weights), argnums=(0, 1, 2, 3, 4))(
      q, k, v, pk, pv) for f in (shared, repeated)]
  for got, want in zip(*grads, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-4)
