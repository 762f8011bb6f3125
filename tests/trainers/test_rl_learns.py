"""RL learns: GRPO and PPO raise a verifiable toy reward by a clear margin in a fixed budget."""

import numpy as np
import pytest

from jaxprof.trainers import grpo
from tests.trainers import toy


def mean_reward_of_first_and_last(tmp_path, run):
  rewards = [float(line.split('"reward/mean": ')[1].split(",")[0])
             for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  return np.mean(rewards[:3]), np.mean(rewards[-3:])


def test_grpo_raises_reward(tmp_path):
  spec, params, axes, mesh = toy.setup()
  config = toy.config("grpo", steps=30)
  grpo.train(config, tmp_path, toy.start(spec, params, axes), toy.prompt_batch, mesh)
  start, end = mean_reward_of_first_and_last(tmp_path, None)
  print(f"GRPO toy reward: start {start:.3f} -> end {end:.3f}")
  assert end > start + 0.3, (start, end)


@pytest.mark.parametrize("advantage", ["gae", "sequence"])
def test_ppo_raises_reward(tmp_path, advantage):
  import jax

  from jaxprof.models import heads
  from jaxprof.trainers import ppo

  spec, params, axes, mesh = toy.setup()
  config = toy.config("ppo", steps=30)
  config.rollout.group_size = 4
  if advantage == "sequence":  # the paper-faithful variant configs/girl.py:paper selects
    config.ppo.advantage, config.rl.kl_estimator = "sequence", "k3_inv"
    config.rl.agg_mode, config.ppo.whiten_advantages = "seq_mean_token_mean", False
  backbone, critic_cfg = heads.truncate_layers(params, toy.CFG, 1)
  critic = {"backbone": backbone, "head": heads.init_head(jax.random.key(3), toy.CFG.hidden_size)}
  ppo.train(config, tmp_path, toy.start(spec, params, axes), ppo.Critic(critic_cfg, critic),
            toy.prompt_batch, mesh)
  start, end = mean_reward_of_first_and_last(tmp_path, None)
  print(f"PPO ({advantage}) toy reward: start {start:.3f} -> end {end:.3f}")
  assert end > start + 0.3, (start, end)
