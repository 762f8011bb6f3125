"""jaxprof.rl.losses against plain numpy loops, plus padding / NaN / gradient edge cases."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.rl import losses

ATOL = 1e-5
LENGTHS = (7, 3, 0, 1, 5)  # includes a full row, an all-padding row and a length-1 row
T = 7
B = len(LENGTHS)


def make_mask(lengths=LENGTHS, t=T) -> np.ndarray:
  return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def with_garbage(x: np.ndarray, mask: np.ndarray, value=np.nan) -> np.ndarray:
  """Puts `value` on padded positions: results must not depend on it."""
  return np.where(mask > 0, x, value).astype(np.float32)


def rand(seed: int, shape, scale=1.0) -> np.ndarray:
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# --- numpy references --------------------------------------------------------------------------


def ref_aggregate(x, lengths, mode, max_len=None):
  if mode == "token_mean":
    total, count = 0.0, 0
    for i, n in enumerate(lengths):
      for t in range(n):
        total += float(x[i, t])
        count += 1
    return total / count if count else 0.0
  if mode == "seq_mean_token_mean":
    means = [sum(float(x[i, t]) for t in range(n)) / n for i, n in enumerate(lengths) if n > 0]
    return sum(means) / len(means) if means else 0.0
  total = sum(float(x[i, t]) for i, n in enumerate(lengths) for t in range(n))
  return total / (len(lengths) * (x.shape[1] if max_len is None else max_len))


def ref_policy_per_token(lp, old, adv, lengths, eps_low, eps_high, dual_clip, sequence):
  """Per-token losses and clip flags, one token at a time."""
  out = np.zeros(lp.shape)
  low = np.zeros(lp.shape, bool)
  high = np.zeros(lp.shape, bool)
  for i, n in enumerate(lengths):
    seq_ratio = math.exp(np.mean([lp[i, t] - old[i, t] for t in range(n)])) if n else 1.0
    for t in range(n):
      ratio = seq_ratio if sequence else math.exp(lp[i, t] - old[i, t])
      a = float(adv[i] if adv.ndim == 1 else adv[i, t])
      clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
      loss = max(-a * ratio, -a * clipped)
      if dual_clip is not None and a < 0:
        loss = min(loss, dual_clip * abs(a))
      out[i, t] = loss
      low[i, t] = a < 0 and ratio < 1 - eps_low
      high[i, t] = a > 0 and ratio > 1 + eps_high
  return out, low, high


# --- masked_mean / aggregate / token_nll ------------------------------------------------------


def test_masked_mean_matches_numpy_and_ignores_padding():
  mask = make_mask()
  x = with_garbage(rand(0, (B, T)), mask)
  got_all = losses.masked_mean(x, mask)
  want_all = np.mean(np.concatenate([x[i, :n] for i, n in enumerate(LENGTHS)]))
  np.testing.assert_allclose(got_all, want_all, atol=ATOL)
  got_rows = np.asarray(losses.masked_mean(x, mask.astype(bool), axis=-1))
  want_rows = [np.mean(x[i, :n]) if n else 0.0 for i, n in enumerate(LENGTHS)]
  np.testing.assert_allclose(got_rows, want_rows, atol=ATOL)
  assert losses.masked_mean(x, np.zeros_like(mask)) == 0.0


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_aggregate_matches_numpy(mode):
  mask = make_mask()
  x = with_garbage(rand(1, (B, T)), mask)
  fn = jax.jit(losses.aggregate, static_argnames=("mode", "max_len"))
  np.testing.assert_allclose(fn(x, mask, mode), ref_aggregate(x, LENGTHS, mode), atol=ATOL)
  np.testing.assert_allclose(fn(x, mask.astype(bool), mode, max_len=16),
                             ref_aggregate(x, LENGTHS, mode, 16), atol=ATOL)


@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_aggregate_empty_batch_is_zero(mode):
  out = losses.aggregate(jnp.full((3, 4), jnp.nan), jnp.zeros((3, 4)), mode)
  assert float(out) == 0.0


def test_aggregate_rejects_unknown_mode():
  with pytest.raises(ValueError, match="unknown mode"):
    losses.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 3)), "sum")


def test_token_nll():
  mask = make_mask()
  lp = with_garbage(-np.abs(rand(2, (B, T))), mask)
  for mode in losses.AGG_MODES:
    np.testing.assert_allclose(losses.token_nll(lp, mask, mode),
                               ref_aggregate(-np.nan_to_num(lp), LENGTHS, mode), atol=ATOL)


# --- pairwise reward loss ----------------------------------------------------------------------


@pytest.mark.parametrize("margin_kind", ["scalar", "vector"])
def test_pairwise_reward_loss_matches_numpy(margin_kind):
  rc, rr = rand(3, (16,), 2.0), rand(4, (16,), 2.0)
  margin = 0.5 if margin_kind == "scalar" else np.abs(rand(5, (16,)))
  center = 0.01
  loss, metrics = jax.jit(losses.pairwise_reward_loss)(rc, rr, margin, center)
  m = np.broadcast_to(margin, rc.shape)
  want = np.mean([math.log1p(math.exp(-(c - r - mm))) for c, r, mm in zip(rc, rr, m, strict=True)])
  want += center * np.mean((rc + rr) ** 2)
  np.testing.assert_allclose(loss, want, atol=ATOL)
  np.testing.assert_allclose(metrics["accuracy"], np.mean(rc > rr), atol=ATOL)
  np.testing.assert_allclose(metrics["reward_gap"], np.mean(rc - rr), atol=ATOL)


def test_pairwise_reward_loss_is_stable_for_large_gaps():
  rc = jnp.array([-300.0, 300.0])
  rr = jnp.array([300.0, -300.0])
  loss, metrics = losses.pairwise_reward_loss(rc, rr)
  np.testing.assert_allclose(loss, 300.0, rtol=1e-6)  # (600 + ~0) / 2
  grads = jax.grad(lambda a, b: losses.pairwise_reward_loss(a, b)[0], argnums=(0, 1))(rc, rr)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert float(metrics["accuracy"]) == 0.5


# --- policy loss -------------------------------------------------------------------------------


def policy_inputs(seed, per_token_adv):
  mask = make_mask()
  old = -np.abs(rand(seed, (B, T)))
  lp = old + rand(seed + 1, (B, T), 0.5)  # ratios spread around 1 so both clips trigger
  adv = rand(seed + 2, (B, T) if per_token_adv else (B,))
  return with_garbage(lp, mask), with_garbage(old, mask), adv, mask


POLICY_JIT = jax.jit(losses.policy_loss, static_argnames=(
    "eps_low", "eps_high", "dual_clip", "ratio_level", "agg_mode", "max_len"))


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_policy_loss_matches_numpy(ratio_level, per_token_adv, mode):
  lp, old, adv, mask = policy_inputs(10, per_token_adv)
  loss, metrics = POLICY_JIT(lp, old, adv, mask, eps_low=0.2, eps_high=0.28,
                             ratio_level=ratio_level, agg_mode=mode, max_len=8)
  per_token, low, high = ref_policy_per_token(lp, old, adv, LENGTHS, 0.2, 0.28, None,
                                              ratio_level == "sequence")
  np.testing.assert_allclose(loss, ref_aggregate(per_token, LENGTHS, mode, 8), atol=ATOL)
  np.testing.assert_allclose(metrics["clip_fraction_low"], ref_aggregate(low, LENGTHS,
                                                                         "token_mean"), atol=ATOL)
  np.testing.assert_allclose(metrics["clip_fraction_high"], ref_aggregate(high, LENGTHS,
                                                                          "token_mean"), atol=ATOL)
  np.testing.assert_allclose(metrics["clip_fraction"],
                             ref_aggregate(low | high, LENGTHS, "token_mean"), atol=ATOL)
  if ratio_level == "token":
    assert 0 < float(metrics["clip_fraction_low"]) and 0 < float(metrics["clip_fraction_high"])
    ratios = np.exp(np.nan_to_num(lp - old))
    np.testing.assert_allclose(metrics["ratio_mean"], ref_aggregate(ratios, LENGTHS, "token_mean"),
                               atol=ATOL)
  assert all(np.isfinite(v) for v in metrics.values())


def test_policy_loss_dual_clip():
  mask = np.ones((1, 4), np.float32)
  old = np.zeros((1, 4), np.float32)
  lp = np.log(np.array([[5.0, 5.0, 0.5, 5.0]], np.float32))  # ratios 5, 5, 0.5, 5
  adv = np.array([[-2.0, 1.0, -1.0, -0.5]], np.float32)
  loss, metrics = losses.policy_loss(lp, old, adv, mask, eps_low=0.2, dual_clip=3.0)
  per_token, _, _ = ref_policy_per_token(lp, old, adv, [4], 0.2, 0.2, 3.0, False)
  # token 0: -A*rho = 10 capped at 3*|A| = 6; token 3: 2.5 capped at 1.5; the others are untouched
  np.testing.assert_allclose(per_token[0], [6.0, -1.2, 0.8, 1.5], atol=ATOL)
  np.testing.assert_allclose(loss, per_token.mean(), atol=ATOL)
  np.testing.assert_allclose(metrics["dual_clip_fraction"], 0.5, atol=ATOL)
  no_dual, _ = losses.policy_loss(lp, old, adv, mask, eps_low=0.2)
  np.testing.assert_allclose(no_dual, (10.0 - 1.2 + 0.8 + 2.5) / 4, atol=ATOL)
  with pytest.raises(ValueError, match="dual_clip"):
    losses.policy_loss(lp, old, adv, mask, dual_clip=1.0)


def test_policy_loss_equals_minus_advantage_on_policy():
  """With logp == old (single update per batch) the loss is -mean(A) and nothing is clipped."""
  mask = make_mask()
  lp = with_garbage(-np.abs(rand(20, (B, T))), mask)
  adv = rand(21, (B,))
  loss, metrics = losses.policy_loss(lp, lp, adv, mask, agg_mode="seq_mean_token_mean")
  np.testing.assert_allclose(loss, -np.mean([adv[i] for i, n in enumerate(LENGTHS) if n]),
                             atol=ATOL)
  assert float(metrics["clip_fraction"]) == 0.0
  np.testing.assert_allclose(metrics["ratio_mean"], 1.0, atol=ATOL)


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_policy_loss_gradients_finite_with_garbage_padding(ratio_level, dual_clip):
  mask = make_mask()
  lp, old, adv, _ = policy_inputs(30, per_token_adv=True)
  lp = with_garbage(lp, mask, 500.0)  # exp(500 - old) overflows unless padding is masked first
  old = with_garbage(old, mask, -500.0)
  adv = with_garbage(adv, mask, np.nan)
  for mode in losses.AGG_MODES:
    fn = functools.partial(losses.policy_loss, eps_low=0.2, dual_clip=dual_clip,
                           ratio_level=ratio_level, agg_mode=mode)
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(lp, old, adv, mask)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert np.all(np.isfinite(grad))
    assert np.all(np.asarray(grad)[mask == 0] == 0.0)


def test_sequence_ratio_gradient_matches_gspo_formula():
  """GSPO: d loss / d logp_t = -A_i s_i / |y_i| / n_seq on unclipped sequences, 0 on clipped."""
  lp, old, adv, mask = policy_inputs(40, per_token_adv=False)
  fn = lambda x: losses.policy_loss(x, old, adv, mask, eps_low=0.2, ratio_level="sequence",
                                    agg_mode="seq_mean_token_mean")[0]
  grad = np.asarray(jax.grad(fn)(lp))
  want = np.zeros((B, T))
  n_seq = sum(1 for n in LENGTHS if n)
  n_clipped = 0
  for i, n in enumerate(LENGTHS):
    if not n:
      continue
    s = math.exp(np.mean(lp[i, :n] - old[i, :n]))
    clipped = (adv[i] > 0 and s > 1.2) or (adv[i] < 0 and s < 0.8)
    n_clipped += clipped
    want[i, :n] = 0.0 if clipped else -adv[i] * s / n / n_seq
  assert 0 < n_clipped < n_seq  # the inputs exercise both branches
  np.testing.assert_allclose(grad, want, atol=ATOL)


# --- value loss --------------------------------------------------------------------------------


def ref_value(v, vo, ret, lengths, clip_eps):
  out = np.zeros(v.shape)
  for i, n in enumerate(lengths):
    for t in range(n):
      err = (v[i, t] - ret[i, t]) ** 2
      if clip_eps is not None:
        vc = min(max(v[i, t], vo[i, t] - clip_eps), vo[i, t] + clip_eps)
        err = max(err, (vc - ret[i, t]) ** 2)
      out[i, t] = 0.5 * err
  return out


@pytest.mark.parametrize("clip_eps", [None, 0.2])
@pytest.mark.parametrize("mode", losses.AGG_MODES)
def test_value_loss_matches_numpy(clip_eps, mode):
  mask = make_mask()
  vo = rand(50, (B, T))
  v = with_garbage(vo + rand(51, (B, T), 0.5), mask)
  ret = with_garbage(vo + rand(52, (B, T)), mask)
  vo = with_garbage(vo, mask)
  fn = jax.jit(losses.value_loss, static_argnames=("clip_eps", "agg_mode", "max_len"))
  loss, metrics = fn(v, vo, ret, mask, clip_eps=clip_eps, agg_mode=mode)
  np.testing.assert_allclose(loss, ref_aggregate(ref_value(v, vo, ret, LENGTHS, clip_eps),
                                                 LENGTHS, mode), atol=ATOL)
  r_valid = np.concatenate([ret[i, :n] for i, n in enumerate(LENGTHS)])
  vo_valid = np.concatenate([vo[i, :n] for i, n in enumerate(LENGTHS)])
  np.testing.assert_allclose(metrics["explained_variance"],
                             1 - np.var(r_valid - vo_valid) / np.var(r_valid), atol=ATOL)
  if clip_eps is not None:
    assert float(metrics["value_clip_fraction"]) > 0
  grad = jax.grad(lambda x: fn(x, vo, ret, mask, clip_eps=clip_eps, agg_mode=mode)[0])(v)
  assert np.all(np.isfinite(grad))


def test_explained_variance_constant_returns_is_zero_not_nan():
  mask = make_mask()
  _, metrics = losses.value_loss(rand(60, (B, T)), rand(61, (B, T)), np.ones((B, T)), mask)
  assert float(metrics["explained_variance"]) == 0.0
  _, metrics = losses.value_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)),
                                 np.zeros((2, 3)))
  assert all(float(v) == 0.0 for v in metrics.values())


# --- KL estimators -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_penalty_matches_numpy(kind):
  mask = make_mask()
  lp = with_garbage(-np.abs(rand(70, (B, T))), mask, 1e4)
  ref = with_garbage(-np.abs(rand(71, (B, T))), mask, -1e4)
  got = np.asarray(jax.jit(losses.kl_penalty, static_argnames="kind")(lp, ref, mask, kind))
  want = np.zeros((B, T))
  for i, n in enumerate(LENGTHS):
    for t in range(n):
      d = float(ref[i, t]) - float(lp[i, t])
      want[i, t] = {"k1": -d, "k2": 0.5 * d * d, "k3": math.exp(d) - d - 1}[kind]
  np.testing.assert_allclose(got, want, atol=ATOL)
  if kind != "k1":
    assert np.all(got >= 0)


def test_kl_estimators_are_consistent_with_exact_kl():
  """Sampling from p, the k1 and k3 averages approach KL(p || r) of two categoricals."""
  rng = np.random.default_rng(80)
  p = rng.dirichlet(np.ones(6))
  r = rng.dirichlet(np.ones(6))
  exact = float(np.sum(p * np.log(p / r)))
  samples = rng.choice(6, size=(1, 200_000), p=p)
  lp, lr = np.log(p)[samples].astype(np.float32), np.log(r)[samples].astype(np.float32)
  mask = np.ones(samples.shape, np.float32)
  for kind in ("k1", "k3"):
    est = float(jnp.mean(losses.kl_penalty(lp, lr, mask, kind)))
    assert abs(est - exact) < 0.03 * max(1.0, exact), (kind, est, exact)


def test_kl_penalty_rejects_unknown_kind():
  with pytest.raises(ValueError, match="kind"):
    losses.kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2)), "k4")


# --- entropy -----------------------------------------------------------------------------------


def test_entropy_from_logits_matches_numpy():
  mask = make_mask()
  logits = rand(90, (B, T, 11), 3.0)
  logits[0, 0, 3] = -np.inf  # a banned token
  logits[mask == 0] = np.nan  # garbage at padding
  got = np.asarray(jax.jit(losses.entropy_from_logits)(logits, mask))
  want = np.zeros((B, T))
  for i, n in enumerate(LENGTHS):
    for t in range(n):
      z = logits[i, t].astype(np.float64)
      p = np.exp(z - z.max())
      p /= p.sum()
      want[i, t] = -sum(pv * math.log(pv) for pv in p if pv > 0)
  np.testing.assert_allclose(got, want, atol=ATOL)
  mean_h = lambda x: losses.masked_mean(losses.entropy_from_logits(x, mask), mask)
  np.testing.assert_allclose(mean_h(logits), ref_aggregate(want, LENGTHS, "token_mean"), atol=ATOL)
  assert np.all(np.isfinite(jax.grad(mean_h)(logits)))


# --- defaults, metrics and boundaries found by mutation testing --------------------------------


def test_aggregate_defaults_weights_and_max_len_checks():
  mask = make_mask()
  x = with_garbage(rand(6, (B, T)), mask)
  np.testing.assert_allclose(losses.aggregate(x, mask), ref_aggregate(x, LENGTHS, "token_mean"),
                             atol=ATOL)
  weights = np.array([[0.5, 2.0, 0.0]], np.float32)  # a float mask weighs tokens
  values = np.array([[3.0, -1.0, np.nan]], np.float32)
  np.testing.assert_allclose(losses.masked_mean(values, weights), (1.5 - 2.0) / 2.5, atol=ATOL)
  one = np.array([[2.0], [4.0]], np.float32)
  np.testing.assert_allclose(losses.aggregate(one, np.ones((2, 1)), "seq_mean_token_sum_norm"),
                             3.0, atol=ATOL)  # T = max_len = 1 is valid
  with pytest.raises(ValueError, match=r"^aggregate: max_len must be positive, got 0$"):
    losses.aggregate(one, np.ones((2, 1)), "seq_mean_token_sum_norm", max_len=0)
  with pytest.raises(ValueError, match=r"^aggregate mode 'seq_mean_token_mean' needs a \[B, T\]"):
    losses.aggregate(jnp.zeros((2, 3, 4)), jnp.ones((2, 3, 4)), "seq_mean_token_mean")


def test_token_nll_default_mode_and_max_len():
  mask = make_mask()
  lp = with_garbage(-np.abs(rand(7, (B, T))), mask)
  nll = -np.nan_to_num(lp)
  np.testing.assert_allclose(losses.token_nll(lp, mask), ref_aggregate(nll, LENGTHS, "token_mean"),
                             atol=ATOL)
  np.testing.assert_allclose(losses.token_nll(lp, mask, "seq_mean_token_sum_norm", max_len=16),
                             ref_aggregate(nll, LENGTHS, "seq_mean_token_sum_norm", 16), atol=ATOL)


def test_pairwise_reward_loss_defaults_ties_and_metrics():
  rc = np.array([1.0, 0.5, 2.0, -1.0], np.float32)
  rr = np.array([0.0, 0.5, 3.0, -1.5], np.float32)
  loss, metrics = losses.pairwise_reward_loss(rc, rr)  # no margin, no centring term
  bt = np.mean([math.log1p(math.exp(-g)) for g in (1.0, 0.0, -1.0, 0.5)])
  want = {"accuracy": 0.5,  # the tie is not a win
          "reward_gap": 0.125, "reward_chosen": 0.625, "reward_rejected": 0.5, "bt_loss": bt,
          "center_loss": (1.0 + 1.0 + 25.0 + 6.25) / 4}
  assert set(metrics) == set(want)
  for name, value in want.items():
    np.testing.assert_allclose(metrics[name], value, atol=ATOL, err_msg=name)
  np.testing.assert_allclose(loss, bt, atol=ATOL)


def test_policy_loss_default_clip_range_and_approx_kl():
  mask = np.ones((1, 2), np.float32)
  lp = np.log(np.array([[1.5, 0.5]], np.float32))
  adv = np.array([[1.0, -1.0]], np.float32)
  loss, metrics = losses.policy_loss(lp, np.zeros((1, 2), np.float32), adv, mask)  # eps 0.2
  np.testing.assert_allclose(loss, (-1.2 + 0.8) / 2, atol=ATOL)
  np.testing.assert_allclose(metrics["clip_fraction_low"], 0.5, atol=ATOL)
  np.testing.assert_allclose(metrics["clip_fraction_high"], 0.5, atol=ATOL)
  kl = np.mean([r - 1 - math.log(r) for r in (1.5, 0.5)])
  np.testing.assert_allclose(metrics["approx_kl"], kl, atol=ATOL)
  with pytest.raises(ValueError, match="ratio_level"):
    losses.policy_loss(lp, lp, adv, mask, ratio_level="seq")


def test_policy_loss_dual_clip_caps_only_negative_advantages():
  mask = np.ones((1, 3), np.float32)
  lp = np.log(np.array([[4.0, 4.0, 0.9]], np.float32))
  adv = np.array([[0.5, -0.5, 0.25]], np.float32)
  loss, metrics = losses.policy_loss(lp, np.zeros((1, 3), np.float32), adv, mask, dual_clip=1.5)
  # token 0: max(-2, -0.6) = -0.6 (A > 0: no cap); token 1: max(2, 0.6) = 2 capped at 0.75;
  # token 2: -0.225 either way
  np.testing.assert_allclose(loss, (-0.6 + 0.75 - 0.225) / 3, atol=ATOL)
  np.testing.assert_allclose(metrics["dual_clip_fraction"], 1 / 3, atol=ATOL)


def test_policy_loss_clip_metrics_are_strict_at_the_boundaries():
  """A token exactly on a clip bound or the dual-clip cap, or with A = 0, is not counted."""
  mask = np.ones((1, 5), np.float32)
  lp = np.log(np.array([[0.3, 3.0, 0.5, 1.5, 2.0]], np.float32))
  ratio = np.asarray(jnp.exp(jnp.asarray(lp)))[0]  # the float32 ratios policy_loss computes
  adv = np.array([[0.0, 0.0, -1.0, 1.0, -1.0]], np.float32)
  eps_low, eps_high = 1.0 - float(ratio[2]), float(ratio[3]) - 1.0  # tokens 2, 3 on the bounds
  _, metrics = losses.policy_loss(lp, np.zeros((1, 5), np.float32), adv, mask, eps_low=eps_low,
                                  eps_high=eps_high, dual_clip=float(ratio[4]))  # token 4 on cap
  for name in ("clip_fraction", "clip_fraction_low", "clip_fraction_high", "dual_clip_fraction"):
    assert float(metrics[name]) == 0.0, name


def test_value_loss_metrics_and_max_len():
  mask = make_mask()
  vo = rand(53, (B, T))
  v = with_garbage(vo + rand(54, (B, T), 0.5), mask)
  ret = with_garbage(vo + rand(55, (B, T)), mask)
  vo = with_garbage(vo, mask)
  loss, metrics = losses.value_loss(v, vo, ret, mask, clip_eps=0.2,
                                    agg_mode="seq_mean_token_sum_norm", max_len=16)
  want = ref_aggregate(ref_value(v, vo, ret, LENGTHS, 0.2), LENGTHS, "seq_mean_token_sum_norm", 16)
  np.testing.assert_allclose(loss, want, atol=ATOL)
  v64, vo64, r64 = (np.nan_to_num(a).astype(np.float64) for a in (v, vo, ret))
  clipped = (np.clip(v64, vo64 - 0.2, vo64 + 0.2) - r64) ** 2 > (v64 - r64) ** 2
  want = {"value_clip_fraction": clipped, "value_mean": v64, "return_mean": r64,
          "value_mse": (v64 - r64) ** 2}
  for name, per_token in want.items():
    np.testing.assert_allclose(metrics[name], ref_aggregate(per_token, LENGTHS, "token_mean"),
                               atol=ATOL, err_msg=name)


def test_explained_variance_of_small_returns_and_default_kl_kind():
  ret = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)  # var(R) = 0.0125 < 1
  values = np.array([[0.1, 0.25, 0.25, 0.4]], np.float32)  # var(R - V) = 0.00125
  mask = np.ones((1, 4), np.float32)
  np.testing.assert_allclose(losses.explained_variance(values, ret, mask), 0.9, atol=ATOL)
  np.testing.assert_allclose(losses.kl_penalty(values, ret, mask), values - ret, atol=ATOL)  # k1
