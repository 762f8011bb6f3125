"""Supervised fine-tuning: masked token NLL of the target given the prompt."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxprof import buckets, parallel
from jaxprof.rl import losses
from jaxprof.trainers import common, loop, policy


def sft_loss(spec: policy.PolicySpec, trainable, frozen, batch, rng):
  """Token NLL summed over target tokens, normalised by their count (token-weighted)."""
  del rng
  params = policy.effective_params(spec, trainable, frozen)
  logp = policy.completion_logprobs(spec, params, batch["prompt_ids"], batch["prompt_mask"],
                                    batch["target_ids"], batch["target_mask"])
  mask = batch["target_mask"].astype(jnp.float32)
  n = jnp.sum(mask)
  return -jnp.sum(logp * mask), n, {"tokens": n, "nll": -losses.masked_mean(logp, mask)}


def make_batch(tok, examples: Sequence[Mapping[str, str]], idx: list[int], sft_config) -> dict:
  prompts = [policy.format_prompt(tok, examples[i]["prompt"]) for i in idx]
  targets = [examples[i]["target"] for i in idx]
  p_ids, p_mask = policy.encode_prompts(tok, prompts, sft_config.max_prompt_len)
  t_ids, t_mask = policy.encode_targets(tok, targets, sft_config.max_target_len)
  return {"prompt_ids": p_ids, "prompt_mask": p_mask, "target_ids": t_ids, "target_mask": t_mask}


def run(ctx, stage_dir: epath.Path, inputs) -> dict:
  """The sft stage: the system's SFT examples, held-out NLL on its eval part."""
  del inputs
  system = ctx.system
  return train(ctx.config, stage_dir, system.sft_examples("train"), system.sft_examples("eval"),
               ctx.mesh)


def train(config, stage_dir: epath.Path, examples: Sequence[Mapping[str, str]],
          eval_examples: Sequence[Mapping[str, str]], mesh) -> dict:
  """Runs SFT from config.model.path; exports the policy to stage_dir/export."""
  cfg, params, tok = policy.load(config.model, seed=config.seed)
  spec = policy.spec_from_config(cfg, config.model)
  trainable, frozen, axes = policy.init_trainable(spec, params, config.model,
                                                  jax.random.key(config.seed + 1))
  sft = config.sft
  tx = common.make_optimizer(sft.optim)
  state, shardings = common.create_state(trainable, axes, tx, mesh, config.mesh.rules)
  update = common.jit_update(
      common.make_update(functools.partial(sft_loss, spec), tx, sft.optim.grad_accum, "sft"),
      shardings, config.mesh.rules)
  batcher = common.Batcher(len(examples), sft.batch_size, config.seed)
  key = jax.random.key(config.seed)
  shapes = buckets.ShapeLog("sft")

  def one_step(state, step):
    batch = make_batch(tok, examples, batcher.indices(step), sft)
    shapes(prompt=batch["prompt_ids"].shape[1], target=batch["target_ids"].shape[1])
    state, m = update(state, frozen, parallel.shard_batch(batch, mesh),
                      jax.random.fold_in(key, step))
    m["perf/tokens"] = m.pop("sft/tokens")
    m["perf/shapes"] = shapes.count
    return state, m

  state, last = loop.run(stage_dir, state, one_step, sft.optim.total_steps, config,
                         show=("sft/loss",))
  out = {"final_loss": last.get("sft/loss")}
  if eval_examples:
    out["eval_nll"] = evaluate_nll(spec, state.params, frozen, tok, eval_examples, sft, mesh)
  out["policy_dir"] = str(policy.export(spec, state.params, frozen, tok, stage_dir / "export"))
  return out


def evaluate_nll(spec, trainable, frozen, tok, examples, sft_config, mesh) -> float:
  """Token-weighted NLL of held-out targets."""
  loss_fn = jax.jit(functools.partial(sft_loss, spec))
  total = count = 0.0
  for start in range(0, len(examples), sft_config.batch_size):
    idx = list(range(start, min(start + sft_config.batch_size, len(examples))))
    idx += [idx[-1]] * (sft_config.batch_size - len(idx))  # fixed shape; duplicates count twice
    batch = parallel.shard_batch(make_batch(tok, examples, idx, sft_config), mesh)
    s, n, _ = loss_fn(trainable, frozen, batch, None)
    total, count = total + float(s), count + float(n)
  return float(np.float32(total / max(count, 1.0)))
