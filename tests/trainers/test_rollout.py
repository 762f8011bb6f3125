"""The RL reward path as units: reward values to arrays, columns per group, minibatches, weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.rl import losses
from jaxprof.trainers import rollout


class _Tok:
  """decode_batch only: row i decodes to TEXTS[i]."""

  def __init__(self, texts):
    self.texts = texts

  def decode_batch(self, ids, mask):
    assert ids.shape == mask.shape
    return list(self.texts[:len(ids)])


def _rollout(rows: int, group: int) -> rollout.Rollout:
  n = 4
  return rollout.Rollout(
      prompt_ids=np.zeros((rows, 3), np.int32), prompt_mask=np.ones((rows, 3), bool),
      comp_ids=np.ones((rows, n), np.int32),
      comp_mask=np.arange(n)[None] < np.arange(rows)[:, None] % n + 1,
      logprobs=np.zeros((rows, n), np.float32),
      row_prompt=np.repeat(np.arange(rows // group), group), prompt_group=group)


def test_text_reward_fn_turns_none_and_nan_into_invalid_and_repeats_columns_per_group():
  seen = {}

  def reward(batch):
    seen["batch"] = batch
    return [1.0, None, float("nan"), 4.0]

  texts = ["a", "b", "c", "d"]
  fn = rollout.text_reward_fn(reward, _Tok(texts), ["p0", "p1"], {"target": [10, 20]})
  values, valid, means = fn(_rollout(4, 2))
  np.testing.assert_array_equal(valid, [True, False, False, True])
  np.testing.assert_array_equal(values[valid], [1.0, 4.0])
  batch = seen["batch"]
  assert list(batch.prompts) == ["p0", "p0", "p1", "p1"]
  assert list(batch.columns["target"]) == [10, 10, 20, 20]
  assert list(batch.completions) == texts and batch.group_size == 2
  assert means == {}


def test_weighted_sum_terms_are_logged_as_means_of_their_valid_values():
  from jaxprof.rewards.base import WeightedSum

  terms = WeightedSum({"x": (1.0, lambda b: [1.0, 3.0, None, 5.0]),
                       "y": (0.0, lambda b: [None] * 4)})
  fn = rollout.text_reward_fn(terms, _Tok(list("abcd")), ["p0", "p1"], {})
  values, valid, means = fn(_rollout(4, 2))
  assert means["reward/x"] == pytest.approx(3.0) and np.isnan(means["reward/y"])
  np.testing.assert_array_equal(valid, [True, True, False, True])  # a zero-weight None is ignored


@pytest.mark.parametrize("rows,group,parts", [(12, 3, 2), (16, 4, 4), (8, 1, 8)])
def test_minibatches_are_whole_groups_that_partition_the_rows(rows, group, parts):
  mbs = rollout.minibatches(rows, parts, np.random.default_rng(0), group)
  assert len(mbs) == parts
  flat = np.concatenate(mbs)
  np.testing.assert_array_equal(np.sort(flat), np.arange(rows))  # a partition
  for mb in mbs:
    starts = mb.reshape(-1, group)
    np.testing.assert_array_equal(starts % group, np.tile(np.arange(group), (len(starts), 1)))
    assert (starts[:, 0] // group == starts[:, -1] // group).all()  # one prompt per group
  other = rollout.minibatches(rows, parts, np.random.default_rng(1), group)
  assert rows // group < 3 or any((a != b).any() for a, b in zip(mbs, other, strict=True))
  with pytest.raises(ValueError, match="do not split"):
    rollout.minibatches(rows + group, parts * 10, np.random.default_rng(0), group)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_weights_make_minibatch_losses_add_up_to_the_full_batch_loss(mode):
  """sum_k w_k * aggregate_k / sum_k w_k == aggregate(full batch), which is what gradient
  accumulation over minibatches relies on."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  mask = jnp.asarray(np.arange(6)[None] < rng.integers(0, 7, size=8)[:, None])
  full = losses.aggregate(x, mask, mode, max_len=6)
  parts = [slice(0, 3), slice(3, 5), slice(5, 8)]
  total = sum(rollout.agg_weight(mask[p], mode) * losses.aggregate(x[p], mask[p], mode, 6)
              for p in parts)
  weight = sum(rollout.agg_weight(mask[p], mode) for p in parts)
  np.testing.assert_allclose(float(total / weight), float(full), rtol=1e-6)


def test_rollout_stats_on_known_values():
  ro = _rollout(4, 2)
  stats = rollout.rollout_stats(ro, np.array([1.0, 0.0, 3.0, 5.0]),
                                np.array([True, False, True, True]))
  assert stats["reward/mean"] == pytest.approx(3.0)
  assert stats["reward/std"] == pytest.approx(np.std([1.0, 3.0, 5.0]))
  assert stats["reward/none_fraction"] == pytest.approx(0.25)
  assert stats["rollout/length_mean"] == pytest.approx(2.5) and stats["rollout/length_max"] == 4
  assert stats["perf/tokens"] == 10 + 12
  none = rollout.rollout_stats(ro, np.zeros(4), np.zeros(4, bool))
  assert np.isnan(none["reward/mean"]) and none["reward/none_fraction"] == 1.0
