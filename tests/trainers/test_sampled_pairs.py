"""Reward-model pairs from the policy's own samples: which pairs the labels make."""

import numpy as np

from jaxprof.trainers import sampled_pairs


def test_pairs_are_label_ordered_within_a_prompt_beyond_the_margin():
  prompts = ["p", "q"]
  groups = [["a", "b", "c"], ["x", "x", "y"]]
  labels = np.array([[0.50, 0.51, 0.90], [0.2, 0.9, 0.1]])
  pairs = sampled_pairs.pairs_from_labels(prompts, groups, labels, margin=0.02)
  got = [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
  # (a, b) differ by 0.01 <= margin: no pair. (x, x) are the same text: no pair.
  assert got == [("p", "c", "a"), ("p", "c", "b"), ("q", "x", "y"), ("q", "x", "y")]


def test_no_pair_crosses_prompts():
  pairs = sampled_pairs.pairs_from_labels(["p", "q"], [["a"], ["b"]], np.array([[0.0], [1.0]]),
                                          margin=0.0)
  assert pairs == []
