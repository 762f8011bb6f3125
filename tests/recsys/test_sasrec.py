"""SASRec on tiny synthetic sequences: windows, padding, causality, learning a next-item rule."""

import jax
import numpy as np
import pytest

from jaxprof.recsys import metrics, sasrec

TINY = sasrec.SASRecConfig(hidden=16, num_blocks=1, num_heads=2, max_len=8, dropout=0.0,
                           batch_size=16, epochs=40, learning_rate=5e-3)


def test_training_windows_cover_every_step_once():
  inputs, targets = sasrec.training_windows([[0, 1, 2, 3, 4], [5, 6]], max_len=3)
  # Shifted ids (+1); windows from the newest end; left padding with 0.
  assert inputs.tolist() == [[2, 3, 4], [0, 0, 1], [0, 0, 6]]
  assert targets.tolist() == [[3, 4, 5], [0, 0, 2], [0, 0, 7]]
  assert (targets > 0).sum() == 4 + 1
  with pytest.raises(ValueError, match="2 or more"):
    sasrec.training_windows([[1]], max_len=3)


def test_encoder_is_causal_and_ignores_padding():
  params = sasrec.init_sasrec(jax.random.PRNGKey(0), 10, TINY)
  seq = np.array([[0, 0, 3, 4, 5, 6, 7, 8]], np.int32)
  changed = seq.copy()
  changed[0, -1] = 2
  a = sasrec.encode(params, seq, TINY.num_heads)
  b = sasrec.encode(params, changed, TINY.num_heads)
  np.testing.assert_allclose(a[:, :-1], b[:, :-1], atol=1e-5)  # the future does not leak back
  assert np.isfinite(np.asarray(a)).all()
  # score_all reads only the last max_len items of a long history.
  long = list(range(9)) + [1, 2, 3, 4, 5, 6, 7, 8]
  np.testing.assert_allclose(sasrec.score_all(params, [long], TINY),
                             sasrec.score_all(params, [long[-8:]], TINY), atol=1e-5)


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_learns_a_deterministic_next_item_rule(loss):
  num_items = 12
  rng = np.random.default_rng(0)
  # Each user walks the cycle i -> (i + 1) % I from a random start.
  starts = rng.integers(0, num_items, size=60)
  histories = [[(s + t) % num_items for t in range(int(rng.integers(6, 15)))] for s in starts]
  config = sasrec.SASRecConfig(**{**TINY.__dict__, "loss": loss})
  params = sasrec.train_sasrec(histories, num_items, config)
  targets = np.array([(h[-1] + 1) % num_items for h in histories])
  scores = sasrec.score_all(params, histories, config)
  assert scores.shape == (60, num_items)
  recall = metrics.recall_at_k(metrics.rank_of_targets(scores, targets), 1).mean()
  assert recall > 0.9, (loss, recall)


def test_seeded_and_validation_keeps_best():
  histories = [[i % 7, (i + 1) % 7, (i + 2) % 7, (i + 3) % 7] for i in range(20)]
  config = sasrec.SASRecConfig(**{**TINY.__dict__, "epochs": 4, "eval_every": 2})
  p1 = sasrec.train_sasrec(histories, 7, config, valid_targets=[(i + 4) % 7 for i in range(20)])
  p2 = sasrec.train_sasrec(histories, 7, config, valid_targets=[(i + 4) % 7 for i in range(20)])
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  with pytest.raises(ValueError, match="loss"):
    sasrec.train_sasrec(histories, 7, sasrec.SASRecConfig(loss="hinge"))
