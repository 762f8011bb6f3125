"""Scalar heads: last-token and pooled scores, per-token values, layer truncation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.models import causal_lm, heads
from tests import helpers


def test_last_valid_handles_left_and_right_padding():
  hidden = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
  mask = jnp.asarray([[True, True, False, False], [False, True, True, True]])
  np.testing.assert_array_equal(heads.last_valid(hidden, mask)[:, 0], [1.0, 7.0])


def test_sequence_score_ignores_padding():
  cfg = helpers.TINY_LLAMA
  params = heads.init_scored_model(cfg, jax.random.key(0))
  tokens, mask = helpers.left_padded([[5, 6, 7], [9, 8, 7, 6, 5]])
  batched = heads.sequence_scores(params, cfg, tokens, mask)
  alone = heads.sequence_scores(params, cfg, jnp.asarray([[5, 6, 7]]), jnp.ones((1, 3), bool))
  np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
  assert batched.shape == (2,)
  pooled = heads.sequence_scores(params, cfg, tokens, mask, pooling="mean")
  assert pooled.shape == (2,) and not np.allclose(pooled, batched)
  with pytest.raises(ValueError, match="pooling 'max'"):
    heads.sequence_scores(params, cfg, tokens, mask, pooling="max")


def test_token_values_shape_and_truncation():
  cfg = helpers.TINY_LLAMA
  policy = causal_lm.init_params(cfg, jax.random.key(1))
  small, small_cfg = heads.truncate_layers(policy, cfg, 1)
  assert small_cfg.num_layers == 1 and small["layers"]["q"].shape[0] == 1
  critic = {"backbone": small, "head": heads.init_head(jax.random.key(2), cfg.hidden_size)}
  tokens, mask = helpers.left_padded([[5, 6, 7, 8]])
  assert heads.token_values(critic, small_cfg, tokens, mask).shape == (1, 4)
  with pytest.raises(ValueError, match="num_layers=3"):
    heads.truncate_layers(policy, cfg, 3)
