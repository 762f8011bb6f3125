"""Non-learned baselines for sequential recommendation over a catalogue of I items.

Each returns a score matrix [U, I] (higher = recommend first) to be ranked with
`metrics.rank_of_targets` and a history mask (`metrics.history_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def item_counts(histories: Sequence[Sequence[int]], num_items: int) -> np.ndarray:
  """[I] float32 number of times each item occurs in the given (training) histories."""
  flat = np.concatenate([np.asarray(h, np.int64).reshape(-1) for h in histories] or [[]])
  flat = flat.astype(np.int64)
  if flat.size and (flat.min() < 0 or flat.max() >= num_items):
    raise ValueError(f"item_counts: item ids must lie in [0, {num_items})")
  return np.bincount(flat, minlength=num_items).astype(np.float32)


def popularity_scores(
    train_histories: Sequence[Sequence[int]], num_items: int, num_users: int | None = None
) -> np.ndarray:
  """Every user gets the training popularity of each item: [U, I] float32.

  Args:
    train_histories: per user the training items (only these are counted: no test leakage).
    num_users: rows of the output (default: len(train_histories)).
  """
  counts = item_counts(train_histories, num_items)
  rows = len(train_histories) if num_users is None else num_users
  return np.broadcast_to(counts, (rows, num_items)).copy()


def history_embedding_scores(
    histories: Sequence[Sequence[int]], item_embeddings: np.ndarray
) -> np.ndarray:
  """Cosine between the mean of a user's L2-normalised history item embeddings and every item.

  Args:
    histories: per user the item ids [L_u] (an empty history scores 0 everywhere).
    item_embeddings: [I, D] text embeddings of the items (e.g. MiniLM of the item text).
  Returns:
    [U, I] float32 cosine scores.
  """
  emb = np.asarray(item_embeddings, np.float32)
  if emb.ndim != 2:
    raise ValueError(f"item_embeddings must be [I, D], got shape {emb.shape}")
  unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  profiles = np.zeros((len(histories), emb.shape[1]), np.float32)
  for u, items in enumerate(histories):
    items = np.asarray(items, np.int64)
    if items.size:
      if items.min() < 0 or items.max() >= emb.shape[0]:
        raise ValueError(f"history row {u} has an item outside [0, {emb.shape[0]})")
      profiles[u] = unit[items].mean(axis=0)
  profiles /= np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
  return profiles @ unit.T
