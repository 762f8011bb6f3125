"""The reward-model stage as a unit: it learns separable pairs, and save -> load -> score agrees."""

import jax
import numpy as np
import pytest

from configs import girl
from jaxprof import parallel
from jaxprof.trainers import reward_model

GOOD = ["Senior welder, pipes and steel. Excellent match.",
        "Night nurse for the ICU ward. Excellent match.",
        "Data analyst, SQL and dashboards. Excellent match.",
        "Primary school librarian. Excellent match."]
BAD = [g.replace("Excellent match.", "Poor match!") for g in GOOD]


def pairs(n: int) -> list[dict]:
  return [{"prompt": f"CV number {i}: looking for work.", "chosen": GOOD[i % 4],
           "rejected": BAD[(i + 1) % 4]} for i in range(n)]


@pytest.mark.slow
def test_learns_separable_pairs_and_scores_the_same_after_loading(tmp_path):
  config = girl.get_config("tiny")
  rm = config.reward_model
  rm.optim.total_steps, rm.optim.lr, rm.optim.warmup, rm.batch_size = 40, 3e-3, 2, 8
  config.checkpoint.every = 100
  out = reward_model.train(config, tmp_path, pairs(32),
                           {"eval_pairwise_accuracy": pairs(16)[8:]}, "tiny",
                           parallel.make_mesh(data=1))
  assert out["eval_pairwise_accuracy"] > 0.9, out
  model = reward_model.RewardModel(out["reward_model_dir"], config.model, batch_size=8)
  held = pairs(16)[8:]
  chosen = model.score([p["prompt"] for p in held], [p["chosen"] for p in held])
  rejected = model.score([p["prompt"] for p in held], [p["rejected"] for p in held])
  # The loaded model ranks the held-out pairs exactly as the trained state did before saving.
  assert np.mean(chosen > rejected) == pytest.approx(out["eval_pairwise_accuracy"])
  loss = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(loss) == 40


class Preempted(Exception):
  pass


@pytest.mark.slow
def test_preempted_stage_resumes_bit_equal(tmp_path, monkeypatch):
  from jaxprof.trainers import artifacts

  config = girl.get_config("tiny")
  config.reward_model.optim.total_steps, config.checkpoint.every = 6, 2
  mesh = parallel.make_mesh(data=1)
  train = lambda d: reward_model.train(config, d, pairs(16),
                                       {"eval_pairwise_accuracy": pairs(8)}, "tiny", mesh)
  clean = train(tmp_path / "clean")
  real, calls = reward_model._pair_batch, {"n": 0}

  def failing(*args):
    calls["n"] += 1
    if calls["n"] == 5:  # steps 1-4 ran and step 4 is checkpointed
      raise Preempted
    return real(*args)

  monkeypatch.setattr(reward_model, "_pair_batch", failing)
  with pytest.raises(Preempted):
    train(tmp_path / "crash")
  monkeypatch.setattr(reward_model, "_pair_batch", real)
  resumed = train(tmp_path / "crash")
  a, _ = artifacts.load_pytree(clean["reward_model_dir"])
  b, _ = artifacts.load_pytree(resumed["reward_model_dir"])
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert resumed["eval_pairwise_accuracy"] == clean["eval_pairwise_accuracy"]
