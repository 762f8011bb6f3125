"""PPO with one advantage per sequence (ppo.advantage="sequence") and the inverted-ratio k3 KL:
the variant `configs/girl.py:paper` selects, checked on hand-computed values."""

import math

import ml_collections
import numpy as np
import pytest

from jaxprof.rl import advantages as adv_lib
from jaxprof.rl import losses
from jaxprof.trainers import ppo

MASK = np.array([[True, True, False], [True, False, False], [False, False, False]])


def test_k3_inv_is_rho_minus_one_minus_log_rho_with_rho_pi_over_ref():
  logp = np.array([[-1.0, -2.0, 5.0]], np.float32)  # the last entry is padding
  ref = np.array([[-1.5, -1.0, 0.0]], np.float32)
  got = np.asarray(losses.kl_penalty(logp, ref, np.array([[True, True, False]]), "k3_inv"))
  rho = [math.exp(-1.0 + 1.5), math.exp(-2.0 + 1.0)]  # pi / ref
  np.testing.assert_allclose(got[0, :2], [r - 1 - math.log(r) for r in rho], rtol=1e-6)
  assert got[0, 2] == 0.0
  np.testing.assert_allclose(got[0, :2], [0.148721, 0.367879], rtol=1e-5)  # by hand


def test_sequence_advantages_by_hand():
  kl = np.array([[0.1, 0.3, 9.0], [0.2, 9.0, 9.0], [9.0, 9.0, 9.0]], np.float32)
  adv, ret = adv_lib.sequence_advantages(np.array([1.0, 0.5, 0.0]), kl, MASK, 0.5,
                                         np.array([0.2, -0.1, 0.3]))
  # KL means 0.2, 0.2 and 0 (empty row); r = score - 0.5 * mean; a = r - V(prompt).
  np.testing.assert_allclose(np.asarray(ret), [0.9, 0.4, 0.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(adv), [0.7, 0.5, -0.3], rtol=1e-6)


def ppo_section(advantage: str, lam: float = 0.95) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(advantage=advantage, gamma=1.0, lam=lam,
                                        whiten_advantages=False))


def test_sequence_targets_broadcast_the_advantage_and_regress_the_prompt_value():
  kl = np.array([[0.1, 0.3, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
  values = np.array([[0.2, 5.0, 5.0], [-0.1, 5.0, 5.0], [0.3, 5.0, 5.0]], np.float32)
  adv, ret, value_mask = ppo.targets(ppo_section("sequence"), np.array([1.0, 0.5, 0.0]), MASK,
                                     kl, values, 0.5)
  np.testing.assert_allclose(np.asarray(adv), [[0.7, 0.7, 0], [0.5, 0, 0], [0, 0, 0]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ret)[:, 0], [0.9, 0.4, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(value_mask, [[True, False, False], [True, False, False],
                                             [False, False, False]])
  # The critic loss on those targets is the plain MSE of Eq. 8 (no clip): mean of (V - r)^2 / 2.
  loss, _ = losses.value_loss(np.array([[0.5, 0, 0], [0.0, 0, 0], [0, 0, 0]]), values, ret,
                              value_mask, agg_mode="seq_mean_token_mean")
  np.testing.assert_allclose(float(loss), 0.5 * ((0.5 - 0.9) ** 2 + 0.4 ** 2) / 2, rtol=1e-5)


def test_gae_targets_put_the_score_on_the_last_token():
  kl = np.zeros((3, 3), np.float32)
  values = np.zeros((3, 3), np.float32)
  adv, ret, value_mask = ppo.targets(ppo_section("gae", lam=1.0), np.array([1.0, 0.5, 0.0]),
                                     MASK, kl, values, 0.5)
  # gamma = lam = 1, values 0: every valid token's return and advantage is the sequence's score.
  np.testing.assert_allclose(np.asarray(ret) * MASK, [[1, 1, 0], [0.5, 0, 0], [0, 0, 0]])
  np.testing.assert_allclose(np.asarray(adv) * MASK, np.asarray(ret) * MASK)
  np.testing.assert_array_equal(value_mask, MASK)
  with pytest.raises(ValueError, match="ppo.advantage='td'"):
    ppo.targets(ppo_section("td"), np.zeros(3), MASK, kl, values, 0.5)
