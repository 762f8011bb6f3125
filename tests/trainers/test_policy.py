"""Completion log-probs: the shared-prompt (once per group) path equals the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.trainers import policy
from tests import helpers


@pytest.mark.parametrize("cfg,remat", [(helpers.TINY_LLAMA, False), (helpers.TINY_LLAMA, "full"),
                                       (helpers.TINY_GPT2, "dots")])
def test_group_shared_prompt_equals_per_row_forward(cfg, remat):
  params = helpers.tiny_params(cfg, scale=2.0)
  spec = policy.PolicySpec(cfg=cfg, chunk_size=4, remat=remat)
  prompts, pmask = helpers.left_padded([[5, 6, 7, 8, 9], [11, 12]])
  g = 3
  rng = np.random.default_rng(0)
  comp = jnp.asarray(rng.integers(4, 128, (2 * g, 6)), jnp.int32)
  lengths = np.array([6, 4, 1, 5, 6, 2])
  cmask = jnp.asarray(np.arange(6)[None] < lengths[:, None])
  rows = (jnp.repeat(prompts, g, 0), jnp.repeat(pmask, g, 0), comp, cmask)
  plain = policy.completion_logprobs(spec, params, *rows)
  shared = policy.completion_logprobs(spec, params, *rows, group_size=g)
  np.testing.assert_allclose(np.asarray(shared)[np.asarray(cmask)],
                             np.asarray(plain)[np.asarray(cmask)], atol=1e-5)
  # Gradients agree too (the Prefix carries them back to the one prompt pass).
  loss = lambda p, gs: jnp.sum(policy.completion_logprobs(spec, p, *rows, group_size=gs) * cmask)
  g1, g3 = jax.grad(loss)(params, 1), jax.grad(loss)(params, g)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g3), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
