"""GRPO and PPO resume exactly: a run preempted mid-way and restarted ends bit-equal to one that
never stopped (the loop restores the last checkpoint; batches and keys are functions of the step).
"""

import json

import jax
import numpy as np
import pytest

from jaxprof.models import heads
from jaxprof.trainers import grpo, ppo
from tests.trainers import toy


class Preempted(Exception):
  pass


def preempt_at(step_to_fail: int):
  def prompt_batch(step):
    if step == step_to_fail:
      raise Preempted(f"preempted before step {step}")
    return toy.prompt_batch(step)
  return prompt_batch


def params_of(state):
  return jax.device_get(state["policy"].params if isinstance(state, dict) else state.params)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_preempted_run_resumes_bit_equal(tmp_path, algo):
  spec, params, axes, mesh = toy.setup()
  config = toy.config(algo, steps=6)
  config.checkpoint.every = 2
  start = toy.start(spec, params, axes)

  def train(workdir, prompt_batch):
    if algo == "grpo":
      return grpo.train(config, workdir, start, prompt_batch, mesh)
    backbone, critic_cfg = heads.truncate_layers(params, toy.CFG, 1)
    critic = {"backbone": backbone, "head": heads.init_head(jax.random.key(3), 32)}
    return ppo.train(config, workdir, start, ppo.Critic(critic_cfg, critic), prompt_batch, mesh)

  clean, _ = train(tmp_path / "clean", toy.prompt_batch)
  with pytest.raises(Preempted):
    train(tmp_path / "crash", preempt_at(5))  # steps 1-5 ran; the last checkpoint is step 4
  resumed, _ = train(tmp_path / "crash", toy.prompt_batch)
  for a, b in zip(jax.tree.leaves(params_of(resumed)), jax.tree.leaves(params_of(clean)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(params_of(clean)), jax.tree.leaves(params),
                              strict=True))
  assert moved > 0  # the runs trained
  rows = (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()
  # Step 5's first row is dropped on resume (it came after the checkpoint): one row per step.
  assert [json.loads(r)["step"] for r in rows] == list(range(1, 7))
