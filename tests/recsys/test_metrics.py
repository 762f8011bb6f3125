"""Metrics against scikit-learn and hand-computed cases."""

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
