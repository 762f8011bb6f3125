"""Rule rewards on the completion itself: a quadratic length penalty and required sections.

Both run on the host in O(B N) numpy/regex work; no model is involved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from jaxprof.rewards.base import RewardBatch, RewardFn, Rewards, clean_text, to_rewards


def length_penalty(target_tokens: int = 150, scale: float = 1.0) -> RewardFn:
  """r = -scale * ((n - target) / target)^2, n = completion tokens (sum of completion_mask).

  0 at n = target, symmetric around it (n = target +- d give the same value), -scale at n = 0 and
  n = 2 target. Such a penalty holds generated summaries near a target length (systems/hifi.py:
  without one, the paper saw length grow until training was stopped).

  Invalid text: the penalty reads only the token mask, so it is defined for every completion; an
  empty completion (n = 0) gets -scale.
  """
  if target_tokens <= 0:
    raise ValueError(f"length_penalty: target_tokens={target_tokens} must be positive")
  if scale < 0:
    raise ValueError(f"length_penalty: scale={scale} must be >= 0 (it is a penalty)")

  def reward(batch: RewardBatch) -> Rewards:
    n = np.asarray(batch.completion_mask, bool).sum(axis=1).astype(np.float64)
    r = -scale * ((n - target_tokens) / target_tokens) ** 2
    return to_rewards(r, np.ones(batch.size, bool), None)

  return reward


def _header_pattern(header: str, case_sensitive: bool) -> re.Pattern:
  # A header counts at the start of a line, optionally behind markdown decoration ("## ", "**",
  # "- "), so "**Skills:**" and "## Skills:" both satisfy "Skills:".
  flags = re.MULTILINE | (0 if case_sensitive else re.IGNORECASE)
  return re.compile(r"^[ \t]*(?:[#>*_\-]+[ \t]*)*" + re.escape(header.strip()), flags)


def sections_present(text: str, required_sections: Sequence[str],
                     case_sensitive: bool = False) -> np.ndarray:
  """[S] bool: which required headers start a line of `text`."""
  return np.array([bool(_header_pattern(h, case_sensitive).search(text))
                   for h in required_sections], bool)


def format_reward(required_sections: tuple[str, ...], all_or_nothing: bool = False,
                  case_sensitive: bool = False, on_invalid: float | None = 0.0) -> RewardFn:
  """Fraction of `required_sections` headers present: r = |{s : s starts a line}| / S in [0, 1].

  With `all_or_nothing` r = 1 if every header is present, else 0. A header matches at the start of
  a line, after optional markdown decoration ("## Skills:", "**Skills:**"); case-insensitive unless
  asked. Invalid text gets `on_invalid` (default 0.0, the minimum).
  """
  if not required_sections or not all(isinstance(h, str) and h.strip()
                                      for h in required_sections):
    raise ValueError(f"format_reward: required_sections must be non-empty strings, got "
                     f"{required_sections!r}")
  patterns = [_header_pattern(h, case_sensitive) for h in required_sections]

  def reward(batch: RewardBatch) -> Rewards:
    values = np.zeros(batch.size)
    valid = np.zeros(batch.size, bool)
    for i, raw in enumerate(batch.completions):
      text = clean_text(raw)
      if text is None:
        continue
      found = np.mean([bool(p.search(text)) for p in patterns])
      values[i] = float(found == 1.0) if all_or_nothing else found
      valid[i] = True
    return to_rewards(values, valid, on_invalid)

  return reward
