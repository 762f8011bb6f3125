"""PPO: clipped policy loss, a separate critic, GAE, per-token KL in the reward.

One iteration: sample -> sequence scores -> reference and critic passes -> token rewards
r_t = -kl_coef * KL_t (+ score on the last token) -> GAE -> `rl.epochs` x `num_minibatches`
updates of the policy and of the critic -> adaptive KL coefficient. The critic is its own network
(e.g. the reward model's backbone, smaller than the policy), never a silent copy of the actor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxprof import buckets, parallel, perf
from jaxprof import config as config_lib
from jaxprof.models import causal_lm, heads
from jaxprof.rl import advantages as adv_lib
from jaxprof.rl import kl_control, losses
from jaxprof.trainers import artifacts, common, loop, policy, reward_model, rollout
from jaxprof.trainers.grpo import PromptBatchFn


def critic_values(critic_cfg, group_size: int, remat, params, batch) -> jax.Array:
  """V(s_t) [R, N]: the critic's value before each completion token (prompt shared per group)."""
  g = rollout.shareable_group(batch["comp_ids"].shape[0], group_size)
  hidden = causal_lm.continuation_states(
      params["backbone"], critic_cfg, batch["prompt_ids"], batch["prompt_mask"],
      batch["comp_ids"], batch["comp_mask"], g, remat)
  return hidden.astype(jnp.float32) @ params["head"]["kernel"] + params["head"]["bias"]


def policy_loss_fn(spec, config, trainable, frozen, batch, rng):
  """The clipped policy loss GRPO uses too (`losses.policy_loss`), minus an entropy bonus."""
  del rng
  rl = config.rl
  mask = batch["comp_mask"]
  lp, ent = rollout.policy_logprobs(spec, rollout.prompt_group(config.rollout), trainable, frozen,
                                    batch, rollout.logprob_temperature(config.rollout))
  loss, m = losses.policy_loss(
      lp, batch["old_logprobs"], batch["advantages"], mask, eps_low=rl.eps_low,
      eps_high=rl.eps_high, dual_clip=rl.dual_clip or None, ratio_level=rl.ratio_level,
      agg_mode=rl.agg_mode, max_len=config.rollout.max_new_tokens)
  entropy = losses.masked_mean(ent, mask)  # logged; the bonus aggregates like the loss, so that
  bonus = losses.aggregate(ent, mask, rl.agg_mode, config.rollout.max_new_tokens)  # micro-batches
  loss = loss - config.ppo.entropy_coef * bonus  # add up to the full batch (grad_accum exact)
  w = rollout.agg_weight(mask, rl.agg_mode)
  return loss * w, w, {f"rl/{k}": v for k, v in dict(m, entropy=entropy).items()}


def critic_loss_fn(critic_cfg, config, remat, params, frozen, batch, rng):
  del frozen, rng
  # The tokens whose value is regressed (ppo.advantage="sequence": the prompt's only).
  mask, agg_mode = batch.get("value_mask", batch["comp_mask"]), config.rl.agg_mode
  values = critic_values(critic_cfg, rollout.prompt_group(config.rollout), remat, params, batch)
  loss, m = losses.value_loss(values, batch["old_values"], batch["returns"], mask,
                              clip_eps=config.ppo.value_clip or None, agg_mode=agg_mode,
                              max_len=config.rollout.max_new_tokens)
  w = rollout.agg_weight(mask, agg_mode)
  return loss * w, w, {f"critic/{k}": v for k, v in m.items()}


ADVANTAGES = config_lib.PPO_ADVANTAGES


def targets(ppo_config, scores: np.ndarray, mask: np.ndarray, kl: jax.Array,
            old_values: np.ndarray, kl_coef) -> tuple[jax.Array, jax.Array, np.ndarray]:
  """(advantages [R, N], returns [R, N], value mask [R, N]) of one rollout, by ppo.advantage:

  "gae": token rewards (score on the last token, -kl_coef * KL_t on each) -> GAE(gamma, lam)
    over the critic's per-token values; the critic regresses every token's return.
  "sequence": one advantage per completion, a = score - kl_coef * mean_t KL_t - V(prompt),
    broadcast over its tokens; the critic regresses r on its value of the prompt alone (the
    value read before completion token 0).
  Either may be whitened over the valid tokens (ppo.whiten_advantages).
  scores [R], mask [R, N] bool, kl [R, N] (`losses.kl_penalty`), old_values [R, N].
  """
  m = jnp.asarray(mask)
  if ppo_config.advantage == "gae":
    token_rewards = adv_lib.sequence_reward_to_token_rewards(jnp.asarray(scores), m, kl, kl_coef)
    advantages, returns = adv_lib.gae(token_rewards, jnp.asarray(old_values), m,
                                      gamma=ppo_config.gamma, lam=ppo_config.lam)
    value_mask = mask
  elif ppo_config.advantage == "sequence":
    adv, ret = adv_lib.sequence_advantages(scores, kl, m, kl_coef, jnp.asarray(old_values)[:, 0])
    advantages = jnp.where(m, adv[:, None], 0.0)
    returns = jnp.broadcast_to(ret[:, None], m.shape)
    value_mask = mask & (np.arange(mask.shape[1]) == 0)[None]
  else:
    raise ValueError(f"ppo.advantage={ppo_config.advantage!r}; expected one of {ADVANTAGES}")
  if ppo_config.whiten_advantages:
    advantages = adv_lib.whiten(advantages, m)
  return advantages, returns, np.asarray(value_mask)


def critic_optimizer(config):
  """The critic's AdamW: config.rl.optim's schedule and steps at ppo.critic_lr."""
  optim = config.rl.optim.copy_and_resolve_references()
  optim.lr = config.ppo.critic_lr
  return common.make_optimizer(optim, rollout.updates_per_step(config.rl))


class Critic(NamedTuple):
  """The value network: a causal-LM backbone config and {"backbone", "head"} params."""

  cfg: Any
  params: dict


def build(config, start: policy.Start, critic: Critic, prompt_batch: PromptBatchFn, mesh
          ) -> tuple[dict, Callable]:
  """(initial state, one_step(state, step) -> (state, metrics)) of the PPO loop.

  The state is {"policy", "critic", "kl_coef"} (all checkpointed). Metrics include the time of
  each phase (perf/{rollout,reward,reference,update}_s) and perf/mfu.
  """
  spec = start.spec
  frozen, ref_params = rollout.place_reference(start, mesh, config.mesh.rules)
  eos_ids, pad_id = start.eos_ids, start.tok.pad_id
  critic_cfg = critic.cfg
  rl, ro_cfg, ppo = config.rl, config.rollout, config.ppo
  tx = common.make_optimizer(rl.optim, rollout.updates_per_step(rl))
  critic_tx = critic_optimizer(config)
  pol, pol_sh = common.create_state(start.trainable, start.axes, tx, mesh, config.mesh.rules)
  crit, crit_sh = common.create_state(critic.params, heads.scored_model_axes(critic_cfg),
                                      critic_tx, mesh, config.mesh.rules)
  kl_ctl = kl_control.make_kl_controller(rl.kl_coef, ppo.kl_target or None, ppo.kl_horizon)
  state = {"policy": pol, "critic": crit, "kl_coef": jnp.asarray(rl.kl_coef, jnp.float32)}
  update_policy = common.jit_update(common.make_update(
      functools.partial(policy_loss_fn, spec, config), tx, rl.optim.grad_accum, "rl"), pol_sh,
      config.mesh.rules)
  update_critic = common.jit_update(common.make_update(
      functools.partial(critic_loss_fn, critic_cfg, config, spec.remat), critic_tx,
      rl.optim.grad_accum, "critic"), crit_sh, config.mesh.rules)
  g = rollout.prompt_group(ro_cfg)
  ref_fn = jax.jit(functools.partial(rollout.ref_logprobs, spec, g,
                                     temperature=rollout.logprob_temperature(ro_cfg)))
  values_fn = jax.jit(functools.partial(critic_values, critic_cfg, g, False))
  key = jax.random.key(config.seed)
  shapes = buckets.ShapeLog("ppo")

  def one_step(state, step):
    timer = perf.PhaseTimer()
    step_key = jax.random.fold_in(key, step)
    ids, mask, reward_fn = prompt_batch(step)
    with timer("rollout"):
      ro = rollout.generate(spec, state["policy"].params, frozen, ids, mask, step_key, ro_cfg,
                            eos_ids, pad_id)
    shapes(prompt=ro.prompt_ids.shape[1], completion=ro.comp_ids.shape[1])
    with timer("reward"):
      scores, valid, terms = reward_fn(ro)
    scores, valid = rollout.apply_truncation_rule(ro, scores, valid, rl)
    scores = np.where(valid, scores, 0.0).astype(np.float32)  # those rows are masked out below
    mask = rollout.update_mask(ro, valid)
    batch = {"prompt_ids": ro.prompt_ids, "prompt_mask": ro.prompt_mask, "comp_ids": ro.comp_ids,
             "comp_mask": mask, "old_logprobs": ro.logprobs}
    sharded = parallel.shard_batch(batch, mesh)
    with timer("reference"):  # reference log-probs and the critic's values
      ref_lp, old_values = parallel.to_host((ref_fn(ref_params, sharded),
                                             values_fn(state["critic"].params, sharded)))
    kl = losses.kl_penalty(jnp.asarray(ro.logprobs), ref_lp, jnp.asarray(mask),
                           kind=rl.kl_estimator)
    advantages, returns, value_mask = targets(ppo, scores, mask, kl, old_values,
                                              state["kl_coef"])
    batch |= {"advantages": np.asarray(advantages), "returns": np.asarray(returns),
              "old_values": np.asarray(old_values), "value_mask": value_mask}
    rng = np.random.default_rng([config.seed, step])
    pol, crit = state["policy"], state["critic"]
    finite = {"rl/finite": True, "critic/finite": True}  # the guard sees every minibatch
    with timer("update"):
      for _ in range(rl.epochs):
        for rows in rollout.minibatches(len(scores), rl.num_minibatches, rng, ro_cfg.group_size):
          mb = parallel.shard_batch({k: v[rows] for k, v in batch.items()}, mesh)
          pol, m_pol = update_policy(pol, frozen, mb, step_key)
          crit, m_crit = update_critic(crit, {}, mb, step_key)
          finite = {k: v & {**m_pol, **m_crit}[k] for k, v in finite.items()}
      m_pol, m_crit, finite = parallel.to_host((m_pol, m_crit, finite))
    fwd = perf.forward_flops(spec.cfg, ro.prompt_mask, ro.comp_mask, ro.prompt_group)
    critic_fwd = perf.forward_flops(critic_cfg, ro.prompt_mask, ro.comp_mask, ro.prompt_group,
                                    head=False)
    # The adaptive controller reads the mean summed KL of the rows that were trained on.
    n_valid = max(int(valid.sum()), 1)
    seq_kl = jnp.sum(kl) / n_valid
    kl_coef = kl_ctl.update(state["kl_coef"], seq_kl, n_valid)
    metrics = {**m_pol, **m_crit, **finite,
               **rollout.rollout_stats(ro, np.asarray(scores), valid),
               **terms, "rl/kl": jnp.sum(kl) / jnp.maximum(mask.sum(), 1),
               "rl/kl_coef": state["kl_coef"], "perf/shapes": shapes.count,
               **timer.metrics(rollout=fwd, reference=fwd + critic_fwd,
                               update=3 * (fwd + critic_fwd) * rl.epochs)}
    return {"policy": pol, "critic": crit, "kl_coef": kl_coef}, metrics

  return state, one_step


def train(config, stage_dir: epath.Path, start: policy.Start, critic: Critic,
          prompt_batch: PromptBatchFn, mesh, probe=None) -> tuple[Any, dict]:
  """The PPO loop over config.rl.total_steps rollouts; returns (final state, last metrics).
  probe: `rollout.truth_probe`, run every config.eval.probe_every steps."""
  state, one_step = build(config, start, critic, prompt_batch, mesh)
  one_step = rollout.with_probe(one_step, probe, lambda s: s["policy"].params, start.frozen,
                                probe and config.eval.probe_every, config.rl.total_steps)
  return loop.run(stage_dir, state, one_step, config.rl.total_steps, config,
                  show=("reward/mean", "rl/kl", "critic/explained_variance", "perf/mfu"))


def run(ctx, stage_dir: epath.Path, inputs) -> dict:
  """The ppo stage: from the SFT export (or model.path), on the system's RL prompts."""
  rollout.check_config(ctx.config, "ppo")
  policy_dir = policy.start_dir(ctx.config, inputs)
  start = policy.start(ctx.config, policy_dir)
  prompts = rollout.prompt_batches(ctx.system, start.tok, ctx.system.reward(inputs), ctx.config)
  critic = build_critic(ctx.config, inputs, policy_dir)
  state, last = train(ctx.config, stage_dir, start, critic, prompts, ctx.mesh,
                      rollout.truth_probe(ctx.system, start, ctx.config))
  return policy.finish(start, state["policy"].params, stage_dir, last)


def build_critic(config, inputs, policy_dir: str) -> Critic:
  """The critic of rl.critic_init: the trained reward model (backbone + head), or "policy:N",
  the first N layers of the policy with a fresh head."""
  init = config.ppo.critic_init
  if init == "reward_model":
    rm_dir = inputs.get("reward_model", {}).get("reward_model_dir")
    if rm_dir is None:
      raise config_lib.ConfigError("ppo.critic_init='reward_model' needs the reward_model stage "
                                   "to run first (or use ppo.critic_init='policy:N')")
    params, card = artifacts.load_pytree(rm_dir)
    if card["backbone"] in ("encoder", "embedding"):
      raise config_lib.ConfigError("a per-token critic needs a causal-LM reward model; set "
                                   "reward_model.backbone='policy:N' or ppo.critic_init='policy:N'")
    cfg, _ = reward_model.card_backbone(card, config.model)
    return Critic(cfg, params)
  cfg, backbone, _ = reward_model.build_backbone(init, policy_dir, config.model, config.seed)
  return Critic(cfg, {"backbone": backbone,
                      "head": heads.init_head(jax.random.key(config.seed + 3), cfg.hidden_size,
                                              scale=config.ppo.critic_head_scale)})
