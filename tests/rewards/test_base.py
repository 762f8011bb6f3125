"""RewardBatch validation, the invalid-text rule, composites and the registry."""

import numpy as np
import pytest

from jaxprof import rewards
from jaxprof.rewards import ColumnError, RewardBatch, clean_text


def make_batch(completions, columns=None, lengths=None):
  b = len(completions)
  lengths = lengths if lengths is not None else [3] * b
  n = max(max(lengths), 1)
  mask = np.arange(n)[None, :] < np.asarray(lengths)[:, None]
  return RewardBatch(["p"] * b, list(completions), np.ones((b, n), np.int32), mask,
                     columns or {})


def test_batch_shape_errors_name_the_field():
  with pytest.raises(ColumnError, match="2 prompts for 3 completions"):
    RewardBatch(["a", "b"], ["x", "y", "z"], np.zeros((3, 2), np.int32), np.zeros((3, 2), bool))
  with pytest.raises(ColumnError, match="completion_mask"):
    RewardBatch(["a"], ["x"], np.zeros((1, 2), np.int32), np.zeros((2, 2), bool))


def test_column_missing_or_wrong_length():
  batch = make_batch(["a", "b"], {"target_items": [1]})
  with pytest.raises(ColumnError, match="no column 'history_items'.*target_items"):
    batch.column("history_items")
  with pytest.raises(ColumnError, match="'target_items' has 1 rows.*2"):
    batch.column("target_items")


def test_from_groups_repeats_rows():
  batch = RewardBatch.from_groups(["p0", "p1"], ["a", "b", "c", "d"], np.zeros((4, 1), np.int32),
                                  np.ones((4, 1), bool), {"pos": [7, 9]}, group_size=2)
  assert batch.prompts == ["p0", "p0", "p1", "p1"]
  assert batch.columns["pos"] == [7, 7, 9, 9]
  with pytest.raises(ColumnError, match="'pos' has 1 rows"):
    RewardBatch.from_groups(["p0", "p1"], ["a"] * 4, np.zeros((4, 1), np.int32),
                            np.ones((4, 1), bool), {"pos": [7]}, group_size=2)


@pytest.mark.parametrize("bad", ["", "   \n", "caf\ufffd", b"\xff\xfe", "x\udc80", None, 3])
def test_invalid_text(bad):
  assert clean_text(bad) is None


def test_valid_text_and_bytes():
  assert clean_text("Skills: Go") == "Skills: Go"
  assert clean_text("Ünïcödé".encode()) == "Ünïcödé"


def _const(values):
  return lambda batch: list(values)


def test_weighted_sum_terms_and_none():
  batch = make_batch(["a", "b", "c"])
  comp = rewards.weighted_sum({"x": (2.0, _const([1.0, None, 3.0])),
                               "y": (0.5, _const([4.0, 1.0, 2.0])),
                               "diag": (0.0, _const([None, None, 7.0]))})
  total, terms = comp.evaluate(batch)
  assert total == [2.0 + 2.0, None, 6.0 + 1.0]  # None in a weighted term -> None; 0-weight ignored
  assert terms["diag"] == [None, None, 7.0] and terms["x"][1] is None
  assert comp(batch) == total
  logs = rewards.summarize(total, terms)
  assert logs["reward/x"] == 2.0 and logs["reward/diag"] == 7.0
  assert logs["reward/valid_fraction"] == pytest.approx(2 / 3)


def test_weighted_sum_checks_lengths():
  comp = rewards.weighted_sum({"x": (1.0, _const([1.0]))})
  with pytest.raises(ValueError, match="'x' returned 1 values for 2"):
    comp(make_batch(["a", "b"]))


def test_registry_builds_and_rejects_unknown():
  batch = make_batch(["Skills: a\nExperience: b", "nothing"], lengths=[150, 75])
  comp = rewards.build_rewards([("length_penalty", 0.1, {"target_tokens": 150}),
                                ("format_reward", 1.0, {"required_sections": ("Skills:",
                                                                              "Experience:")})])
  total, terms = comp.evaluate(batch)
  assert terms["length_penalty"] == [0.0, -0.25]
  assert total == pytest.approx([1.0, -0.025])
  with pytest.raises(KeyError, match="unknown reward 'lenght'.*length_penalty"):
    rewards.make_reward("lenght")
  with pytest.raises(KeyError, match="resource '@encoder' not provided"):
    rewards.make_reward("retrieval_ranking", encoder="@encoder", item_texts=["a"])
  with pytest.raises(TypeError, match="reward 'length_penalty'"):
    rewards.make_reward("length_penalty", target=3)
  with pytest.raises(ValueError, match="appears twice"):
    rewards.build_rewards([("length_penalty", 1, {}), ("length_penalty", 1, {})])


def test_bucket_sizes():
  from jaxprof.rewards.base import bucket
  assert [bucket(n) for n in (1, 8, 9, 64, 65, 130)] == [8, 8, 16, 64, 128, 192]
