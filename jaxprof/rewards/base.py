"""The one reward signature, batch validation, and weighted composites.

A reward is any callable `reward(batch: RewardBatch) -> list[float | None]`: one value per
completion, in batch order. `None` means "no reward for this completion" and is ignored by the
advantage estimators (`jaxprof.rl.advantages.rewards_to_arrays` turns the list into values + a
validity mask). Rewards never return NaN.

Invalid completions. A completion is *invalid text* when it is not a `str` that round-trips through
UTF-8, contains the replacement character U+FFFD (left by a lossy decode of bad bytes), or is empty
after stripping whitespace; `bytes` are decoded strictly first. Every reward takes an `on_invalid`
argument, the value such a completion gets without ever reaching a jitted model. The defaults are
documented per reward: rule rewards give their minimum, model rewards give None.

Columns. `RewardBatch.columns[name]` holds one entry per completion (the trainer repeats each
prompt's row G times for G samples). `batch.column(name)` checks presence and length; rewards check
each entry and raise errors that name the column and the row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Rewards = list[float | None]
RewardFn = Callable[["RewardBatch"], Rewards]


class ColumnError(ValueError):
  """A reward's input column is missing, has the wrong length, or holds a bad entry."""


@dataclasses.dataclass(frozen=True, eq=False)
class RewardBatch:
  """Everything a reward may look at, for B completions.

  Attributes:
    prompts: B prompt strings (repeated per completion for grouped sampling).
    completions: B decoded completion strings.
    completion_ids: [B, N] int32 completion token ids (policy tokenizer).
    completion_mask: [B, N] bool, True at real completion tokens.
    columns: data set columns, name -> sequence of B entries.
    group_size: rows come in contiguous groups of this many completions of one prompt; a model
      reward may then read each prompt once per group (1: every row on its own).
  """
  prompts: Sequence[str]
  completions: Sequence[str]
  completion_ids: np.ndarray
  completion_mask: np.ndarray
  columns: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
  group_size: int = 1

  def __post_init__(self):
    b = len(self.completions)
    if len(self.prompts) != b:
      raise ColumnError(f"RewardBatch: {len(self.prompts)} prompts for {b} completions")
    if self.group_size < 1 or b % self.group_size:
      raise ColumnError(f"RewardBatch: {b} completions are not whole groups of "
                        f"group_size={self.group_size}")
    for name in ("completion_ids", "completion_mask"):
      arr = np.asarray(getattr(self, name))
      if arr.ndim != 2 or arr.shape[0] != b:
        raise ColumnError(f"RewardBatch.{name} has shape {arr.shape}, expected [{b}, N]")
    if np.shape(self.completion_ids) != np.shape(self.completion_mask):
      raise ColumnError(f"RewardBatch: completion_ids {np.shape(self.completion_ids)} and "
                        f"completion_mask {np.shape(self.completion_mask)} differ in shape")

  @property
  def size(self) -> int:
    return len(self.completions)

  def column(self, name: str, reward: str = "reward") -> Sequence[Any]:
    """The column `name` (B entries); raises ColumnError naming it if absent or mis-sized."""
    if name not in self.columns:
      raise ColumnError(f"{reward}: RewardBatch.columns has no column {name!r} "
                        f"(present: {sorted(self.columns)})")
    col = self.columns[name]
    if len(col) != self.size:
      raise ColumnError(f"{reward}: column {name!r} has {len(col)} rows, expected one per "
                        f"completion ({self.size})")
    return col

  @classmethod
  def from_groups(cls, prompts: Sequence[str], completions: Sequence[str],
                  completion_ids: np.ndarray, completion_mask: np.ndarray,
                  columns: Mapping[str, Sequence[Any]], group_size: int) -> RewardBatch:
    """A batch of P prompts x G completions (groups contiguous) from per-prompt rows.

    `prompts` and every column hold P entries; they are repeated G times each.
    """
    for name, col in columns.items():
      if len(col) != len(prompts):
        raise ColumnError(f"column {name!r} has {len(col)} rows, expected one per prompt "
                          f"({len(prompts)})")
    rep = lambda xs: [x for x in xs for _ in range(group_size)]
    return cls(rep(prompts), list(completions), np.asarray(completion_ids),
               np.asarray(completion_mask), {k: rep(v) for k, v in columns.items()}, group_size)


def texts_batch(texts: Sequence[str], columns: Mapping[str, Sequence[Any]]) -> RewardBatch:
  """A RewardBatch of finished texts with no prompt and no token ids (for truth metrics that
  score text by the same functions rewards use)."""
  n = len(texts)
  return RewardBatch([""] * n, list(texts), np.zeros((n, 1), np.int32), np.ones((n, 1), bool),
                     dict(columns))


def nanmean(values: Rewards) -> float:
  """Mean of the non-None values (nan if there are none)."""
  kept = [float(v) for v in values if v is not None]
  return float(np.mean(kept)) if kept else float("nan")


def clean_text(text: Any) -> str | None:
  """The completion as a str, or None when it is invalid text (see the module docstring)."""
  if isinstance(text, bytes | bytearray):
    try:
      text = bytes(text).decode("utf-8")
    except UnicodeDecodeError:
      return None
  if not isinstance(text, str) or "\ufffd" in text or not text.strip():
    return None
  try:
    text.encode("utf-8")  # lone surrogates (e.g. from errors="surrogateescape") fail here
  except UnicodeEncodeError:
    return None
  return text


def valid_texts(texts: Sequence[Any]) -> tuple[list[str], np.ndarray]:
  """(texts with invalid ones replaced by " ", valid [B] bool) so a model can run on all rows."""
  cleaned = [clean_text(t) for t in texts]
  valid = np.array([c is not None for c in cleaned], bool)
  return [c if c is not None else " " for c in cleaned], valid


def to_rewards(values: np.ndarray, valid: np.ndarray, on_invalid: float | None) -> Rewards:
  """[B] values + [B] valid -> list with `on_invalid` where not valid (never NaN)."""
  values = np.asarray(values, np.float64)
  out: Rewards = []
  for i, (v, ok) in enumerate(zip(values, valid, strict=True)):
    if ok and not np.isfinite(v):
      raise FloatingPointError(f"reward for completion {i} is {v}")
    out.append(float(v) if ok else (None if on_invalid is None else float(on_invalid)))
  return out


def int_entries(col: Sequence[Any], name: str, num_items: int, reward: str) -> list[np.ndarray]:
  """Each row of an item-index column as int64 [k] (a scalar becomes [1]), range-checked."""
  rows = []
  for r, entry in enumerate(col):
    arr = np.atleast_1d(np.asarray(entry if entry is not None else [], dtype=object))
    try:
      arr = arr.astype(np.int64)
    except (TypeError, ValueError) as e:
      raise ColumnError(f"{reward}: column {name!r} row {r}: {entry!r} is not item indices") from e
    if arr.ndim != 1:
      raise ColumnError(f"{reward}: column {name!r} row {r}: expected a list of item indices")
    if arr.size and (arr.min() < 0 or arr.max() >= num_items):
      raise ColumnError(f"{reward}: column {name!r} row {r}: item index outside "
                        f"[0, {num_items}): {arr.tolist()}")
    rows.append(arr)
  return rows


def bucket(n: int, minimum: int = 8, step: int = 64) -> int:
  """A static size >= n so jit compiles a few shapes only: the next power of two >= minimum up to
  `step`, then the next multiple of `step` (65 rows cost 128, 130 rows cost 192)."""
  size = minimum
  while size < n and size < step:
    size *= 2
  return size if size >= n else -(-n // step) * step


# ------------------------------------------------------------------------------ composites


@dataclasses.dataclass(frozen=True)
class WeightedSum:
  """total_i = sum_k w_k r_k,i over terms k with w_k != 0.

  A None in any term with nonzero weight makes the total None for that completion (the row cannot
  be scored fairly without it). Zero-weight terms are still computed, so they can be logged as
  diagnostics, and their None values never affect the total.
  """
  terms: Mapping[str, tuple[float, RewardFn]]

  def __post_init__(self):
    for name, term in self.terms.items():
      if not (isinstance(term, tuple) and len(term) == 2 and callable(term[1])):
        raise TypeError(f"weighted_sum: term {name!r} must be (weight, reward_fn), got {term!r}")

  def evaluate(self, batch: RewardBatch) -> tuple[Rewards, dict[str, Rewards]]:
    """(total [B], {name: per-term rewards [B]})."""
    per_term: dict[str, Rewards] = {}
    for name, (_, fn) in self.terms.items():
      values = list(fn(batch))
      if len(values) != batch.size:
        raise ValueError(f"reward {name!r} returned {len(values)} values for {batch.size} "
                         "completions")
      per_term[name] = values
    total: Rewards = []
    for i in range(batch.size):
      acc: float | None = 0.0
      for name, (weight, _) in self.terms.items():
        if weight == 0:
          continue
        v = per_term[name][i]
        if v is None:
          acc = None
          break
        acc += weight * v
      total.append(acc)
    return total, per_term

  def __call__(self, batch: RewardBatch) -> Rewards:
    return self.evaluate(batch)[0]


def weighted_sum(terms: Mapping[str, tuple[float, RewardFn]]) -> WeightedSum:
  """A composite reward; `.evaluate(batch)` also returns each term for `reward/<name>` logging."""
  return WeightedSum(dict(terms))


def summarize(total: Rewards, per_term: Mapping[str, Rewards]) -> dict[str, float]:
  """Means over non-None values: {"reward/total": ..., "reward/<name>": ...} (NaN if all None)."""
  def mean(xs: Rewards) -> float:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else float("nan")
  out = {"reward/total": mean(total)}
  out |= {f"reward/{name}": mean(v) for name, v in per_term.items()}
  out["reward/valid_fraction"] = float(np.mean([x is not None for x in total])) if total else 0.0
  return out
