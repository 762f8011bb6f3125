"""RL rules that hold whatever the flags: KL 0 at pi == ref in any dtype, log-probs of the tempered
distribution the sampler drew from, a schedule in RL steps, one rule for None rewards and truncated
completions, a non-finite guard over every minibatch, and one-line rejections of silent misfits."""

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxprof import config as config_lib
from jaxprof import sampling
from jaxprof.models import causal_lm, heads
from jaxprof.rl import losses
from jaxprof.trainers import common, grpo, policy, ppo, rollout
from tests.trainers import toy

G = 2


def batch_of(seed: int = 0, rows: int = 4, n: int = 6):
  """A rollout batch of the toy model: left-padded prompts in groups of G, ragged completions."""
  rng = np.random.default_rng(seed)
  p_ids = np.repeat(rng.integers(2, 32, size=(rows // G, 5)), G, 0).astype(np.int32)
  p_mask = np.ones_like(p_ids, bool)
  p_mask[:G, :2] = False  # the first group's prompt is shorter
  c_ids = rng.integers(2, 32, size=(rows, n)).astype(np.int32)
  lengths = np.array([n, 3, 5, 1][:rows])
  c_mask = np.arange(n)[None] < lengths[:, None]
  return {"prompt_ids": p_ids, "prompt_mask": p_mask, "comp_ids": c_ids, "comp_mask": c_mask,
          "old_logprobs": (-3.0 + 0.2 * rng.normal(size=(rows, n))).astype(np.float32),
          "ref_logprobs": (-3.0 + 0.2 * rng.normal(size=(rows, n))).astype(np.float32),
          "advantages": rng.normal(size=rows).astype(np.float32),
          "returns": rng.normal(size=(rows, n)).astype(np.float32),
          "old_values": rng.normal(size=(rows, n)).astype(np.float32)}


# ------------------------------------------------------------------ reference in the compute dtype


def test_kl_to_the_reference_is_zero_at_start_in_bfloat16():
  _, params, _, _ = toy.setup()
  spec = policy.PolicySpec(cfg=toy.CFG, compute_dtype="bfloat16")
  b = batch_of()
  lp, _ = rollout.policy_logprobs(spec, G, params, {}, b)
  ref = rollout.ref_logprobs(spec, G, params, b)
  kl = losses.kl_penalty(lp, ref, b["comp_mask"], kind="k3")
  assert float(jnp.abs(kl).max()) == 0.0
  # What the reference gave before (float32 params against a bfloat16 policy): a KL floor.
  f32 = policy.completion_logprobs(spec, params, b["prompt_ids"], b["prompt_mask"],
                                   b["comp_ids"], b["comp_mask"], group_size=G)
  assert float(losses.masked_mean(jnp.abs(f32 - lp), b["comp_mask"])) > 1e-4


# -------------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_recorded_and_trained_logprobs_are_of_the_tempered_distribution(temperature):
  _, params, _, _ = toy.setup()
  spec = policy.PolicySpec(cfg=toy.CFG)
  prompt = np.random.default_rng(1).integers(2, 32, size=(2, 5)).astype(np.int32)
  mask = np.ones_like(prompt, bool)
  out = sampling.sample(params, toy.CFG, jnp.asarray(prompt), jnp.asarray(mask),
                        jax.random.key(0), max_new_tokens=6, eos_ids=(-1,),
                        sampling=sampling.Sampling(temperature), num_samples=G)
  tokens, recorded = np.asarray(out.tokens), np.asarray(out.logprobs)
  # Independent reference: one full forward over prompt + completion, numpy log-softmax of
  # logits / T at each completion position.
  full = np.concatenate([np.repeat(prompt, G, 0), tokens], 1)
  hidden, _ = causal_lm.forward(params, toy.CFG, jnp.asarray(full), jnp.ones(full.shape, bool))
  z = np.asarray(causal_lm.logits(params, toy.CFG, hidden), np.float64)[:, 4:-1] / temperature
  logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - z.max(-1, keepdims=True)
  expected = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(recorded, expected, atol=2e-5)
  b = {"prompt_ids": np.repeat(prompt, G, 0), "prompt_mask": np.repeat(mask, G, 0),
       "comp_ids": tokens, "comp_mask": np.asarray(out.mask)}
  trained, _ = rollout.policy_logprobs(spec, G, params, {}, b, temperature)
  np.testing.assert_allclose(np.asarray(trained), expected, atol=2e-5)  # ratio 1 at the start
  ref = rollout.ref_logprobs(spec, G, params, b, temperature)
  np.testing.assert_allclose(np.asarray(ref), expected, atol=2e-5)
  if temperature != 1.0:  # the raw-logit log-probs would be another policy's
    raw, _ = rollout.policy_logprobs(spec, G, params, {}, b)
    assert np.abs(np.asarray(raw) - expected).mean() > 0.1


def test_logprob_temperature_of_greedy_rollouts_is_one():
  assert rollout.logprob_temperature(ml_collections.ConfigDict({"temperature": 0.0})) == 1.0
  assert rollout.logprob_temperature(ml_collections.ConfigDict({"temperature": 0.7})) == 0.7


# ----------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_counts_rl_steps_not_optimizer_updates(kind):
  optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup=2, total_steps=10, schedule=kind))
  per_step = common.lr_schedule(optim, 1)
  stretched = common.lr_schedule(optim, 4)  # e.g. 2 epochs x 2 minibatches per RL step
  for step in range(11):
    np.testing.assert_allclose(float(stretched(4 * step)), float(per_step(step)), rtol=1e-6)
  if kind == "cosine":  # the floor is reached at the last RL step, not halfway
    assert float(stretched(4 * 5)) > 0.5e-3 > float(stretched(4 * 10))
  with pytest.raises(ValueError, match="updates_per_step"):
    common.lr_schedule(optim, 0)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_trainers_stretch_the_schedule_by_epochs_times_minibatches(tmp_path, monkeypatch, algo):
  """Each optimizer a trainer builds (PPO: policy and critic) counts epochs x minibatches
  updates per RL step, and that many updates happen: the schedule ends at the last step."""
  config = toy.config(algo, steps=2)
  config.rl.epochs, config.rl.num_minibatches = 3, 2
  assert rollout.updates_per_step(config.rl) == 6
  asked, real = [], common.make_optimizer
  monkeypatch.setattr(common, "make_optimizer",
                      lambda optim, n=1: asked.append(n) or real(optim, n))  # a spy
  spec, params, axes, mesh = toy.setup()
  start = toy.start(spec, params, axes)
  if algo == "ppo":
    backbone, critic_cfg = heads.truncate_layers(params, toy.CFG, 1)
    critic = ppo.Critic(critic_cfg, {"backbone": backbone,
                                     "head": heads.init_head(jax.random.key(3), 32)})
    state, _ = ppo.train(config, tmp_path, start, critic, toy.prompt_batch, mesh)
    states = [state["policy"], state["critic"]]
  else:
    state, _ = grpo.train(config, tmp_path, start, toy.prompt_batch, mesh)
    states = [state]
  assert asked == [6] * len(states)
  for s in states:
    counts = {int(v) for _, v in optax.tree_utils.tree_get_all_with_path(s.opt_state, "count")}
    assert counts == {12}, counts  # 2 steps x 6 updates (Adam's and the schedule's counters)


# ------------------------------------------------------------------ None rewards, truncation


def grads_and_loss(loss_fn, params, b):
  (loss_sum, (weight, _)), g = jax.value_and_grad(common.with_weight(loss_fn), has_aux=True)(
      params, {}, b, jax.random.key(0))
  return loss_sum / weight, g


def garbage_in_row(b, row: int):
  """The batch with everything that belongs to `row` alone replaced."""
  out = {k: v.copy() for k, v in b.items()}
  out["comp_ids"][row] = (out["comp_ids"][row] + 11) % 32
  for k in ("old_logprobs", "ref_logprobs", "returns", "old_values"):
    out[k][row] = 9.0
  out["advantages"][row] = 50.0
  return out


def losses_under_test(config, spec, params):
  backbone, critic_cfg = heads.truncate_layers(params, toy.CFG, 1)
  critic = {"backbone": backbone, "head": heads.init_head(jax.random.key(3), 32)}
  fns = {"policy": (lambda p, f, b, r: ppo.policy_loss_fn(spec, config, p, f, b, r), params),
         "critic": (lambda p, f, b, r: ppo.critic_loss_fn(critic_cfg, config, False, p, f, b, r),
                    critic)}
  if config.rl.algo == "grpo":
    fns = {"grpo": (lambda p, f, b, r: grpo.grpo_loss(spec, config, False, p, f, b, r), params)}
  return fns


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_row_without_a_valid_reward_is_left_out_of_every_loss_term(algo):
  spec, params, _, _ = toy.setup()
  config = toy.config(algo, steps=1)
  config.rollout.group_size = G
  config.rl.kl_coef = 0.1
  if algo == "ppo":
    config.ppo.entropy_coef = 0.01
  b = batch_of()
  ro = rollout.Rollout(b["prompt_ids"], b["prompt_mask"], b["comp_ids"], b["comp_mask"],
                       b["old_logprobs"], np.repeat(np.arange(2), G), G)
  valid = np.array([True, False, True, True])
  masked = dict(b, comp_mask=rollout.update_mask(ro, valid))
  assert not masked["comp_mask"][1].any() and (masked["comp_mask"][0] == b["comp_mask"][0]).all()
  for name, (fn, p) in losses_under_test(config, spec, params).items():
    loss, g = grads_and_loss(fn, p, masked)
    loss2, g2 = grads_and_loss(fn, p, garbage_in_row(masked, 1))
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6, err_msg=name)
    for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(g2), strict=True):
      np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-7,
                                 err_msg=name)
    # A valid row does count (the check above can fail).
    loss3, _ = grads_and_loss(fn, p, garbage_in_row(masked, 0))
    assert abs(float(loss3) - float(loss)) > 1e-4, name


def test_truncated_rows_are_found_and_treated_as_configured():
  spec, params, _, _ = toy.setup()
  config = toy.config("grpo", steps=1)
  ids, mask, _ = toy.prompt_batch(0)
  ro = rollout.generate(spec, params, {}, ids, mask, jax.random.key(0), config.rollout,
                        toy.EOS, 0)
  ended = np.array([(t[m] == toy.EOS[0]).any() for t, m in zip(ro.comp_ids, ro.comp_mask,
                                                             strict=True)])
  np.testing.assert_array_equal(ro.truncated, ~ended)
  assert ro.truncated.any() and not ro.truncated.all(), ro.truncated  # both kinds present
  assert rollout.rollout_stats(ro, np.zeros(len(ended)), np.ones(len(ended), bool))[
      "rollout/truncated_fraction"] == pytest.approx(ro.truncated.mean())

  rewards, valid = np.arange(len(ended), dtype=np.float32), np.ones(len(ended), bool)
  valid[0] = False
  rl = ml_collections.ConfigDict(dict(truncated="keep", truncation_penalty=-2.0))
  r, v = rollout.apply_truncation_rule(ro, rewards, valid, rl)
  np.testing.assert_array_equal(r, rewards)
  np.testing.assert_array_equal(v, valid)
  rl.truncated = "mask"
  r, v = rollout.apply_truncation_rule(ro, rewards, valid, rl)
  np.testing.assert_array_equal(v, valid & ~ro.truncated)
  rl.truncated = "penalty"
  r, v = rollout.apply_truncation_rule(ro, rewards, valid, rl)
  np.testing.assert_array_equal(r, np.where(ro.truncated & valid, rewards - 2.0, rewards))
  np.testing.assert_array_equal(v, valid)
  rl.truncated = "drop"
  with pytest.raises(ValueError, match="rl.truncated='drop'"):
    rollout.apply_truncation_rule(ro, rewards, valid, rl)


# ------------------------------------------------------------------------- non-finite guard


def test_a_non_finite_minibatch_anywhere_in_the_step_is_reported():
  spec, params, axes, mesh = toy.setup()
  config = toy.config("grpo", steps=3)
  config.rl.num_minibatches = 4  # one prompt group per minibatch

  def bad_first_group(step):
    ids, mask, _ = toy.prompt_batch(step)

    def reward(ro):
      r, valid, terms = toy.target_fraction(ro)
      r[:8] = np.inf  # group 0's advantages become nan: one minibatch of four
      return r, valid, terms
    return ids, mask, reward

  state, one_step = grpo.build(config, toy.start(spec, params, axes), bad_first_group, mesh)
  for step in range(3):
    state, m = one_step(state, step)
    assert not bool(m["rl/finite"]), step  # wherever group 0 fell among the minibatches
    assert int(m["rl/skipped"]) == step + 1  # that minibatch, and only it, was skipped


# --------------------------------------------------------------------- rejected combinations


def config_of(spec: str):
  name, _, variant = spec.partition(":")
  return importlib.import_module(f"configs.{name}").get_config(variant)


@pytest.mark.parametrize("spec, overrides, flag", [
    ("langptune:tiny", {"rl.kl_estimator": "k1"}, "rl.kl_estimator='k1'"),
    ("langptune:tiny", {"grpo.advantage": "dr_grpo"}, "--config.rl.agg_mode=seq_mean_token_sum"),
    ("langptune:tiny", {"rl.ratio_level": "sequence"}, "--config.rl.eps_low=3e-4"),
    ("girl:tiny", {"rl.truncated": "drop"}, "rl.truncated='drop'"),
])
def test_silent_misconfigurations_are_rejected_in_one_line(spec, overrides, flag):
  config = config_of(spec)
  for path, value in overrides.items():
    section, key = path.split(".")
    config[section][key] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  problems = str(e.value).splitlines()[1:]
  assert len(problems) == 1 and flag in problems[0], problems


def test_the_fixed_combinations_are_accepted():
  config = config_of("langptune:tiny")
  config.grpo.advantage, config.rl.agg_mode = "dr_grpo", "seq_mean_token_sum_norm"
  config_lib.validate(config)
  config = config_of("langptune:tiny")
  config.rl.ratio_level, config.rl.eps_low, config.rl.eps_high = "sequence", 3e-4, 4e-4
  config_lib.validate(config)
  config = config_of("girl:tiny")  # PPO: k1 in the reward is the usual choice
  assert config.rl.kl_estimator == "k1"
  config_lib.validate(config)


def test_optax_schedule_is_what_the_optimizer_uses():
  """make_optimizer's AdamW steps with lr_schedule: one update of a unit gradient moves a
  parameter by about the scheduled learning rate (Adam's first step is sign-like)."""
  optim = ml_collections.ConfigDict(dict(lr=1e-2, warmup=0, total_steps=4, schedule="constant",
                                         clip_norm=0.0, b1=0.9, b2=0.999, weight_decay=0.0))
  tx = common.make_optimizer(optim, 2)
  params = {"w": jnp.zeros(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(optax.apply_updates(params, updates)["w"]), -1e-2,
                             rtol=1e-3)


def test_a_zero_scale_critic_head_starts_every_value_at_zero():
  from configs import girl

  config = girl.get_config("tiny")
  config.ppo.critic_init, config.ppo.critic_head_scale = "policy:1", 0.0
  assert not np.any(np.asarray(ppo.build_critic(config, {}, "tiny").params["head"]["kernel"]))
  config.ppo.critic_head_scale = 1.0
  assert np.any(np.asarray(ppo.build_critic(config, {}, "tiny").params["head"]["kernel"]))
