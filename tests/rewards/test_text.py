"""Length penalty and format reward: hand-checked values."""

import numpy as np
import pytest

from jaxprof.rewards import RewardBatch, format_reward, length_penalty


def batch_of_lengths(lengths, texts=None):
  n = max(lengths) + 1
  mask = np.arange(n)[None, :] < np.asarray(lengths)[:, None]
  texts = texts or ["x"] * len(lengths)
  return RewardBatch(["p"] * len(lengths), texts, np.ones(mask.shape, np.int32), mask)


def test_length_penalty_zero_at_target_and_symmetric():
  fn = length_penalty(target_tokens=150, scale=2.0)
  r = fn(batch_of_lengths([150, 100, 200, 0, 300, 75]))
  assert r[0] == 0.0
  assert r[1] == r[2] == pytest.approx(-2.0 * (50 / 150) ** 2)
  assert r[3] == r[4] == -2.0  # empty completion: -scale
  assert r[5] == pytest.approx(-0.5)


def test_length_penalty_rejects_bad_args():
  with pytest.raises(ValueError, match="target_tokens"):
    length_penalty(0)


def test_format_reward_counts_sections():
  texts = ["Skills: Python\nExperience: 5 years\nLocation: Berlin",
           "## Skills: Python\nno experience section",
           "**skills:** Go\n- Experience: none",
           "Mentions Skills: inline only",
           "",
           "bad \ufffd decode Skills:"]
  batch = batch_of_lengths([3] * len(texts), texts)
  frac = format_reward(("Skills:", "Experience:", "Location:"))(batch)
  assert frac == pytest.approx([1.0, 1 / 3, 2 / 3, 0.0, 0.0, 0.0])
  strict = format_reward(("Skills:", "Experience:"), all_or_nothing=True)(batch)
  assert strict == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
  case = format_reward(("Skills:",), case_sensitive=True, on_invalid=None)(batch)
  assert case == [1.0, 1.0, 0.0, 0.0, None, None]
