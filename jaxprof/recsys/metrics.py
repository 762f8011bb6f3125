"""Recommendation metrics: pointwise (AUC, LogLoss) and full-catalogue ranking (Recall, NDCG, MRR).

Ranking metrics work on a whole score matrix `scores: [U, I]` (one row per user, one column per
catalogue item). They are written in `jax.numpy` so that the RL ranking reward can call them inside
`jax.jit` per batch; they also accept numpy arrays.

Tie rule (pessimistic): the rank of a target is 1 + the number of *competitors* whose score is
greater than **or equal to** the target's score. Competitors are all items except the target itself
and the items in `exclude_mask` (the user's history). A model that gives every item the same score
therefore gets the worst possible rank, so a collapsed scorer cannot earn reward through ties. A
target is ranked even when `exclude_mask` covers it (the mask removes competitors only). Other
targets of the same user stay competitors, so with several targets the ranks are positions in one
ranked list.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------ pointwise metrics (numpy)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve; tied scores count one half (as scikit-learn does).

  Args:
    labels: [N] in {0, 1}.
    scores: [N] real-valued, larger means more likely positive.
  Returns:
    AUC in [0, 1]; raises ValueError if only one class is present.
  """
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f"auc: labels {labels.shape} and scores {scores.shape} differ in shape")
  pos = labels > 0.5
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"auc needs both classes; got {n_pos} positives and {n_neg} negatives")
  neg_sorted = np.sort(scores[~pos])
  below = np.searchsorted(neg_sorted, scores[pos], side="left")
  below_or_equal = np.searchsorted(neg_sorted, scores[pos], side="right")
  wins = below.sum() + 0.5 * (below_or_equal - below).sum()
  return float(wins / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy; `probs` are clipped to [eps, 1 - eps].

  Args:
    labels: [N] in {0, 1}.
    probs: [N] predicted P(label = 1).
  """
  labels = np.asarray(labels, dtype=np.float64).reshape(-1)
  probs = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
  if labels.shape != probs.shape:
    raise ValueError(f"log_loss: labels {labels.shape} and probs {probs.shape} differ in shape")
  return float(-np.mean(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs)))


def bootstrap_ci(
    per_user_values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
  """Percentile bootstrap over users of a per-user metric.

  Args:
    per_user_values: [U] one value per user (NaN entries are dropped).
  Returns:
    (mean, low, high): the sample mean and the (alpha/2, 1 - alpha/2) bootstrap quantiles.
  """
  values = np.asarray(per_user_values, dtype=np.float64).reshape(-1)
  values = values[np.isfinite(values)]
  if values.size == 0:
    raise ValueError("bootstrap_ci: no finite values")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, values.size, size=(n_boot, values.size))
  means = values[idx].mean(axis=1)
  low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
  return float(values.mean()), float(low), float(high)


def bootstrap_metric_ci(
    fn, labels: np.ndarray, scores: np.ndarray, n_boot: int = 200, alpha: float = 0.05,
    seed: int = 0
) -> tuple[float, float, float]:
  """Percentile bootstrap of a metric that is not a mean of per-row values (AUC, LogLoss):
  fn(labels, scores) on the rows, then on `n_boot` resamples of the rows (resamples where fn is
  undefined, e.g. one class for AUC, are skipped).

  Returns:
    (fn on all rows, low, high); low and high are nan if no resample was defined.
  """
  labels, scores = np.asarray(labels), np.asarray(scores)
  value = fn(labels, scores)
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(n_boot):
    idx = rng.integers(0, len(labels), len(labels))
    if len(np.unique(labels[idx])) > 1:
      draws.append(fn(labels[idx], scores[idx]))
  if not draws:
    return float(value), float("nan"), float("nan")
  low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
  return float(value), float(low), float(high)


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
  """Percentile bootstrap of mean(a - b) over the rows where both are finite, resampling rows
  (the pairs stay together, so per-row difficulty cancels).

  Args:
    a, b: [N] one value per row for two systems on the same rows.
  Returns:
    (mean difference, low, high).
  """
  a = np.asarray(a, dtype=np.float64).reshape(-1)
  b = np.asarray(b, dtype=np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"paired_bootstrap_ci: a {a.shape} and b {b.shape} differ in shape")
  both = np.isfinite(a) & np.isfinite(b)
  return bootstrap_ci(a[both] - b[both], n_boot, alpha, seed)


def paired_relative_gain_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
  """Percentile bootstrap of mean(a) / mean(b) - 1 over the rows where both are finite,
  resampling rows in pairs (resamples with mean(b) = 0 are skipped).

  Args:
    a, b: [N] one value per row for two systems on the same rows (b the reference).
  Returns:
    (relative gain, low, high); nan when mean(b) is 0 on every draw.
  """
  a = np.asarray(a, dtype=np.float64).reshape(-1)
  b = np.asarray(b, dtype=np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"paired_relative_gain_ci: a {a.shape} and b {b.shape} differ in shape")
  both = np.isfinite(a) & np.isfinite(b)
  a, b = a[both], b[both]
  if a.size == 0:
    raise ValueError("paired_relative_gain_ci: no row where both values are finite")
  idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
  num, den = a[idx].mean(axis=1), b[idx].mean(axis=1)
  draws = num[den > 0] / den[den > 0] - 1.0
  gain = a.mean() / b.mean() - 1.0 if b.mean() > 0 else float("nan")
  if draws.size == 0:
    return float(gain), float("nan"), float("nan")
  low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
  return float(gain), float(low), float(high)


def pooled_paired_ci(
    runs: Sequence[tuple[np.ndarray, np.ndarray]], relative: bool = False,
    resample_runs: bool = False, same_rows: bool = False, n_boot: int = 2000,
    alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
  """Paired comparison pooled over several runs (e.g. seeds), each on its own rows.

  The estimate pools every (run, row) pair: sum(a - b) / rows, or with `relative`
  sum(a) / sum(b) - 1. The percentile bootstrap resamples each run's rows in pairs; with
  `resample_runs` it first draws the runs with replacement (a two-level bootstrap), so the
  interval also covers how much the runs themselves differ, not only which rows were drawn.
  With `same_rows` (every run scored the same rows, e.g. the same users), one draw of rows is
  shared by all runs, so a row's difficulty counts once, not once per run.

  Args:
    runs: [(a, b)], each a pair of [N_r] arrays (two systems on run r's rows); rows where either
      is not finite are dropped (with `same_rows`, where either is not finite in any run).
  Returns:
    (estimate, low, high); low and high are nan when no draw has sum(b) > 0 (relative only).
  """
  pairs = [(np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1))
           for a, b in runs]
  for a, b in pairs:
    if a.shape != b.shape or (same_rows and a.shape != pairs[0][0].shape):
      raise ValueError(f"pooled_paired_ci: a {a.shape} and b {b.shape} differ in shape"
                       + (f" or from the first run's {pairs[0][0].shape}" if same_rows else ""))
  finite = [np.isfinite(a) & np.isfinite(b) for a, b in pairs]
  if same_rows:
    finite = [np.logical_and.reduce(finite)] * len(pairs)
  if not all(f.any() for f in finite):
    raise ValueError("pooled_paired_ci: a run has no row where both values are finite")
  pairs = [(a[f], b[f]) for (a, b), f in zip(pairs, finite, strict=True)]
  rng = np.random.default_rng(seed)
  shared = (rng.integers(0, pairs[0][0].size, size=(n_boot, pairs[0][0].size)) if same_rows
            else None)
  # [R, n_boot] sums of each run's resampled rows; then the runs each draw pools.
  sums = np.zeros((2, len(pairs), n_boot))
  for r, (a, b) in enumerate(pairs):
    idx = shared if same_rows else rng.integers(0, a.size, size=(n_boot, a.size))
    sums[0, r], sums[1, r] = a[idx].sum(1), b[idx].sum(1)
  sizes = np.array([a.size for a, _ in pairs], np.float64)
  chosen = (rng.integers(0, len(pairs), size=(n_boot, len(pairs))) if resample_runs
            else np.broadcast_to(np.arange(len(pairs)), (n_boot, len(pairs))))
  draw = np.arange(n_boot)[:, None]
  num, den = sums[0][chosen, draw].sum(1), sums[1][chosen, draw].sum(1)
  total_a, total_b = sum(a.sum() for a, _ in pairs), sum(b.sum() for _, b in pairs)
  if relative:
    estimate = total_a / total_b - 1.0 if total_b > 0 else float("nan")
    draws = num[den > 0] / den[den > 0] - 1.0
  else:
    estimate = (total_a - total_b) / sizes.sum()
    draws = (num - den) / sizes[chosen].sum(1)
  if draws.size == 0:
    return float(estimate), float("nan"), float("nan")
  low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
  return float(estimate), float(low), float(high)


def win_tie_lose(a: np.ndarray, b: np.ndarray, margin: float) -> tuple[float, float, float]:
  """Fractions of the rows (both finite) where a beats b by more than `margin`, where they are
  within `margin` of each other (a tie), and where b beats a by more than `margin`."""
  a = np.asarray(a, dtype=np.float64).reshape(-1)
  b = np.asarray(b, dtype=np.float64).reshape(-1)
  both = np.isfinite(a) & np.isfinite(b)
  if not both.any():
    raise ValueError("win_tie_lose: no row where both values are finite")
  d = a[both] - b[both]
  win, lose = float(np.mean(d > margin)), float(np.mean(d < -margin))
  return win, 1.0 - win - lose, lose


def graded_ndcg(scores: np.ndarray, gains: np.ndarray, k: int | None = None) -> np.ndarray:
  """[U] NDCG@k of each row's items ranked by `scores`, with graded relevance `gains` (>= 0).

  DCG@k = sum over the top k by score of gain / log2(position + 1); divided by the DCG@k of the
  items sorted by gain. Ties in score are broken pessimistically (lower gain first), so a
  constant scorer gets the worst ordering's value, not an average. nan for a row whose gains are
  all 0. k=None ranks the whole row.

  Args:
    scores: [U, I] float; gains: [U, I] float >= 0 (e.g. a hidden engagement probability).
  """
  scores, gains = np.asarray(scores, np.float64), np.asarray(gains, np.float64)
  if scores.shape != gains.shape or scores.ndim != 2:
    raise ValueError(f"graded_ndcg: scores {scores.shape} and gains {gains.shape} must be the "
                     "same [U, I] shape")
  k = scores.shape[1] if k is None else min(k, scores.shape[1])
  discount = 1.0 / np.log2(np.arange(2, k + 2))
  order = np.lexsort((gains, -scores), axis=1)[:, :k]  # by score, then lower gain first
  dcg = np.sum(np.take_along_axis(gains, order, axis=1) * discount, axis=1)
  idcg = np.sum(-np.sort(-gains, axis=1)[:, :k] * discount, axis=1)
  return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


# ------------------------------------------------------------------ ranking metrics (JAX)


def history_mask(histories: Sequence[Sequence[int]], num_items: int) -> np.ndarray:
  """[U, I] bool, True where item i is in user u's history (to be excluded from ranking)."""
  mask = np.zeros((len(histories), num_items), dtype=bool)
  for u, items in enumerate(histories):
    items = np.asarray(items, dtype=np.int64)
    if items.size and (items.min() < 0 or items.max() >= num_items):
      raise ValueError(f"history_mask: user row {u} has an item outside [0, {num_items})")
    mask[u, items] = True
  return mask


@jax.jit
def rank_of_targets(
    scores: jax.Array, targets: jax.Array, exclude_mask: jax.Array | None = None
) -> jax.Array:
  """1-based rank of each target among the non-excluded catalogue (pessimistic ties).

  Args:
    scores: [U, I] float.
    targets: [U] or [U, K] int item ids; -1 marks padding.
    exclude_mask: [U, I] bool, True = never ranked as a competitor (history). None = no mask.
  Returns:
    ranks: same shape as `targets`, int32; 0 where the target is padding.
  """
  scores = jnp.asarray(scores)
  targets = jnp.asarray(targets)
  squeeze = targets.ndim == 1
  if squeeze:
    targets = targets[:, None]
  num_items = scores.shape[1]
  valid = targets >= 0
  safe = jnp.where(valid, targets, 0)
  target_scores = jnp.take_along_axis(scores, safe, axis=1)  # [U, K]
  competitor = jnp.ones(scores.shape, bool) if exclude_mask is None else ~jnp.asarray(exclude_mask)
  not_self = jnp.arange(num_items)[None, None, :] != safe[:, :, None]  # [U, K, I]
  beats = (scores[:, None, :] >= target_scores[:, :, None]) & competitor[:, None, :] & not_self
  ranks = 1 + beats.sum(axis=-1, dtype=jnp.int32)
  ranks = jnp.where(valid, ranks, 0)
  return ranks[:, 0] if squeeze else ranks


def _as_2d(ranks: jax.Array) -> jax.Array:
  ranks = jnp.asarray(ranks)
  return ranks[:, None] if ranks.ndim == 1 else ranks


@functools.partial(jax.jit, static_argnames="k")
def recall_at_k(ranks: jax.Array, k: int) -> jax.Array:
  """Per-user fraction of (non-padding) targets ranked in the top k.

  Args:
    ranks: [U] or [U, K] from `rank_of_targets` (0 = padding).
  Returns:
    [U] float32; 0 for users without targets.
  """
  ranks = _as_2d(ranks)
  valid = ranks > 0
  hits = (valid & (ranks <= k)).sum(axis=1)
  n = valid.sum(axis=1)
  return jnp.where(n > 0, hits / jnp.maximum(n, 1), 0.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames="k")
def ndcg_at_k(ranks: jax.Array, k: int) -> jax.Array:
  """Per-user NDCG@k with binary relevance: DCG of the hits over the ideal DCG of min(n, k) hits.

  Args:
    ranks: [U] or [U, K] from `rank_of_targets` (0 = padding).
  Returns:
    [U] float32; 0 for users without targets.
  """
  ranks = _as_2d(ranks)
  valid = ranks > 0
  gains = jnp.where(valid & (ranks <= k), 1.0 / jnp.log2(ranks.astype(jnp.float32) + 1.0), 0.0)
  n = valid.sum(axis=1)
  positions = jnp.arange(1, k + 1)
  ideal = jnp.where(positions[None, :] <= n[:, None], 1.0 / jnp.log2(positions + 1.0), 0.0)
  idcg = ideal.sum(axis=1)
  return jnp.where(n > 0, gains.sum(axis=1) / jnp.maximum(idcg, 1e-12), 0.0).astype(jnp.float32)


@jax.jit
def mrr(ranks: jax.Array) -> jax.Array:
  """Per-user reciprocal rank of the best-ranked target ([U] float32; 0 without targets)."""
  ranks = _as_2d(ranks)
  best = jnp.min(jnp.where(ranks > 0, ranks, jnp.iinfo(jnp.int32).max), axis=1)
  return jnp.where(jnp.any(ranks > 0, axis=1), 1.0 / best.astype(jnp.float32), 0.0).astype(
      jnp.float32)


@functools.partial(jax.jit, static_argnames="num_items")
def log_rank(ranks: jax.Array, num_items: int) -> jax.Array:
  """Per-user mean over targets of 1 - ln(rank) / ln(num_items): 1 at rank 1, 0 at rank num_items.

  A dense ranking score: unlike NDCG@k it moves at every rank, and unlike MRR it weighs a move
  from rank 400 to 200 as much as one from 4 to 2 (equal ratios), so a profile that lifts a
  target from the middle of a large catalogue is rewarded too.

  Args:
    ranks: [U] or [U, K] from `rank_of_targets` (0 = padding).
    num_items: the catalogue size (> 1).
  Returns:
    [U] float32; 0 for users without targets.
  """
  ranks = _as_2d(ranks)
  valid = ranks > 0
  score = 1.0 - jnp.log(jnp.maximum(ranks, 1).astype(jnp.float32)) / jnp.log(float(num_items))
  n = valid.sum(axis=1)
  total = jnp.where(valid, score, 0.0).sum(axis=1)
  return jnp.where(n > 0, total / jnp.maximum(n, 1), 0.0).astype(jnp.float32)


def ranking_metrics(
    scores: jax.Array,
    targets: jax.Array,
    exclude_mask: jax.Array | None = None,
    ks: Sequence[int] = (10,),
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """All ranking metrics at once, averaged over users that have at least one target.

  Args:
    scores: [U, I]; targets: [U] or [U, K] (-1 = padding); exclude_mask: [U, I] bool.
  Returns:
    (means, per_user): dicts keyed "recall@k", "ndcg@k", "mrr"; per_user values are [U] numpy
    arrays restricted to users with targets (ready for `bootstrap_ci`).
  """
  ranks = rank_of_targets(scores, targets, exclude_mask)
  has_target = np.asarray(_as_2d(ranks) > 0).any(axis=1)
  per_user: dict[str, np.ndarray] = {}
  for k in ks:
    per_user[f"recall@{k}"] = np.asarray(recall_at_k(ranks, k))[has_target]
    per_user[f"ndcg@{k}"] = np.asarray(ndcg_at_k(ranks, k))[has_target]
  per_user["mrr"] = np.asarray(mrr(ranks))[has_target]
  means = {name: float(v.mean()) if v.size else float("nan") for name, v in per_user.items()}
  return means, per_user
