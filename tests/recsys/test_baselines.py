"""Popularity and history-embedding baselines, checked by hand and with the ranking metrics."""

import numpy as np
import pytest

from jaxprof.recsys import baselines, metrics


def test_popularity_counts_only_training_histories():
  scores = baselines.popularity_scores([[0, 1], [1, 2], [1]], num_items=4)
  assert scores.shape == (3, 4)
  np.testing.assert_array_equal(scores[0], [1, 3, 1, 0])
  np.testing.assert_array_equal(scores[2], scores[0])
  with pytest.raises(ValueError, match=r"\[0, 4\)"):
    baselines.popularity_scores([[4]], num_items=4)


def test_history_embedding_is_cosine_to_mean_profile():
  emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
  scores = baselines.history_embedding_scores([[0, 1], []], emb)
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  profile = unit[[0, 1]].mean(0)
  expected = unit @ profile / np.linalg.norm(profile)
  np.testing.assert_allclose(scores[0], expected, rtol=1e-6)
  np.testing.assert_array_equal(scores[1], 0.0)
  assert np.argmax(scores[0]) == 2  # the item between the two history items


def test_masked_evaluation_of_a_baseline():
  # With history masked, the popular item already seen is skipped and the next one is ranked 1.
  train = [[0], [0, 1], [0, 1, 2]]
  scores = baselines.popularity_scores(train, num_items=4)
  mask = metrics.history_mask(train, 4)
  ranks = metrics.rank_of_targets(scores, np.array([1, 2, 3]), mask)
  assert ranks.tolist() == [1, 1, 1]
