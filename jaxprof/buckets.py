"""Pay for real tokens only: each batch is padded to its own longest row, rounded up to a bucket.

Config maxima (`max_prompt_len`, `max_target_len`, `max_new_tokens`) are truncation limits, never
padding widths. A batch whose longest prompt has 171 tokens is padded to 192, not to 224; a
rollout whose completions all stopped by token 40 is trained on 48 completion positions, not 64.
Widths come from a short geometric ladder (each step 1.33-1.5x the last), so a stage compiles a
handful of shapes, and `ShapeLog` counts and logs them.
"""

from __future__ import annotations

from absl import logging

# 16, 24, 32, 48, 64, 96, 128, 192, ...: at most 50% padding on a row as long as the bucket's
# predecessor + 1, typically 15-20%.
_LADDER = tuple(sorted({m * 2**e for e in range(3, 16) for m in (2, 3)}))


def width(longest: int, limit: int | None = None) -> int:
  """The padded width for a batch whose longest row has `longest` tokens.

  The smallest ladder width >= longest, capped at `limit` (the truncation limit, itself always an
  allowed width). Never below 1.
  """
  longest = max(int(longest), 1)
  if limit is not None and longest >= limit:
    return int(limit)
  w = next(b for b in _LADDER if b >= longest)
  return min(w, int(limit)) if limit is not None else w


class ShapeLog:
  """Counts the distinct batch shapes a stage compiled for, logging each new one.

    shapes = ShapeLog("sft")
    shapes(prompt=192, target=128)   # logs "sft: new batch shape prompt=192 target=128 (1 so far)"
    shapes.count                     # -> 1
  """

  def __init__(self, stage: str):
    self.stage = stage
    self._seen: set[tuple] = set()

  def __call__(self, **dims: int) -> None:
    key = tuple(sorted(dims.items()))
    if key not in self._seen:
      self._seen.add(key)
      logging.info("%s: new batch shape %s (%d so far)", self.stage,
                   " ".join(f"{k}={v}" for k, v in dims.items()), len(self._seen))

  @property
  def count(self) -> int:
    return len(self._seen)
