"""Reward-model score: a scalar-head model (`models.heads`) reads the text and returns one number.

Used by GIRL's PPO stage (the reward model trained with `rl.losses.pairwise_reward_loss`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxprof.models import heads
from jaxprof.rewards.base import RewardBatch, RewardFn, Rewards, bucket, to_rewards, valid_texts

TokenizeFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def join_prompt(prompt: str, completion: str) -> str:
  """Default text for prompt + completion scoring: the two separated by a blank line."""
  return f"{prompt}\n\n{completion}"


@functools.partial(jax.jit, static_argnames=("cfg", "pooling"))
def _scores(params, cfg, ids, mask, pooling):
  return heads.sequence_scores(params, cfg, ids, mask, pooling)


def reward_model_score(params: dict, cfg: heads.BackboneConfig, tokenize_fn: TokenizeFn,
                       pooling: str = "last", include_prompt: bool = True,
                       join: Callable[[str, str], str] = join_prompt, length_step: int = 32,
                       on_invalid: float | None = None) -> RewardFn:
  """r = head(pool(backbone(text))), text = join(prompt, completion) or the completion alone.

  Args:
    params: {"backbone", "head"} of a scalar-head model; cfg: its BERT or causal-LM config.
    tokenize_fn: texts -> (ids [B, T] int32, mask [B, T] bool), right-padded (e.g.
      `TextEncoder.tokenize`, or a wrapper over the policy tokenizer with a chat template).
    pooling: "last" (causal LMs) or "mean" (BERT backbones).
    length_step: T is padded up to a multiple of this and B to a power of two, so the jitted
      model compiles once per bucket.
  Invalid completions (see `base`) are not scored and get `on_invalid` (default None).
  """
  if pooling not in heads.POOLINGS:
    raise ValueError(f"reward_model_score: pooling {pooling!r} not in {heads.POOLINGS}")

  def reward(batch: RewardBatch) -> Rewards:
    completions, valid = valid_texts(batch.completions)
    texts = ([join(p, c) for p, c in zip(batch.prompts, completions, strict=True)]
             if include_prompt else completions)
    ids, mask = tokenize_fn(texts)
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
    if ids.shape != mask.shape or ids.shape[0] != batch.size:
      raise ValueError(f"reward_model_score: tokenize_fn returned ids {ids.shape} and mask "
                       f"{mask.shape} for {batch.size} texts")
    t = max(length_step, -(-ids.shape[1] // length_step) * length_step)
    b = bucket(batch.size)
    ids = np.pad(ids, ((0, b - batch.size), (0, t - ids.shape[1])))
    mask = np.pad(mask, ((0, b - batch.size), (0, t - mask.shape[1])))
    mask[batch.size:, 0] = True  # padding rows: one visible token, results discarded
    out = _scores(params, cfg, ids, mask, pooling)
    return to_rewards(np.asarray(out)[:batch.size], valid, on_invalid)

  return reward
