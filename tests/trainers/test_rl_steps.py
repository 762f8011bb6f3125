"""RL correctness over whole PPO and GRPO steps: one PPO step's KL -> token rewards -> GAE ->
whitening -> adaptive-KL chain against float64 numpy (references in rl_refs.py), and a
reference policy that stays bitwise frozen through runs."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common as config_common
from jaxprof import parallel
from jaxprof.models import causal_lm, heads
from jaxprof.rl import advantages as adv_lib
from jaxprof.rl import kl_control, losses
from jaxprof.trainers import grpo, policy, ppo
from tests.trainers import toy
from tests.trainers.rl_refs import (
  max_abs_diff,
  np_adaptive_kl,
  np_ppo_chain,
  reference_logprobs,
  rl_config,
)

# ------------------------------------------------------------------ 3. one PPO step's chain


def ppo_chain_inputs(seed=3):
  """Right-padded rows of different lengths; garbage on padding that must never leak."""
  rng = np.random.default_rng(seed)
  lengths = [5, 2, 8, 1, 6, 3]
  b, t = len(lengths), 8
  mask = np.arange(t)[None] < np.asarray(lengths)[:, None]
  logp = rng.normal(-2.0, 0.7, (b, t))
  ref_logp = logp - rng.normal(0.1, 0.4, (b, t))  # mostly log pi > log ref: positive KL
  values = rng.normal(0.0, 0.5, (b, t))
  scores = rng.normal(0.0, 1.0, b)
  logp[~mask], ref_logp[~mask], values[~mask] = 40.0, -40.0, 1e3
  f32 = lambda x: np.asarray(x, np.float32)
  return f32(logp), f32(ref_logp), f32(values), mask, f32(scores)


@pytest.mark.parametrize("kl_target", [2.0, 0.01, 0.0])  # unclipped, clipped, fixed
def test_one_ppo_step_chain_matches_float64(kl_target):
  """kl_penalty -> token rewards -> GAE -> whitening -> KL controller, composed as ppo.one_step."""
  logp, ref_logp, values, mask, scores = ppo_chain_inputs()
  config = rl_config("ppo", kl_coef=0.1)
  rl, cfg = config.rl, config.ppo
  cfg.gamma, cfg.lam, cfg.kl_target, cfg.kl_horizon = 0.97, 0.9, kl_target, 50
  # As jaxprof/trainers/ppo.py `one_step` composes them (logp: the sampler's log-probs).
  kl_ctl = kl_control.make_kl_controller(rl.kl_coef, cfg.kl_target or None, cfg.kl_horizon)
  coef = jnp.asarray(rl.kl_coef, jnp.float32)
  kl = losses.kl_penalty(jnp.asarray(logp), ref_logp, jnp.asarray(mask), kind=rl.kl_estimator)
  token_rewards = adv_lib.sequence_reward_to_token_rewards(jnp.asarray(scores), jnp.asarray(mask),
                                                           kl, coef)
  advantages, returns = adv_lib.gae(token_rewards, values, jnp.asarray(mask), gamma=cfg.gamma,
                                    lam=cfg.lam)
  whitened = adv_lib.whiten(advantages, jnp.asarray(mask))
  seq_kl = jnp.sum(kl, axis=-1).mean()
  new_coef = kl_ctl.update(coef, seq_kl, len(scores))

  np_kl, np_rewards, np_adv, np_ret, np_seq_kl = np_ppo_chain(
      logp, ref_logp, values, mask, scores.astype(np.float64), 0.1, 0.97, 0.9)
  _, _, np_raw_adv, _, _ = np_ppo_chain(logp, ref_logp, values, mask, scores.astype(np.float64),
                                        0.1, 0.97, 0.9, whiten=False)
  assert rl.kl_estimator == "k1" and np_seq_kl > 0  # KL(pi || ref) > 0 when pi is sharper
  np.testing.assert_allclose(np.asarray(kl), np_kl, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(token_rewards), np_rewards, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(advantages), np_raw_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(returns), np_ret, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(whitened), np_adv, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(whitened)[~mask] == 0) and np.all(np.asarray(returns)[~mask] == 0)
  np.testing.assert_allclose(float(seq_kl), np_seq_kl, rtol=1e-6)
  if kl_target:
    expected = np_adaptive_kl(0.1, np_seq_kl, len(scores), kl_target, 50.0)
    assert abs(expected / 0.1 - 1) > 1e-3  # the controller moved
  else:
    expected = 0.1
  np.testing.assert_allclose(float(new_coef), expected, rtol=1e-6)
  # Away from the last token the reward is the penalty alone: negative where pi puts more mass on
  # the sampled token than ref does, positive where less (the sign PPO needs).
  last = np.arange(mask.shape[1])[None] == mask.sum(-1)[:, None] - 1
  inner = mask & ~last
  assert np.any(inner & (logp > ref_logp)) and np.any(inner & (logp < ref_logp))
  r = np.asarray(token_rewards)
  assert np.all(np.sign(r[inner]) == -np.sign((logp - ref_logp)[inner]))


# ------------------------------------------------------------------ 6. the reference stays frozen


def toy_start(lora_rank: int):
  """(policy.Start on the toy task, its base params): full fine-tuning (the trainable params ARE
  the reference object) or LoRA adapters over a frozen base that is also the reference."""
  params = causal_lm.init_params(toy.CFG, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)  # peaked: real KL
  if not lora_rank:
    return toy.start(policy.PolicySpec(cfg=toy.CFG), params, causal_lm.param_axes(toy.CFG)), params
  model_config = config_common.model_config("tiny", lora_rank=lora_rank)
  spec = policy.PolicySpec(cfg=toy.CFG, lora_rank=lora_rank, lora_alpha=model_config.lora.alpha)
  trainable, frozen, axes = policy.init_trainable(spec, params, model_config, jax.random.key(1))
  return policy.Start(spec, trainable, frozen, frozen["base"], axes, toy._Tokens(), toy.EOS), params


def snapshot(tree):
  return [np.array(x, copy=True) for x in jax.tree.leaves(tree)]


def assert_bit_identical(tree, copies, what):
  leaves = jax.tree.leaves(tree)
  assert len(leaves) == len(copies), what
  for i, (x, c) in enumerate(zip(leaves, copies, strict=True)):
    np.testing.assert_array_equal(np.asarray(x), c, err_msg=f"{what} leaf {i}")
    assert np.asarray(x).tobytes() == c.tobytes(), f"{what} leaf {i} not bit-identical"


KL_TARGET, KL_HORIZON, GAMMA, LAM = 0.5, 100, 0.99, 0.9


def toy_rl(algo: str, lora_rank: int):
  """(config, start, base params, state, one_step, critic) of a toy PPO or GRPO run, KL on."""
  config = toy.config(algo, steps=2)
  config.rollout.group_size = 4
  config.rl.kl_coef = 0.05
  start, params = toy_start(lora_rank)
  mesh = parallel.make_mesh(data=1)
  if algo == "grpo":
    state, one_step = grpo.build(config, start, toy.prompt_batch, mesh)
    return config, start, params, state, one_step, None
  config.ppo.kl_target, config.ppo.kl_horizon = KL_TARGET, KL_HORIZON
  config.ppo.gamma, config.ppo.lam = GAMMA, LAM
  backbone, critic_cfg = heads.truncate_layers(params, toy.CFG, 1)  # shares the embeddings
  critic = ppo.Critic(critic_cfg, {"backbone": backbone,
                                   "head": heads.init_head(jax.random.key(3), toy.CFG.hidden_size)})
  state, one_step = ppo.build(config, start, critic, toy.prompt_batch, mesh)
  return config, start, params, state, one_step, critic


@functools.cache
def run_toy(algo: str, lora_rank: int) -> dict:
  """Two steps of a toy run. Returns numpy copies of the reference, the initial trainable and
  critic params taken before, the run's objects, the final state, the KL coefficient before each
  step and after the last (PPO), and every minibatch handed to the update (numpy, with its step)."""
  config, start, params, state, one_step, critic = toy_rl(algo, lora_rank)
  run = {"config": config, "start": start, "params": params, "critic": critic,
         "ref_copy": snapshot(start.ref), "trainable_copy": snapshot(start.trainable),
         "critic_copy": snapshot(critic.params) if critic else None, "minibatches": [],
         "kl_coef": [], "metrics": []}
  real_shard_batch = parallel.shard_batch
  current = {}

  def recording_shard_batch(batch, mesh):
    if "advantages" in batch:  # an update's minibatch (the first call is the sampled batch)
      run["minibatches"].append((current["step"], {k: np.array(v) for k, v in batch.items()}))
    return real_shard_batch(batch, mesh)

  parallel.shard_batch = recording_shard_batch
  try:
    for step in (1, 2):
      current["step"] = step
      if algo == "ppo":
        run["kl_coef"].append(float(state["kl_coef"]))
      state, metrics = one_step(state, step)
      run["metrics"].append(metrics)
  finally:
    parallel.shard_batch = real_shard_batch
  if algo == "ppo":
    run["kl_coef"].append(float(state["kl_coef"]))
  run["state"] = state
  return run


def trained_params(state):
  return state["policy"].params if isinstance(state, dict) else state.params


@pytest.mark.slow
@pytest.mark.parametrize("algo,lora_rank", [("grpo", 0), ("grpo", 4), ("ppo", 0), ("ppo", 4)])
def test_reference_stays_bitwise_frozen(algo, lora_rank):
  """Two steps with donated update states leave start.ref (and start.trainable, the critic's
  initial params) bit-identical: no buffer of theirs is aliased into a donated state."""
  run = run_toy(algo, lora_rank)
  start = run["start"]
  assert start.ref is (start.frozen["base"] if lora_rank else start.trainable)
  assert all(bool(m["rl/finite"]) for m in run["metrics"])
  assert_bit_identical(start.ref, run["ref_copy"], "reference")
  assert_bit_identical(start.trainable, run["trainable_copy"], "initial trainable params")
  if lora_rank:
    assert_bit_identical(start.frozen["base"], run["ref_copy"], "LoRA base")
  if run["critic"]:
    assert_bit_identical(run["critic"].params, run["critic_copy"], "initial critic params")
  moved = max_abs_diff(trained_params(run["state"]), run["trainable_copy"])
  assert moved > 1e-4, moved  # the policy did train


@pytest.mark.slow
def test_ppo_step_advantages_and_kl_coef_match_float64():
  """Inside a real PPO run: each step's advantages and returns, and the adaptive KL coefficient,
  recomputed in float64 from the minibatch (sampler log-probs, critic values), the toy reward and
  a plain forward of the reference."""
  run = run_toy("ppo", 0)
  config = run["config"]
  assert config.ppo.whiten_advantages and config.rl.num_minibatches == 1
  checked = set()
  for step, mb in run["minibatches"]:
    if step in checked:
      continue  # the second epoch replays the same rows in another order
    checked.add(step)
    mask = mb["comp_mask"].astype(bool)
    scores = toy.target_fraction(types.SimpleNamespace(comp_ids=mb["comp_ids"],
                                                       comp_mask=mask))[0].astype(np.float64)
    ref_lp = reference_logprobs(run["params"], toy.CFG, mb["prompt_ids"], mb["prompt_mask"],
                                mb["comp_ids"], mask)
    coef = run["kl_coef"][step - 1]
    kl, _, adv, ret, seq_kl = np_ppo_chain(mb["old_logprobs"], ref_lp, mb["old_values"], mask,
                                           scores, coef, GAMMA, LAM)
    adv_err = np.abs(mb["advantages"] - adv)[mask].max()
    ret_err = np.abs(mb["returns"] - ret)[mask].max()
    expected_coef = np_adaptive_kl(coef, seq_kl, len(mask), KL_TARGET, KL_HORIZON)
    print(f"step {step}: seq KL {seq_kl:.4f}, |adv err| {adv_err:.2e}, |ret err| {ret_err:.2e}, "
          f"kl_coef {run['kl_coef'][step]:.6f} vs {expected_coef:.6f}")
    assert adv_err < 1e-3 and ret_err < 1e-4, (adv_err, ret_err)
    assert np.all(mb["advantages"][~mask] == 0)
    np.testing.assert_allclose(run["kl_coef"][step], expected_coef, rtol=1e-5)
  assert checked == {1, 2}
  assert abs(run["kl_coef"][-1] / run["kl_coef"][0] - 1) > 1e-3  # the controller moved


