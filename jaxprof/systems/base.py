"""The interface every paper's system implements, and the defaults most of them share.

A system reads its TFDS build (array_record, built once from the config's seed and sizes) and
hands the stages plain Python rows. Prompts are chat messages; the stage formats them with the
policy's own chat template. `truth` is the system's independent measure of a generated text (an
oracle, held-out ranking, future engagement), so RL gains can be told apart from reward gains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprof import config as config_lib
from jaxprof.data import loader
from jaxprof.rewards import registry
from jaxprof.rewards.base import WeightedSum

Row = dict[str, Any]


class System:
  """Base system: subclasses say which splits and columns mean what.

  Attributes:
    columns: the row fields rewards may read (`RewardBatch.columns`).
    rl_split, eval_split: the splits RL prompts and held-out evaluation prompts come from.
  """

  columns: tuple[str, ...] = ()
  rl_split, eval_split = "train", "test"

  def __init__(self, config):
    self.config = config

  def rows(self, split: str, limit: int | None = None) -> list[Row]:
    """Decoded rows of one split of the config's data set (the first `limit`, if given)."""
    data = self.config.data
    source = loader.load(data.name, split, data_dir=data.data_dir or None, seed=data.seed,
                         **dict(data.sizes))
    n = len(source) if not limit else min(limit, len(source))
    return [loader.decode(source[i]) for i in range(n)]

  def sft_examples(self, part: str) -> list[Row]:
    """[{"prompt", "target"}] for part "train" or "eval"."""
    raise NotImplementedError(f"system {self.config.system!r} has no SFT examples")

  def reward_pairs(self, part: str) -> list[Row]:
    """[{"prompt", "chosen", "rejected"}] for part "train" or "eval"."""
    raise NotImplementedError(f"system {self.config.system!r} has no reward-model pairs")

  def prompt(self, row: Row) -> list[dict[str, str]]:
    """The chat messages that ask the policy for this row's text."""
    raise NotImplementedError

  def rl_rows(self, part: str) -> list[Row]:
    """Rows for RL ("train") or held-out evaluation ("eval", config.eval.num_examples of them)."""
    split = self.rl_split if part == "train" else self.eval_split
    limit = None if part == "train" else self.config.eval.num_examples
    return self.rows(split, limit)

  def resources(self, inputs: Mapping[str, Mapping]) -> dict[str, Any]:
    """Objects "@name" reward arguments refer to; `inputs` are earlier stages' outputs."""
    del inputs
    return {}

  def reward(self, inputs: Mapping[str, Mapping]) -> WeightedSum:
    """The weighted reward of config.rewards, its "@name" arguments from `resources`."""
    spec = [(term.name, term.weight, dict(term.kwargs), log_name)
            for log_name, term in self.config.rewards.items()]
    return registry.build_rewards(spec, self.resources(inputs))

  def reward_rows(self, part: str) -> list[Row]:
    """Rows whose prompts the start policy samples for reward-model pairs
    (`reward_model.sampled`), part "train" or "eval" (disjoint prompts)."""
    raise config_lib.ConfigError(f"system {self.config.system!r} has no rows for sampled "
                                 "reward-model pairs; set --config.reward_model.sampled.prompts=0")

  def label_texts(self, rows: Sequence[Row], texts: Sequence[str]) -> np.ndarray:
    """[N] the annotator's score of each generated text for its row (higher is preferred): the
    labels of sampled reward-model pairs, the analogue of human preference labels."""
    raise config_lib.ConfigError(f"system {self.config.system!r} cannot label sampled "
                                 "reward-model pairs; set --config.reward_model.sampled.prompts=0")

  def truth_rows(self, rows: Sequence[Row], texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{"truth/<metric>": [N] float64, one value per row (nan where undefined)} of generated
    `texts` for `rows`, from what no reward sees. Per row, so that policies can be compared
    row by row (paired bootstrap, win/tie/lose)."""
    del rows, texts
    return {}

  def truth_views(self, rows: Sequence[Row], texts: Sequence[str]
                  ) -> dict[str, dict[str, np.ndarray]]:
    """{view label: {metric: [N] float64}}: the truth of `texts` under each way the system's
    evaluation scores them (e.g. another encoder); "" is `truth_rows` without its "truth/"
    prefix. Runs' saved texts are re-scored through it (`jaxprof.seeds`)."""
    return {"": {k.removeprefix("truth/"): v for k, v in self.truth_rows(rows, texts).items()}}

  def truth(self, rows: Sequence[Row], texts: Sequence[str]) -> dict[str, float]:
    """{"truth/<metric>": mean over the rows where it is defined (nan if none)}."""
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            for k, v in self.truth_rows(rows, texts).items()}


def per_row(values) -> np.ndarray:
  """Reward-style values (None where undefined) -> [N] float64 with nan."""
  return np.array([np.nan if v is None else float(v) for v in values], np.float64)
