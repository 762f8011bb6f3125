"""Rollouts shared by PPO and GRPO: sample G completions per prompt, score them, pack a batch.

The sampler prefills each prompt once and shares its KV cache across the group. Rewards run on the
host (they may call recommenders, encoders or oracles) and come back as (rewards, valid, terms).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxprof import buckets, parallel, sampling
from jaxprof import config as config_lib
from jaxprof.models import causal_lm
from jaxprof.rl import advantages as adv_lib
from jaxprof.rl import losses
from jaxprof.trainers import aux_nll, common, policy


@dataclasses.dataclass
class Rollout:
  """Host-side view of one rollout batch; arrays are [R, ...] with R = prompts * group_size."""

  prompt_ids: np.ndarray  # [R, P] left-padded
  prompt_mask: np.ndarray
  comp_ids: np.ndarray  # [R, N] right-padded
  comp_mask: np.ndarray
  logprobs: np.ndarray  # [R, N] policy log-probs at sampling time
  row_prompt: np.ndarray  # [R] index of the prompt each row came from
  prompt_group: int = 1  # rows per prompt that later passes read the prompt once for
  completions: list[str] = dataclasses.field(default_factory=list)
  truncated: np.ndarray | None = None  # [R] bool: stopped by max_new_tokens, not by an EOS

  def __post_init__(self):
    if self.truncated is None:
      self.truncated = np.zeros(len(self.comp_ids), bool)


def prompt_group(rollout_config) -> int:
  """How many rows share one prompt pass in training and scoring: rollout.group_size, or 1 with
  rollout.share_prefix off (every row its own [P + N] sequence: the reference path)."""
  return rollout_config.group_size if rollout_config.share_prefix else 1


# reward_fn(rollout) -> (rewards [R] float32, valid [R] bool, per-term means for logging)
RewardFn = Callable[[Rollout], tuple[np.ndarray, np.ndarray, dict[str, float]]]


@functools.partial(jax.jit, static_argnames=("spec", "max_new_tokens", "eos_ids", "sampler",
                                             "group_size", "pad_id"))
def _sample(spec, trainable, frozen, prompt_ids, prompt_mask, key, *, max_new_tokens, eos_ids,
            sampler, group_size, pad_id):
  params = policy.effective_params(spec, trainable, frozen)
  return sampling.sample(params, spec.cfg, prompt_ids, prompt_mask, key,
                         max_new_tokens=max_new_tokens, eos_ids=eos_ids, sampling=sampler,
                         num_samples=group_size, pad_id=pad_id)


def generate(spec: policy.PolicySpec, trainable: Any, frozen: Any, prompt_ids: np.ndarray,
             prompt_mask: np.ndarray, key: jax.Array, rollout_config, eos_ids: tuple[int, ...],
             pad_id: int) -> Rollout:
  """group_size completions of each prompt ([B, P] left-padded), sampled as config.rollout says
  (temperature, top_k, top_p, max_new_tokens)."""
  ro = rollout_config
  sampler = sampling.Sampling(ro.temperature, ro.top_k, ro.top_p)
  g = ro.group_size
  out = _sample(spec, trainable, frozen, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask), key,
                max_new_tokens=ro.max_new_tokens, eos_ids=tuple(eos_ids), sampler=sampler,
                group_size=g, pad_id=pad_id)
  out = jax.device_get(out)
  # Train on the longest completion's bucket, not on max_new_tokens (rows that stopped early are
  # padding past their EOS).
  n = buckets.width(int(out.mask.sum(-1).max(initial=1)), ro.max_new_tokens)
  return Rollout(prompt_ids=np.repeat(prompt_ids, g, 0), prompt_mask=np.repeat(prompt_mask, g, 0),
                 comp_ids=out.tokens[:, :n], comp_mask=out.mask[:, :n],
                 logprobs=out.logprobs[:, :n], row_prompt=np.repeat(np.arange(len(prompt_ids)), g),
                 prompt_group=prompt_group(ro),
                 truncated=~(np.isin(out.tokens, eos_ids) & out.mask).any(-1))


def generate_texts(spec: policy.PolicySpec, trainable: Any, frozen: Any, tok, prompts: list[str],
                   per_call: int, samples: int, temperature: float, rollout_config,
                   key: jax.Array, eos_ids: tuple[int, ...]) -> tuple[Rollout, list[str]]:
  """`samples` completions of each of (at most `per_call`) chat-formatted `prompts` at
  `temperature`, with config.rollout's lengths: (Rollout, decoded texts), both with only the real
  prompts' rows. The prompt list is padded with its last prompt to `per_call`, so every call of a
  loop over chunks has one compiled shape."""
  ro = rollout_config.copy_and_resolve_references()
  ro.group_size, ro.temperature = samples, temperature
  padded = prompts + [prompts[-1]] * (per_call - len(prompts))
  ids, mask = policy.encode_prompts(tok, padded, ro.max_prompt_len)
  batch = generate(spec, trainable, frozen, ids, mask, key, ro, eos_ids, tok.pad_id)
  rows = len(prompts) * samples
  batch = dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[:rows]
                                        for f in dataclasses.fields(batch)
                                        if isinstance(getattr(batch, f.name), np.ndarray)})
  return batch, tok.decode_batch(batch.comp_ids, batch.comp_mask)


def text_reward_fn(reward, tokenizer, prompts: Sequence[str],
                   columns: Mapping[str, Sequence[Any]]) -> RewardFn:
  """Adapts a catalogue reward (RewardBatch -> values) to a RewardFn for one batch of prompts."""
  from jaxprof.rewards.base import RewardBatch

  def fn(rollout: Rollout):
    if not rollout.completions:  # decoded once (the eval's generation already decodes)
      rollout.completions = tokenizer.decode_batch(rollout.comp_ids, rollout.comp_mask)
    rows = rollout.row_prompt
    batch = RewardBatch(prompts=[prompts[i] for i in rows], completions=rollout.completions,
                        completion_ids=rollout.comp_ids, completion_mask=rollout.comp_mask,
                        columns={k: [v[i] for i in rows] for k, v in columns.items()},
                        group_size=rollout.prompt_group)
    values, terms = reward.evaluate(batch) if hasattr(reward, "evaluate") else (reward(batch), {})
    values, valid = adv_lib.rewards_to_arrays(
        [None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
         for v in np.asarray(values, dtype=object)])
    means = {f"reward/{k}": _mean_of_valid(v) for k, v in terms.items()}
    return values, valid, means
  return fn


def _mean_of_valid(values) -> float:
  kept = [float(v) for v in values if v is not None]
  return float(np.mean(kept)) if kept else float("nan")


# prompt_batch(step) -> (prompt_ids [B, P], prompt_mask [B, P], reward_fn for those prompts), and,
# with rl.aux_nll or grpo.prompt_weight on, a 4th item of per-prompt arrays: the target texts
# {"aux_ids", "aux_mask"} [B, L], the weights {"prompt_weight"} [B].
PromptBatchFn = Callable[[int], tuple[np.ndarray, np.ndarray, RewardFn]
                         | tuple[np.ndarray, np.ndarray, RewardFn, dict[str, np.ndarray]]]


def check_config(config, stage: str) -> None:
  """An RL stage runs the algorithm config.rl describes; truncated sampling is pointed out."""
  if config.rl.algo != stage:
    raise config_lib.ConfigError(f"stage {stage!r} listed but config.rl.algo="
                                 f"{config.rl.algo!r}; set --config.rl.algo={stage} or list "
                                 f"stage {config.rl.algo!r}")
  ro = config.rollout
  if aux_nll.enabled(config.rl) and stage != "grpo":
    raise config_lib.ConfigError(f"rl.aux_nll.coef={config.rl.aux_nll.coef} is implemented for "
                                 f"GRPO only; set --config.rl.aux_nll.coef=0 for {stage}")
  if ro.top_k > 0 or ro.top_p < 1.0:
    logging.warning("rollout.top_k=%d / top_p=%g truncate the sampling distribution; the ratio, "
                    "KL and entropy use the tempered full distribution (as TRL and verl do), so "
                    "they are approximate on the truncated part", ro.top_k, ro.top_p)


def prompt_batches(system, tok, reward, config) -> PromptBatchFn:
  """step -> a batch of the system's RL prompts and their reward, deterministic in the step.

  system: gives `rl_rows("train")`, `prompt(row)` and the reward `columns`; reward: a catalogue
  reward (RewardBatch -> values), e.g. `system.reward(inputs)`. With rl.aux_nll on, each batch
  also carries its prompts' target texts (rl.aux_nll.column of the rows), tokenised.
  """
  ro, aux = config.rollout, config.rl.get("aux_nll")
  rows = system.rl_rows("train")
  prompts = [policy.format_prompt(tok, system.prompt(r)) for r in rows]
  columns = {k: [r[k] for r in rows] for k in system.columns}
  per_prompt = {}  # [len(rows), ...] arrays a batch carries after its reward_fn
  if aux_nll.enabled(config.rl):  # once: one target width for every batch
    per_prompt |= aux_nll.encode(tok, aux_nll.row_texts(rows, aux.column), aux.max_len)
  weight_column = (config.get("grpo") or {}).get("prompt_weight")
  if weight_column:
    per_prompt[PROMPT_WEIGHT] = prompt_weights(rows, weight_column)
  batcher = common.Batcher(len(rows), ro.prompts_per_step, config.seed)

  def batch(step: int):
    idx = batcher.indices(step)
    ids, mask = policy.encode_prompts(tok, [prompts[i] for i in idx], ro.max_prompt_len)
    cols = {k: [v[i] for i in idx] for k, v in columns.items()}
    out = ids, mask, text_reward_fn(reward, tok, [prompts[i] for i in idx], cols)
    if not per_prompt:
      return out
    return *out, {k: v[idx] for k, v in per_prompt.items()}

  return batch


PROMPT_WEIGHT = "prompt_weight"


def prompt_weights(rows: Sequence[Mapping[str, Any]], column: str) -> np.ndarray:
  """[len(rows)] float32 weights from `column` of the RL rows (grpo.prompt_weight); a missing,
  negative or non-finite value is an error naming the row."""
  out = np.zeros(len(rows), np.float32)
  for i, r in enumerate(rows):
    if column not in r:
      raise config_lib.ConfigError(f"grpo.prompt_weight={column!r}: RL row {i} has no such "
                                   f"column (it has {sorted(r)})")
    w = float(r[column])
    if not np.isfinite(w) or w < 0:
      raise ValueError(f"grpo.prompt_weight: RL row {i} has {column}={r[column]!r}; weights "
                       "must be finite and >= 0")
    out[i] = w
  return out


def truth_probe(system, start: policy.Start, config) -> Callable[[Any, Any], dict] | None:
  """probe(trainable, frozen) -> {"probe/truth/...": mean, "probe/length_mean"}: the system's
  truth on the policy's completions of a fixed set of held-out prompts (the first
  config.eval.probe_size eval rows, at the eval temperature), for curves over RL steps. None when
  config.eval.probe_every is 0."""
  ev = config.eval
  if not ev.probe_every:
    return None
  rows = system.rl_rows("eval")[:ev.probe_size]
  prompts = [policy.format_prompt(start.tok, system.prompt(r)) for r in rows]
  ids, mask = policy.encode_prompts(start.tok, prompts, config.rollout.max_prompt_len)
  ro = config.rollout.copy_and_resolve_references()
  ro.group_size, ro.temperature = 1, ev.temperature

  def probe(trainable, frozen) -> dict:
    out = generate(start.spec, trainable, frozen, ids, mask, jax.random.key(config.seed), ro,
                   start.eos_ids, start.tok.pad_id)
    texts = start.tok.decode_batch(out.comp_ids, out.comp_mask)
    return {**{f"probe/{k}": v for k, v in system.truth(rows, texts).items()},
            "probe/length_mean": float(out.comp_mask.sum(-1).mean())}
  return probe


def with_probe(one_step: Callable, probe, trainable_of: Callable, frozen, every: int,
               total: int) -> Callable:
  """one_step that also runs `probe` after every `every`-th step and the last one."""
  if probe is None:
    return one_step

  def step(state, i):
    state, metrics = one_step(state, i)
    if (i + 1) % every == 0 or i + 1 == total:
      metrics = {**metrics, **probe(trainable_of(state), frozen)}
    return state, metrics
  return step


def shareable_group(rows: int, group_size: int) -> int:
  """group_size if `rows` are whole groups (then the prompt pass is shared), else 1."""
  return group_size if rows % group_size == 0 else 1


def logprob_temperature(rollout_config) -> float:
  """The temperature of the distribution rollouts are drawn from (greedy: the raw logits). The
  trained, reference and recorded log-probs are all of softmax(logits / this), as in TRL and verl:
  ratio, KL and entropy then refer to the behaviour policy."""
  return float(rollout_config.temperature) or 1.0


def place_reference(start: policy.Start, mesh, rules) -> tuple[Any, Any]:
  """(frozen, reference params) of an RL stage on the mesh, sharded by the params' logical axes
  like the trained state (a device_put array left uncommitted would be replicated on every
  device of a pod). Under LoRA the reference is the frozen base itself."""
  axes = causal_lm.param_axes(start.spec.cfg)
  ref = jax.device_put(start.ref, parallel.param_shardings(axes, start.ref, mesh, rules))
  return ({"base": ref} if start.spec.uses_lora else start.frozen), ref


def policy_logprobs(spec, group_size: int, trainable, frozen, batch, temperature: float = 1.0):
  """(log-probs [R, N], entropy [R, N]) of the batch's completions under the current policy."""
  params = policy.effective_params(spec, trainable, frozen)
  g = shareable_group(batch["comp_mask"].shape[0], group_size)
  return policy.completion_logprobs(spec, params, batch["prompt_ids"], batch["prompt_mask"],
                                    batch["comp_ids"], batch["comp_mask"], with_entropy=True,
                                    group_size=g, temperature=temperature)


def ref_logprobs(spec, group_size: int, frozen_ref, batch, temperature: float = 1.0
                 ) -> jax.Array:
  """Reference-policy log-probs [R, N] (no gradient), in the policy's compute dtype."""
  g = shareable_group(batch["prompt_ids"].shape[0], group_size)
  return policy.completion_logprobs(spec, policy.in_compute_dtype(spec, frozen_ref),
                                    batch["prompt_ids"], batch["prompt_mask"], batch["comp_ids"],
                                    batch["comp_mask"], group_size=g, temperature=temperature)


def updates_per_step(rl_config) -> int:
  """Optimizer updates per RL step: rl.epochs passes of rl.num_minibatches minibatches."""
  return rl_config.epochs * rl_config.num_minibatches


def agg_weight(mask: jax.Array, mode: str, max_len: int | None = None) -> jax.Array:
  """What `losses.aggregate(x, mask, mode)` divides by, so loss * weight is a summable total."""
  mask = mask.astype(jnp.float32)
  if mode == "token_mean":
    return jnp.sum(mask)
  if mode == "seq_mean_token_mean":
    return jnp.sum(jnp.any(mask > 0, axis=-1).astype(jnp.float32))
  if mode == "seq_mean_token_sum_norm":
    return jnp.asarray(mask.shape[0], jnp.float32)
  raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {losses.AGG_MODES}")


def minibatches(num_rows: int, num_minibatches: int, rng: np.random.Generator,
                group_size: int = 1) -> list[np.ndarray]:
  """Row indices of each minibatch: whole groups, shuffled, so prompt passes stay shareable."""
  groups = num_rows // group_size
  if groups % num_minibatches:
    raise ValueError(f"{groups} prompt groups do not split into {num_minibatches} minibatches")
  order = rng.permutation(groups)
  rows = (order[:, None] * group_size + np.arange(group_size)[None]).reshape(-1)
  return np.split(rows, num_minibatches)


TRUNCATED_RULES = config_lib.TRUNCATED_RULES


def apply_truncation_rule(rollout: Rollout, rewards: np.ndarray, valid: np.ndarray, rl_config
                          ) -> tuple[np.ndarray, np.ndarray]:
  """(rewards, valid) after rl.truncated, for completions cut off by max_new_tokens:
  "keep" scores them like finished texts; "mask" leaves them out of the update, as a None reward
  is (TRL's mask_truncated_completions); "penalty" adds rl.truncation_penalty to their reward (a
  fixed overlong penalty)."""
  rule = rl_config.truncated
  if rule not in TRUNCATED_RULES:
    raise ValueError(f"rl.truncated={rule!r}; expected one of {TRUNCATED_RULES}")
  cut = rollout.truncated
  if rule == "mask":
    return rewards, valid & ~cut
  if rule == "penalty":
    return np.where(cut & valid, rewards + rl_config.truncation_penalty, rewards
                    ).astype(np.float32), valid
  return rewards, valid


def update_mask(rollout: Rollout, valid: np.ndarray) -> np.ndarray:
  """The completion mask [R, N] the update trains on. The one rule for a completion without a
  valid reward (None, or masked as truncated), in PPO and GRPO alike: it is left out of the
  update, every loss term (policy, KL, entropy, value) and GRPO's group statistics."""
  return rollout.comp_mask & valid[:, None]


def rollout_stats(rollout: Rollout, rewards: np.ndarray, valid: np.ndarray) -> dict[str, float]:
  lengths = rollout.comp_mask.sum(-1)
  r = rewards[valid]
  return {"reward/mean": float(r.mean()) if r.size else float("nan"),
          "reward/std": float(r.std()) if r.size else float("nan"),
          "reward/none_fraction": float(1 - valid.mean()),
          "rollout/truncated_fraction": float(rollout.truncated.mean()),
          "rollout/length_mean": float(lengths.mean()), "rollout/length_max": float(lengths.max()),
          "perf/tokens": float(rollout.comp_mask.sum() + rollout.prompt_mask.sum())}
