"""GRPO: G completions per prompt, group-normalised advantages, clipped ratio, KL in the loss.

One iteration: sample (prefill shared per group) -> rewards -> group advantages -> reference
log-probs (if beta > 0) -> `rl.epochs` passes of `num_minibatches` clipped-policy updates.
With a single update per rollout the "old" log-probs are the current ones (ratio 1, gradient
unchanged), so they are taken from the forward pass itself instead of being computed twice.
With rl.aux_nll on, the loss also has a supervised NLL of each prompt's target text, computed in
the same forward pass (`aux_nll`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath

from jaxprof import buckets, parallel, perf
from jaxprof.rl import advantages as adv_lib
from jaxprof.rl import losses
from jaxprof.trainers import aux_nll, common, loop, policy, rollout

PromptBatchFn = rollout.PromptBatchFn


def grpo_loss(spec: policy.PolicySpec, config, single_update: bool, trainable, frozen, batch,
              rng):
  """Clipped policy loss + beta * KL(pi || ref) (estimator rl.kl_estimator) + rl.aux_nll.coef *
  the target's token NLL (`aux_nll`, when on), as a weighted sum."""
  del rng
  rl, max_len = config.rl, config.rollout.max_new_tokens
  mask = batch["comp_mask"]
  temperature = rollout.logprob_temperature(config.rollout)
  if aux_nll.enabled(rl):
    lp, ent, target_lp, target_mask = aux_nll.policy_logprobs(spec, config.rollout, trainable,
                                                              frozen, batch, temperature)
  else:
    lp, ent = rollout.policy_logprobs(spec, rollout.prompt_group(config.rollout), trainable,
                                      frozen, batch, temperature)
  old = jax.lax.stop_gradient(lp) if single_update else batch["old_logprobs"]
  loss, m = losses.policy_loss(
      lp, old, batch["advantages"], mask, eps_low=rl.eps_low, eps_high=rl.eps_high,
      dual_clip=rl.dual_clip or None, ratio_level=rl.ratio_level, agg_mode=rl.agg_mode,
      max_len=max_len)
  m = dict(m, entropy=losses.masked_mean(ent, mask))
  if rl.kl_coef > 0:
    kl = losses.kl_penalty(lp, batch["ref_logprobs"], mask, kind=rl.kl_estimator)
    loss = loss + rl.kl_coef * losses.aggregate(kl, mask, rl.agg_mode, max_len)
    m["kl"] = losses.masked_mean(kl, mask)
  if aux_nll.enabled(rl):
    m["aux_nll"] = aux_nll.mean_nll(target_lp, target_mask)
    loss = loss + rl.aux_nll.coef * m["aux_nll"]
  w = rollout.agg_weight(mask, rl.agg_mode)
  return loss * w, w, {f"rl/{k}": v for k, v in m.items()}


def build(config, start: policy.Start, prompt_batch: PromptBatchFn, mesh
          ) -> tuple[common.TrainState, Callable]:
  """(initial state, one_step(state, step) -> (state, metrics)) of the GRPO loop.

  Metrics include the time of each phase (perf/{rollout,reward,reference,update}_s) and
  perf/mfu: model FLOPs on real tokens over step time and the measured matmul peak.
  """
  spec = start.spec
  frozen, ref_params = rollout.place_reference(start, mesh, config.mesh.rules)
  eos_ids, pad_id = start.eos_ids, start.tok.pad_id
  rl, ro_cfg, grpo = config.rl, config.rollout, config.grpo
  single = rl.epochs == 1 and rl.num_minibatches == 1
  tx = common.make_optimizer(rl.optim, rollout.updates_per_step(rl))
  state, shardings = common.create_state(start.trainable, start.axes, tx, mesh,
                                         config.mesh.rules)
  update = common.jit_update(common.make_update(
      functools.partial(grpo_loss, spec, config, single), tx, rl.optim.grad_accum, "rl"), shardings,
      config.mesh.rules)
  ref_fn = jax.jit(functools.partial(rollout.ref_logprobs, spec, rollout.prompt_group(ro_cfg),
                                     temperature=rollout.logprob_temperature(ro_cfg)))
  key = jax.random.key(config.seed)
  shapes = buckets.ShapeLog("grpo")

  def one_step(state, step):
    timer = perf.PhaseTimer()
    step_key = jax.random.fold_in(key, step)
    ids, mask, reward_fn, *per_prompt = prompt_batch(step)
    with timer("rollout"):
      ro = rollout.generate(spec, state.params, frozen, ids, mask, step_key, ro_cfg, eos_ids,
                            pad_id)
    aux = aux_nll.batch_rows(per_prompt, rl, ro_cfg.group_size, ro.comp_mask)  # {} when off
    shapes(prompt=ro.prompt_ids.shape[1], completion=ro.comp_ids.shape[1],
           **({"target": aux["aux_ids"].shape[1]} if aux else {}))
    with timer("reward"):
      rewards, valid, terms = reward_fn(ro)
    rewards, valid = rollout.apply_truncation_rule(ro, rewards, valid, rl)
    advantages = adv_lib.group_advantages(
        rewards, valid, group_size=ro_cfg.group_size, method=grpo.advantage,
        std_ddof=grpo.std_ddof, eps=grpo.adv_eps, scale=grpo.adv_scale or None)
    if grpo.get("prompt_weight"):
      advantages = adv_lib.weight_groups(advantages, per_prompt[0][rollout.PROMPT_WEIGHT],
                                         ro_cfg.group_size)
    batch = {"prompt_ids": ro.prompt_ids, "prompt_mask": ro.prompt_mask, "comp_ids": ro.comp_ids,
             "comp_mask": rollout.update_mask(ro, valid), "old_logprobs": ro.logprobs,
             "advantages": np.asarray(advantages, np.float32),
             **aux}
    if rl.kl_coef > 0:
      with timer("reference"):
        batch["ref_logprobs"] = parallel.to_host(ref_fn(ref_params,
                                                          parallel.shard_batch(batch, mesh)))
    rng = np.random.default_rng([config.seed, step])
    finite = True  # the non-finite guard sees every minibatch, not the last one
    with timer("update"):
      for _ in range(rl.epochs):
        for rows in rollout.minibatches(len(rewards), rl.num_minibatches, rng, ro_cfg.group_size):
          mb = parallel.shard_batch({k: v[rows] for k, v in batch.items()}, mesh)
          state, m = update(state, frozen, mb, step_key)
          finite = finite & m["rl/finite"]
      m = parallel.to_host(dict(m, **{"rl/finite": finite}))
    fwd = perf.forward_flops(spec.cfg, ro.prompt_mask, ro.comp_mask, ro.prompt_group)
    update_fwd = fwd + aux_nll.extra_flops(spec.cfg, ro, batch)
    return state, {**m, **rollout.rollout_stats(ro, rewards, valid), **terms,
                   **timer.metrics(rollout=fwd, reference=fwd * (rl.kl_coef > 0),
                                   update=3 * update_fwd * rl.epochs),
                   "perf/shapes": shapes.count}

  return state, one_step


def train(config, stage_dir: epath.Path, start: policy.Start, prompt_batch: PromptBatchFn,
          mesh, probe=None) -> tuple[Any, dict]:
  """The GRPO loop over config.rl.total_steps rollouts; returns (final state, last metrics).
  probe: `rollout.truth_probe`, run every config.eval.probe_every steps."""
  state, one_step = build(config, start, prompt_batch, mesh)
  one_step = rollout.with_probe(one_step, probe, lambda s: s.params, start.frozen,
                                probe and config.eval.probe_every, config.rl.total_steps)
  return loop.run(stage_dir, state, one_step, config.rl.total_steps, config,
                  show=("reward/mean", "rl/kl", "rollout/length_mean", "perf/mfu"))


def run(ctx, stage_dir: epath.Path, inputs) -> dict:
  """The grpo stage: from the SFT export (or model.path), on the system's RL prompts."""
  rollout.check_config(ctx.config, "grpo")
  start = policy.start(ctx.config, policy.start_dir(ctx.config, inputs))
  prompts = rollout.prompt_batches(ctx.system, start.tok, ctx.system.reward(inputs), ctx.config)
  state, last = train(ctx.config, stage_dir, start, prompts, ctx.mesh,
                      rollout.truth_probe(ctx.system, start, ctx.config))
  return policy.finish(start, state.params, stage_dir, last)
