"""Two policies on the same rows: paired bootstrap of the difference, win / tie / lose."""

import numpy as np
import pytest

from jaxprof.recsys import metrics


def test_paired_bootstrap_sees_a_consistent_gain_that_unpaired_intervals_miss():
  rng = np.random.default_rng(0)
  difficulty = rng.uniform(0, 1, 200)  # per-row spread much larger than the gain
  a, b = difficulty + 0.02 + rng.normal(0, 0.005, 200), difficulty
  diff, low, high = metrics.paired_bootstrap_ci(a, b)
  assert low > 0 and abs(diff - np.mean(a - b)) < 1e-12 and low < diff < high
  _, a_low, _ = metrics.bootstrap_ci(a)
  _, _, b_high = metrics.bootstrap_ci(b)
  assert a_low < b_high  # the separate intervals overlap: only the paired test resolves it


def test_paired_bootstrap_drops_rows_missing_on_either_side():
  a = np.array([1.0, np.nan, 3.0, 4.0])
  b = np.array([0.0, 1.0, np.nan, 3.0])
  diff, low, high = metrics.paired_bootstrap_ci(a, b, n_boot=200)
  assert diff == 1.0 and low == high == 1.0  # rows 0 and 3 both differ by exactly 1
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.paired_bootstrap_ci(a, b[:3])


def test_win_tie_lose_with_a_margin():
  a = np.array([0.5, 0.5, 0.5, 0.5, np.nan])
  b = np.array([0.2, 0.49, 0.51, 0.9, 0.0])
  assert metrics.win_tie_lose(a, b, margin=0.02) == (0.25, 0.5, 0.25)
  assert metrics.win_tie_lose(a, b, margin=0.0) == (0.5, 0.0, 0.5)
  with pytest.raises(ValueError, match="no row"):
    metrics.win_tie_lose(np.array([np.nan]), np.array([1.0]), 0.0)


def test_relative_gain_is_the_ratio_of_means_with_a_paired_interval():
  a = np.array([0.0, 1.0, 1.0, 0.0, 1.0, np.nan])
  b = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])  # the last row is dropped: a is missing
  gain, low, high = metrics.paired_relative_gain_ci(a, b, n_boot=500)
  assert gain == pytest.approx(3 / 2 - 1) and low <= gain <= high
  assert low >= 0.0  # a >= b on every row, so no resample shows a loss
  same = metrics.paired_relative_gain_ci(b[:5], b[:5], n_boot=100)
  assert same == (0.0, 0.0, 0.0)
  undefined = metrics.paired_relative_gain_ci(np.ones(3), np.zeros(3), n_boot=50)
  assert all(np.isnan(undefined))  # mean(b) = 0 on every draw: no ratio
