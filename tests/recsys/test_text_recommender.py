"""The trainable text recommender: starts as the frozen cosine, learns a next-item rule."""

import numpy as np
import pytest

from jaxprof.recsys import metrics, text_recommender

I, D = 40, 16


def _items(seed: int = 0) -> np.ndarray:
  emb = np.random.default_rng(seed).normal(size=(I, D)).astype(np.float32)
  return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_untrained_recommender_ranks_as_the_cosine():
  items = _items()
  x = np.random.default_rng(1).normal(size=(5, D)).astype(np.float32)
  params = text_recommender.init(D, I)
  got = text_recommender.score_all(params, x, items, batch_size=4)  # two calls, one padded
  cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ items.T
  np.testing.assert_allclose(got, 20.0 * cos, rtol=1e-5, atol=1e-5)


def test_next_item_pairs_cover_each_consecutive_pair():
  items = _items()
  pairs = text_recommender.next_item_pairs([[3, 4, 5], [7], [1, 2]], items)
  assert pairs.targets.tolist() == [4, 5, 2]
  np.testing.assert_array_equal(pairs.x, items[[3, 4, 1]])
  with pytest.raises(ValueError, match="2 or more"):
    text_recommender.next_item_pairs([[1]], items)


def test_training_learns_a_rule_the_cosine_cannot_see():
  """Item k is always followed by item k+1: far from k in a random embedding, so the cosine
  ranks it anywhere; trained, it comes first. Validation keeps the best epoch."""
  items = _items()
  histories = [list(range(s, s + 10)) for s in range(I - 10)] * 8
  train = text_recommender.next_item_pairs(histories, items)
  valid = text_recommender.Pairs(items[:I - 1], np.arange(1, I, dtype=np.int32),
                                 np.eye(I, dtype=bool)[:I - 1])  # the input item masked
  config = text_recommender.TextRecConfig(epochs=30, batch_size=64, learning_rate=2e-2)
  untrained = text_recommender.validation_mrr(text_recommender.init(D, I), valid, items)
  params = text_recommender.train(train, items, config, valid)
  trained = text_recommender.validation_mrr(params, valid, items)
  assert untrained < 0.3 < 0.9 < trained, (untrained, trained)
  ranks = metrics.rank_of_targets(text_recommender.score_all(params, valid.x, items),
                                  valid.targets, valid.exclude)
  assert float(np.mean(np.asarray(ranks) == 1)) > 0.8


def test_training_without_validation_returns_the_last_epoch():
  items = _items()
  train = text_recommender.next_item_pairs([list(range(I))] * 4, items)
  config = text_recommender.TextRecConfig(epochs=2, batch_size=32)
  params = text_recommender.train(train, items, config)
  assert float(np.abs(params["A"]).sum()) > 0 and float(np.abs(params["b"]).sum()) > 0
