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


def test_pooled_runs_estimate_every_pair_and_one_run_matches_the_paired_interval():
  rng = np.random.default_rng(1)
  a, b = (rng.uniform(size=300) < p for p in (0.3, 0.2))  # hits of two systems on 300 rows
  a, b = a.astype(float), b.astype(float)
  one = metrics.pooled_paired_ci([(a, b)], relative=True, n_boot=500)
  assert one[0] == pytest.approx(a.mean() / b.mean() - 1)
  assert one == pytest.approx(metrics.pooled_paired_ci([(a, b)], True, resample_runs=True,
                                                       n_boot=500))  # one run: nothing to draw
  diff = metrics.pooled_paired_ci([(a, b), (a[:100], b[:100] + 1)], n_boot=200)[0]
  pairs = np.concatenate([a - b, a[:100] - b[:100] - 1])
  assert diff == pytest.approx(pairs.mean())  # the mean over every (run, row) pair
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.pooled_paired_ci([(a, b[:3])])


def test_resampling_runs_widens_the_interval_when_runs_disagree():
  rng = np.random.default_rng(2)
  base = rng.uniform(size=2000)
  runs = [(base + shift + rng.normal(0, 0.01, 2000), base) for shift in (0.3, -0.1, 0.1)]
  rows_only = metrics.pooled_paired_ci(runs, n_boot=1000)
  both = metrics.pooled_paired_ci(runs, resample_runs=True, n_boot=1000)
  assert rows_only[0] == both[0] == pytest.approx(0.1, abs=1e-3)
  assert rows_only[2] - rows_only[1] < 0.01  # the rows pin the pooled mean down
  assert both[1] < 0.0 and both[2] > 0.2  # the runs' own spread does not


def test_runs_on_the_same_rows_share_each_draw_of_rows():
  rng = np.random.default_rng(3)
  a, b = (rng.uniform(size=400) < p for p in (0.25, 0.2))
  a, b = a.astype(float), b.astype(float)
  one = metrics.pooled_paired_ci([(a, b)], relative=True, n_boot=500)
  copies = [(a, b)] * 3  # three runs that drew the same users: still one set of 400 users
  assert metrics.pooled_paired_ci(copies, True, same_rows=True, n_boot=500) == one
  independent = metrics.pooled_paired_ci(copies, True, n_boot=500)
  assert independent[2] - independent[1] < 0.7 * (one[2] - one[1])  # as if 1,200 users
  with pytest.raises(ValueError, match="first run"):
    metrics.pooled_paired_ci([(a, b), (a[:5], b[:5])], same_rows=True)
