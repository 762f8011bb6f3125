"""docs/extending.md holds: a reward and an evaluator added from outside the library, run.

Both are registered here, in the test module; no library file changes. A `:tiny` LangPTune run
(GRPO then eval) uses the reward in RL and the evaluator in the eval stage.
"""

import json

import numpy as np
import pytest

from configs import common, langptune
from jaxprof import evaluation, train
from jaxprof.rewards import registry

CALLS = {"reward": 0}


@registry.register("test_word_count")
def word_count(target: int = 5):
  def reward(batch):
    CALLS["reward"] += batch.size
    return [-abs(len(t.split()) - target) for t in batch.completions]
  return reward


@evaluation.register("test_lengths")
def lengths(ev: evaluation.Context, prompts: int = 2) -> evaluation.Result:
  """Characters per completion of the first held-out prompts, per policy."""
  rows = ev.system.rl_rows("eval")[:prompts]
  table = {}
  for name in ev.policies:
    texts = ev.generate(name, [ev.system.prompt(r) for r in rows])
    table[name] = {"chars": float(np.mean([len(t[0]) for t in texts])), "prompts": len(texts)}
  return evaluation.Result(table)


@pytest.mark.slow
def test_a_reward_and_an_evaluator_from_outside(tmp_path):
  config = langptune.get_config("tiny")
  config.rewards = dict(words=common.reward("test_word_count", 1.0, target=3))
  configured = set(config.eval.evaluators)  # the system's own: held_out, recommenders
  config.eval.evaluators.test_lengths = dict(prompts=3)
  config.rl.total_steps = config.rl.optim.total_steps = 1
  config.mesh.data = 1  # the tests' 8 simulated devices would not divide the tiny batches
  out = train.train_and_evaluate(config, tmp_path)
  assert CALLS["reward"] > 0  # RL and the held-out evaluator both scored with it
  results = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert set(results) == {*configured, "test_lengths"} and "held_out" in configured
  assert results["test_lengths"]["rl"]["prompts"] == 3
  assert "reward/words" in results["held_out"]["rl"]
  assert out["eval"]["results"]["test_lengths"]["start"]["chars"] >= 0
  report = (tmp_path / "eval" / "report.md").read_text()
  assert "## test_lengths" in report and "Characters per completion" in report
