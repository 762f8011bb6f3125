"""Chunked LM-head log-probs, rematerialisation and bf16 compute against the plain paths."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof.models import causal_lm
from jaxprof.trainers import policy, sft
from tests import helpers


def test_chunked_logprobs_and_entropy_equal_full_log_softmax():
  cfg = helpers.TINY_LLAMA
  params = helpers.tiny_params(cfg, scale=2.0)
  tokens, mask = helpers.left_padded([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]])
  hidden, _ = causal_lm.forward(params, cfg, tokens, mask)
  targets = jnp.roll(tokens, -1, axis=1)
  logp = jax.nn.log_softmax(causal_lm.logits(params, cfg, hidden))
  want = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  want_ent = -jnp.sum(jnp.exp(logp) * logp, -1)
  for chunk in (1, 3, 7, 64):  # 3 does not divide T=7: the padded tail must be dropped
    got, ent = causal_lm.token_logprobs(params, cfg, hidden, targets, chunk, with_entropy=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(ent, want_ent, atol=1e-4)


def sft_batch():
  prompts, pmask = helpers.left_padded([[5, 6, 7], [8, 9, 10, 11]])
  return {"prompt_ids": prompts, "prompt_mask": pmask,
          "target_ids": jnp.asarray([[20, 21, 22, 3], [30, 31, 3, 0]], jnp.int32),
          "target_mask": jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]], bool)}


def loss_and_grads(spec, params):
  fn = lambda p: sft.sft_loss(spec, p, {}, sft_batch(), None)[0]
  return jax.value_and_grad(fn)(params)


def test_remat_gives_the_same_loss_and_gradients():
  cfg = helpers.TINY_LLAMA
  params = helpers.tiny_params(cfg, scale=2.0)
  l0, g0 = loss_and_grads(policy.PolicySpec(cfg=cfg), params)
  l1, g1 = loss_and_grads(policy.PolicySpec(cfg=cfg, remat=True), params)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bf16_compute_keeps_float32_master_gradients():
  cfg = helpers.TINY_LLAMA
  params = helpers.tiny_params(cfg, scale=2.0)
  l32, g32 = loss_and_grads(policy.PolicySpec(cfg=cfg), params)
  l16, g16 = loss_and_grads(policy.PolicySpec(cfg=cfg, compute_dtype="bfloat16"), params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))  # master weights stay f32
  np.testing.assert_allclose(l16, l32, rtol=0.05)  # bf16 rounding, same loss to a few percent
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g16), jax.tree.leaves(g16),
                        jax.tree.leaves(g32), strict=True):  # and the same gradient direction
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.99, (jax.tree_util.keystr(path), cosine)
