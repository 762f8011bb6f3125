"""jaxprof.rl.advantages against plain numpy loops, plus None rewards and degenerate groups."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.rl import advantages as adv_lib

ATOL = 1e-5
LENGTHS = (7, 3, 0, 1, 5)
T = 7
B = len(LENGTHS)


def make_mask(lengths=LENGTHS, t=T) -> np.ndarray:
  return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def rand(seed: int, shape, scale=1.0) -> np.ndarray:
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def garbage(x, mask, value=np.nan):
  return np.where(mask > 0, x, value).astype(np.float32)


# --- GAE ---------------------------------------------------------------------------------------


def ref_gae(rewards, values, lengths, gamma, lam):
  adv = np.zeros(rewards.shape)
  for i, n in enumerate(lengths):
    running = 0.0
    for t in reversed(range(n)):
      next_value = float(values[i, t + 1]) if t + 1 < n else 0.0
      delta = float(rewards[i, t]) + gamma * next_value - float(values[i, t])
      running = delta + gamma * lam * running
      adv[i, t] = running
  returns = np.where(make_mask(lengths, rewards.shape[1]) > 0, adv + np.nan_to_num(values), 0.0)
  return adv, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.9, 0.0)])
def test_gae_matches_numpy(gamma, lam):
  mask = make_mask()
  rewards = garbage(rand(0, (B, T)), mask)
  values = garbage(rand(1, (B, T)), mask)
  got_adv, got_ret = jax.jit(adv_lib.gae)(rewards, values, mask, gamma, lam)
  want_adv, want_ret = ref_gae(rewards, values, LENGTHS, gamma, lam)
  np.testing.assert_allclose(got_adv, want_adv, atol=ATOL)
  np.testing.assert_allclose(got_ret, want_ret, atol=ATOL)


def test_gae_lambda_one_gives_reward_to_go():
  mask = make_mask()
  rewards = rand(2, (B, T)) * mask
  values = rand(3, (B, T)) * mask
  _, returns = adv_lib.gae(rewards, values, mask.astype(bool), 1.0, 1.0)
  want = np.flip(np.cumsum(np.flip(rewards, 1), 1), 1) * mask
  np.testing.assert_allclose(returns, want, atol=ATOL)


def test_gae_skips_holes_in_the_mask():
  """A hole behaves as if the position were removed from the sequence."""
  rewards = np.array([[1.0, 9.0, 2.0, 3.0, 0.0]], np.float32)
  values = np.array([[0.5, 9.0, 0.2, 0.1, 0.0]], np.float32)
  mask = np.array([[1, 0, 1, 1, 0]], np.float32)
  adv, ret = adv_lib.gae(rewards, values, mask, 0.9, 0.8)
  packed_adv, packed_ret = ref_gae(rewards[:, [0, 2, 3]], values[:, [0, 2, 3]], [3], 0.9, 0.8)
  np.testing.assert_allclose(np.asarray(adv)[:, [0, 2, 3]], packed_adv, atol=ATOL)
  np.testing.assert_allclose(np.asarray(ret)[:, [0, 2, 3]], packed_ret, atol=ATOL)
  assert float(adv[0, 1]) == 0.0 and float(ret[0, 1]) == 0.0


def test_sequence_reward_to_token_rewards():
  mask = make_mask()
  scores = rand(4, (B,))
  kl = garbage(rand(5, (B, T)), mask)
  got = np.asarray(jax.jit(adv_lib.sequence_reward_to_token_rewards)(scores, mask, kl, 0.1))
  want = np.zeros((B, T))
  for i, n in enumerate(LENGTHS):
    for t in range(n):
      want[i, t] = -0.1 * kl[i, t] + (scores[i] if t == n - 1 else 0.0)
  np.testing.assert_allclose(got, want, atol=ATOL)
  no_kl = np.asarray(adv_lib.sequence_reward_to_token_rewards(scores, mask.astype(bool)))
  np.testing.assert_allclose(no_kl.sum(1), [s if n else 0.0 for s, n in zip(scores, LENGTHS,
                                                                            strict=True)],
                             atol=ATOL)


# --- group advantages ----------------------------------------------------------------------------


def ref_group(rewards, valid, group_size, method, ddof, eps, scale):
  r = np.asarray(rewards, np.float64).reshape(-1, group_size)
  ok = np.asarray(valid).reshape(r.shape)
  centred = np.zeros(r.shape)
  stds = np.zeros(r.shape[0])
  usable = np.zeros(r.shape, bool)
  for g in range(r.shape[0]):
    members = [j for j in range(group_size) if ok[g, j]]
    n = len(members)
    if n < 2:
      continue
    vals = [r[g, j] for j in members]
    mean = sum(vals) / n
    stds[g] = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - ddof)) if n > ddof else 0.0
    for j in members:
      usable[g, j] = True
      if method == "rloo":
        centred[g, j] = r[g, j] - (sum(vals) - r[g, j]) / (n - 1)
      else:
        centred[g, j] = r[g, j] - mean
  if scale == "group":
    out = centred / (stds[:, None] + eps)
  elif scale == "batch":
    c = centred[usable]
    std = math.sqrt(np.sum((c - c.mean()) ** 2) / (len(c) - ddof)) if len(c) > ddof else 0.0
    out = centred / (std + eps)
  else:
    out = centred
  return np.where(usable, out, 0.0)


GROUP_CASES = [("grpo", None), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", None),
               ("dr_grpo", "batch"), ("rloo", None), ("rloo", "group"), ("rloo", "batch")]


def group_inputs(seed):
  """6 groups of 4: normal, one None, equal rewards, one valid member, all None, two valid."""
  rewards = rand(seed, (6, 4), 2.0)
  rewards[2] = 0.1
  valid = np.ones((6, 4), bool)
  valid[1, 2] = False
  valid[3, 1:] = False
  valid[4] = False
  valid[5, :2] = False
  rewards[~valid] = np.nan  # invalid rewards must not leak
  return rewards, valid


@pytest.mark.parametrize("method,scale", GROUP_CASES)
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("flat", [False, True])
def test_group_advantages_match_numpy(method, scale, ddof, flat):
  rewards, valid = group_inputs(10)
  fn = jax.jit(adv_lib.group_advantages,
               static_argnames=("group_size", "method", "std_ddof", "eps", "scale"))
  r_in, v_in = (rewards.reshape(-1), valid.reshape(-1)) if flat else (rewards, valid)
  got = np.asarray(fn(r_in, v_in, group_size=4, method=method, std_ddof=ddof, scale=scale))
  assert got.shape == r_in.shape
  default_scale = {"grpo": "group", "dr_grpo": "none", "rloo": "none"}[method]
  want = ref_group(np.nan_to_num(rewards), valid, 4, method, ddof, 1e-6, scale or default_scale)
  np.testing.assert_allclose(got.reshape(6, 4), want, atol=ATOL, rtol=1e-5)
  got = got.reshape(6, 4)
  assert np.all(np.isfinite(got))
  assert np.all(got[~valid] == 0.0)
  assert np.all(got[2] == 0.0)  # equal rewards: exactly zero, not a float residue / eps
  assert np.all(got[3] == 0.0)  # a single valid member


def test_group_advantages_equal_rewards_are_exactly_zero():
  for value in (0.1, 1e3 + 0.3, -7.7):
    r = jnp.full((16,), value, jnp.float32)
    for method in ("grpo", "dr_grpo", "rloo"):
      out = adv_lib.group_advantages(r, group_size=8, method=method)
      assert np.all(np.asarray(out) == 0.0), (value, method)
    assert np.all(np.asarray(adv_lib.group_advantages(r, group_size=8, scale="batch")) == 0.0)


def test_group_advantages_grpo_known_values():
  adv = adv_lib.group_advantages(jnp.array([1.0, 0.0, 1.0, 0.0]), group_size=4)
  np.testing.assert_allclose(adv, [1.0, -1.0, 1.0, -1.0], atol=1e-5)
  rloo = adv_lib.group_advantages(jnp.array([3.0, 0.0, 0.0]), group_size=3, method="rloo")
  np.testing.assert_allclose(rloo, [3.0, -1.5, -1.5], atol=ATOL)


def test_group_advantages_bad_arguments():
  with pytest.raises(ValueError, match="group_size"):
    adv_lib.group_advantages(jnp.zeros(6), group_size=4)
  with pytest.raises(ValueError, match="group_size"):
    adv_lib.group_advantages(jnp.zeros((2, 3)), group_size=4)
  with pytest.raises(ValueError, match="method"):
    adv_lib.group_advantages(jnp.zeros(4), group_size=4, method="ppo")
  with pytest.raises(ValueError, match="dr_grpo"):
    adv_lib.group_advantages(jnp.zeros(4), group_size=4, method="dr_grpo", scale="group")


# --- whitening, reward lists -------------------------------------------------------------------


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_numpy(shift_mean):
  mask = make_mask()
  x = garbage(rand(20, (B, T), 3.0) + 2.0, mask)
  got = np.asarray(jax.jit(adv_lib.whiten, static_argnames="shift_mean")(x, mask, shift_mean))
  flat = np.concatenate([x[i, :n] for i, n in enumerate(LENGTHS)]).astype(np.float64)
  want = np.zeros((B, T))
  for i, n in enumerate(LENGTHS):
    for t in range(n):
      want[i, t] = (x[i, t] - flat.mean()) / math.sqrt(flat.var() + 1e-8)
      want[i, t] += 0.0 if shift_mean else flat.mean()
  np.testing.assert_allclose(got, want, atol=ATOL)
  assert np.all(np.asarray(adv_lib.whiten(x, np.zeros_like(mask))) == 0.0)


def test_rewards_to_arrays():
  values, valid = adv_lib.rewards_to_arrays([1.5, None, -2, 0.0])
  np.testing.assert_array_equal(values, np.array([1.5, 0.0, -2.0, 0.0], np.float32))
  np.testing.assert_array_equal(valid, [True, False, True, True])
  assert values.dtype == np.float32
  values, valid = adv_lib.rewards_to_arrays([[None, 1.0], [2.0, 3.0]])
  assert values.shape == (2, 2) and valid.tolist() == [[False, True], [True, True]]
  adv = adv_lib.group_advantages(values, valid, group_size=2)
  np.testing.assert_allclose(adv, [[0.0, 0.0], [-1.0, 1.0]], atol=1e-5)
  with pytest.raises(ValueError, match=r"index \(2,\)"):
    adv_lib.rewards_to_arrays([1.0, 2.0, float("nan")])


# --- defaults and edge cases found by mutation testing ------------------------------------------


def test_gae_and_token_rewards_defaults():
  mask = make_mask()
  rewards = rand(6, (B, T)) * mask
  values = rand(7, (B, T)) * mask
  adv, ret = adv_lib.gae(rewards, values, mask)  # gamma = 1.0, lam = 0.95
  want_adv, want_ret = ref_gae(rewards, values, LENGTHS, 1.0, 0.95)
  np.testing.assert_allclose(adv, want_adv, atol=ATOL)
  np.testing.assert_allclose(ret, want_ret, atol=ATOL)
  scores = rand(8, (B,))
  got = adv_lib.sequence_reward_to_token_rewards(scores, mask, rand(9, (B, T)))  # kl_coef = 0
  want = np.zeros((B, T))
  for i, n in enumerate(LENGTHS):
    if n:
      want[i, n - 1] = scores[i]
  np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_group_advantages_eps_is_added_to_a_small_std(scale):
  """Rewards 1e-5 apart: std ~ 5e-6, so eps = 1e-6 moves the advantages by ~20%."""
  rewards = np.array([[0.0, 1e-5], [0.0, 2e-5]], np.float32)
  got = adv_lib.group_advantages(rewards, group_size=2, scale=scale)
  want = ref_group(rewards, np.ones((2, 2), bool), 2, "grpo", 0, 1e-6, scale)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_group_advantages_float_valid_mask_and_messages():
  rewards, valid = group_inputs(11)
  got = adv_lib.group_advantages(rewards, valid.astype(np.float32), group_size=4)
  want = ref_group(np.nan_to_num(rewards), valid, 4, "grpo", 0, 1e-6, "group")
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)
  with pytest.raises(ValueError, match=r"^group_advantages: scale must be 'group', 'batch' or "
                                       r"'none', got 'std'$"):
    adv_lib.group_advantages(jnp.zeros(4), group_size=4, scale="std")
  with pytest.raises(ValueError, match=r"^group_advantages: dr_grpo means no group-std scaling"):
    adv_lib.group_advantages(jnp.zeros(4), group_size=4, method="dr_grpo", scale="group")


def test_whiten_default_shift_and_eps_on_small_variance():
  mask = make_mask()
  x = garbage(rand(22, (B, T), 2.0) + 1.0, mask)
  flat = np.concatenate([x[i, :n] for i, n in enumerate(LENGTHS)]).astype(np.float64)
  want = np.where(mask > 0, (np.nan_to_num(x) - flat.mean()) / math.sqrt(flat.var() + 1e-8), 0.0)
  np.testing.assert_allclose(adv_lib.whiten(x, mask), want, atol=ATOL)  # shift_mean=True
  tiny = np.array([[-2e-4, 2e-4]], np.float32)  # variance 4e-8, comparable to eps = 1e-8
  y = 2e-4 / math.sqrt(4e-8 + 1e-8)
  np.testing.assert_allclose(adv_lib.whiten(tiny, np.ones((1, 2))), [[-y, y]], rtol=1e-4)
