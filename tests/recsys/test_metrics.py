"""Metrics against scikit-learn and hand-computed cases."""

import math
import warnings

import jax
import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from jaxprof.recsys import metrics


def test_auc_matches_sklearn_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, size=500)
  scores = np.round(rng.normal(size=500) + labels, 1)  # rounding creates many ties
  assert metrics.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_hand_cases():
  assert metrics.auc([0, 1], [0.1, 0.9]) == 1.0
  assert metrics.auc([0, 1], [0.9, 0.1]) == 0.0
  assert metrics.auc([0, 1, 1], [0.5, 0.5, 0.7]) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="both classes"):
    metrics.auc([1, 1], [0.1, 0.2])


def test_log_loss_matches_sklearn():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, size=300)
  probs = rng.uniform(0.01, 0.99, size=300)
  assert metrics.log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs), rel=1e-9)
  # Clipping keeps a confident mistake finite.
  assert np.isfinite(metrics.log_loss([1, 0], [0.0, 1.0]))


def test_rank_hand_case_with_pessimistic_ties_and_mask():
  scores = np.array([[0.9, 0.5, 0.5, 0.1, 0.7]])
  exclude = np.array([[True, False, False, False, False]])  # item 0 is history
  # Target 2 ties with item 1 -> pessimistic rank: item 4 and item 1 ahead -> 3.
  assert metrics.rank_of_targets(scores, np.array([2]), exclude).tolist() == [3]
  assert metrics.rank_of_targets(scores, np.array([4]), exclude).tolist() == [1]
  # Without the mask, item 0 competes.
  assert metrics.rank_of_targets(scores, np.array([4])).tolist() == [2]
  # All-equal scores give the worst rank.
  flat = np.zeros((1, 5))
  assert metrics.rank_of_targets(flat, np.array([3])).tolist() == [5]


def test_multi_target_metrics_hand_case():
  scores = np.array([[0.1, 0.9, 0.8, 0.7, 0.2], [0.5, 0.4, 0.3, 0.2, 0.1]])
  targets = np.array([[2, 4], [1, -1]])
  ranks = metrics.rank_of_targets(scores, targets)
  assert ranks.tolist() == [[2, 4], [2, 0]]
  recall = metrics.recall_at_k(ranks, 2)
  np.testing.assert_allclose(recall, [0.5, 1.0])
  ndcg = metrics.ndcg_at_k(ranks, 3)
  idcg0 = 1 + 1 / np.log2(3)
  np.testing.assert_allclose(ndcg, [(1 / np.log2(3)) / idcg0, 1 / np.log2(3)], rtol=1e-6)
  np.testing.assert_allclose(metrics.mrr(ranks), [0.5, 0.5])


def test_ndcg_and_recall_match_sklearn_on_masked_catalogue():
  rng = np.random.default_rng(2)
  users, items, k = 30, 40, 10
  scores = rng.normal(size=(users, items))
  exclude = rng.uniform(size=(users, items)) < 0.3
  targets = np.full((users, 3), -1)
  for u in range(users):
    free = np.flatnonzero(~exclude[u])
    n = rng.integers(1, 4)
    targets[u, :n] = rng.choice(free, size=n, replace=False)
  ranks = metrics.rank_of_targets(scores, targets, exclude)
  ours = np.asarray(metrics.ndcg_at_k(ranks, k))
  recall = np.asarray(metrics.recall_at_k(ranks, k))
  for u in range(users):
    keep = ~exclude[u]
    relevance = np.zeros(items)
    relevance[targets[u][targets[u] >= 0]] = 1
    ref = ndcg_score(relevance[keep][None], scores[u][keep][None], k=k)
    assert ours[u] == pytest.approx(ref, abs=1e-6)
    top = np.argsort(-scores[u][keep])[:k]
    ref_recall = relevance[keep][top].sum() / relevance.sum()
    assert recall[u] == pytest.approx(ref_recall)


def test_ranking_metrics_jit_inside_reward_and_means():
  rng = np.random.default_rng(3)
  scores = rng.normal(size=(8, 20)).astype(np.float32)
  targets = rng.integers(0, 20, size=8)

  @jax.jit
  def reward(s, t):
    return metrics.ndcg_at_k(metrics.rank_of_targets(s, t), 10)

  # Independent reference: rank = 1 + items scored above the target; NDCG@10 of one relevant item
  # is 1 / log2(rank + 1) inside the top 10, else 0.
  ranks = 1 + (scores > scores[np.arange(8), targets][:, None]).sum(axis=1)
  want = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)
  np.testing.assert_allclose(reward(scores, targets), want, rtol=1e-6)
  means, per_user = metrics.ranking_metrics(scores, targets, ks=(5, 10))
  assert set(means) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10", "mrr"}
  assert means["mrr"] == pytest.approx(per_user["mrr"].mean())


def test_history_mask():
  mask = metrics.history_mask([[0, 2], [], [1]], 3)
  assert mask.tolist() == [[True, False, True], [False] * 3, [False, True, False]]
  with pytest.raises(ValueError, match="row 1"):
    metrics.history_mask([[0], [3]], 3)


def test_bootstrap_ci_brackets_mean():
  values = np.random.default_rng(4).uniform(size=200)
  mean, low, high = metrics.bootstrap_ci(values, n_boot=500, seed=0)
  assert low < mean < high
  assert mean == pytest.approx(values.mean())
  assert high - low < 0.15
  assert metrics.bootstrap_ci(values, n_boot=500, seed=0) == (mean, low, high)


# --- edge cases found by mutation testing ---------------------------------------------------------


def test_pointwise_metrics_flatten_column_inputs_and_check_shapes():
  labels = np.array([0, 1, 1, 0, 1])
  scores = np.array([0.2, 0.8, 0.4, 0.4, 0.9])
  # Positives 0.8, 0.4, 0.9 against negatives 0.2, 0.4: five wins and one tie of six pairs.
  assert metrics.auc(labels[:, None], scores) == pytest.approx(5.5 / 6)
  assert metrics.auc(labels, scores[:, None]) == pytest.approx(5.5 / 6)
  want = -(math.log(0.8) + math.log(0.75)) / 2
  assert metrics.log_loss(np.array([[1], [0]]), [0.8, 0.25]) == pytest.approx(want, rel=1e-12)
  assert metrics.log_loss([1, 0], np.array([[0.8], [0.25]])) == pytest.approx(want, rel=1e-12)
  with pytest.raises(ValueError, match=r"^auc: labels \(3,\) and scores \(2,\) differ in shape$"):
    metrics.auc([0, 1, 1], [0.1, 0.2])
  with pytest.raises(ValueError, match=r"^log_loss: labels \(3,\) and probs \(2,\) differ in sh"):
    metrics.log_loss([0, 1, 1], [0.1, 0.2])


def test_bootstrap_ci_defaults_against_numpy_resampling():
  """Default 1000 resamples from default_rng(0), percentile interval, float64 on float32 input."""
  values = np.random.default_rng(6).uniform(size=50).astype(np.float32)  # per-user JAX metrics
  with_nan = np.concatenate([values[:20], [np.nan], values[20:]])
  ref = values.astype(np.float64)

  def ref_ci(n_boot, alpha, seed):
    idx = np.random.default_rng(seed).integers(0, ref.size, size=(n_boot, ref.size))
    return np.quantile(ref[idx].mean(axis=1), [alpha / 2, 1 - alpha / 2])

  mean, low, high = metrics.bootstrap_ci(with_nan)
  assert mean == pytest.approx(ref.mean(), rel=1e-12)
  np.testing.assert_allclose([low, high], ref_ci(1000, 0.05, 0), rtol=1e-12)
  np.testing.assert_allclose(metrics.bootstrap_ci(values, n_boot=300, alpha=0.2, seed=7)[1:],
                             ref_ci(300, 0.2, 7), rtol=1e-12)
  assert metrics.bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
  with pytest.raises(ValueError, match=r"^bootstrap_ci: no finite values$"):
    metrics.bootstrap_ci([np.nan, np.nan])


def test_history_mask_is_bool():
  assert metrics.history_mask([[1], []], 2).dtype == bool


def test_per_user_metrics_hand_case_with_rank_one_and_empty_users():
  ranks = np.array([[1, 0, 0], [0, 0, 0], [3, 1, 2], [5, 2, 0]], np.int32)
  g2 = 1 / math.log2(3)
  # k = 2 < 3 targets of user 2: the ideal DCG has only two positions.
  np.testing.assert_allclose(metrics.recall_at_k(ranks, 2), [1.0, 0.0, 2 / 3, 0.5], rtol=1e-6)
  np.testing.assert_allclose(metrics.ndcg_at_k(ranks, 2), [1.0, 0.0, 1.0, g2 / (1 + g2)],
                             rtol=1e-6)
  np.testing.assert_allclose(metrics.ndcg_at_k(ranks, 3), [1.0, 0.0, 1.0, g2 / (1 + g2)],
                             rtol=1e-6)
  np.testing.assert_allclose(metrics.mrr(ranks), [1.0, 0.0, 1.0, 0.5], rtol=1e-6)


def test_ranking_metrics_masks_history_and_drops_users_without_targets():
  scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.4, 0.6, 0.8], [0.3, 0.1, 0.2, 0.0]], np.float32)
  targets = np.array([[1], [-1], [2]])
  exclude = np.zeros((3, 4), bool)
  exclude[0, 0] = True  # without the mask item 0 would rank above user 0's target
  means, per_user = metrics.ranking_metrics(scores, targets, exclude, ks=(1, 2))
  # user 0: rank 1; user 1: no target (dropped); user 2: item 0 (0.3) is ahead -> rank 2
  want = {"recall@1": [1.0, 0.0], "ndcg@1": [1.0, 0.0], "recall@2": [1.0, 1.0],
          "ndcg@2": [1.0, 1 / math.log2(3)], "mrr": [1.0, 0.5]}
  assert set(per_user) == set(want)
  for name, values in want.items():
    np.testing.assert_allclose(per_user[name], values, rtol=1e-6, err_msg=name)
    assert means[name] == pytest.approx(np.mean(values), rel=1e-6), name
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "mean of empty slice" warning
    means, per_user = metrics.ranking_metrics(scores, np.full((3, 1), -1), ks=(2,))
  assert all(math.isnan(v) for v in means.values())
  assert all(v.shape == (0,) for v in per_user.values())


def test_log_loss_of_float32_probs_is_computed_in_float64():
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 2, size=200)
  probs = rng.uniform(0.01, 0.99, size=200).astype(np.float32)  # e.g. a JAX model's output
  p = probs.astype(np.float64)
  want = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  assert metrics.log_loss(labels, probs) == pytest.approx(want, rel=1e-12)


def test_graded_ndcg_matches_sklearn_and_breaks_ties_pessimistically():
  rng = np.random.default_rng(3)
  scores, gains = rng.normal(size=(6, 40)), rng.random((6, 40))
  for k in (None, 10, 3):
    want = [ndcg_score(g[None], s[None], k=k) for s, g in zip(scores, gains, strict=True)]
    np.testing.assert_allclose(metrics.graded_ndcg(scores, gains, k), want, rtol=1e-9)
  flat = metrics.graded_ndcg(np.zeros((1, 3)), np.array([[0.0, 1.0, 0.5]]))  # worst order
  np.testing.assert_allclose(flat, (0.0 + 0.5 / np.log2(3) + 1.0 / 2) / (1.0 + 0.5 / np.log2(3)))
  assert np.isnan(metrics.graded_ndcg(np.ones((1, 3)), np.zeros((1, 3)))[0])
  with pytest.raises(ValueError, match="same"):
    metrics.graded_ndcg(np.ones((2, 3)), np.ones((2, 4)))


def test_log_rank_ends_padding_and_order():
  ranks = np.array([[1, 0], [100, 0], [100, 1], [0, 0]], np.int32)  # 0 = padding
  got = np.asarray(metrics.log_rank(ranks, 100))
  np.testing.assert_allclose(got, [1.0, 0.0, 0.5, 0.0], atol=1e-6)
  # strictly better for every halving of the rank, by the same amount (log scale)
  steps = np.diff(np.asarray(metrics.log_rank(np.array([400, 200, 100, 4, 2]), 1682)))
  assert (steps[[0, 1, 3]] > 0).all()
  np.testing.assert_allclose(steps[0], steps[3], rtol=1e-5)
