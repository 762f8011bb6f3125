"""Shared by the RL composition tests: float64 numpy references of the RL maths and small
builders of configs and rollout batches on the tiny models."""

import functools

import jax
import ml_collections
import numpy as np

from configs import common as config_common
from jaxprof.models import causal_lm
from tests import helpers

CFG = helpers.TINY_LLAMA
PROMPTS = [[5, 17, 33, 60, 2, 9, 41], [12, 80, 7]]  # left-padded: different lengths
G = 2

# ------------------------------------------------------------------ float64 numpy references


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def full_sequence(prompt_ids, prompt_mask, comp_ids, comp_mask):
  return (np.concatenate([np.asarray(prompt_ids), np.asarray(comp_ids)], 1).astype(np.int32),
          np.concatenate([np.asarray(prompt_mask), np.asarray(comp_mask)], 1).astype(bool))


@functools.partial(jax.jit, static_argnums=1)
def full_logits(params, cfg, tokens, mask):
  """Float32 logits [B, T, V] of one plain forward over whole sequences (no cache, no prefix)."""
  return causal_lm.logits(params, cfg, causal_lm.forward(params, cfg, tokens, mask)[0])


def reference_logprobs(params, cfg, prompt_ids, prompt_mask, comp_ids, comp_mask,
                       temperature=1.0):
  """log softmax(logits / T) of each completion token, from ONE forward of prompt + completion;
  the logits predicting completion token t sit at position P - 1 + t."""
  tokens, mask = full_sequence(prompt_ids, prompt_mask, comp_ids, comp_mask)
  logp = np_log_softmax(np.asarray(full_logits(params, cfg, tokens, mask), np.float64)
                        / temperature)
  p, n = np.asarray(prompt_ids).shape[1], np.asarray(comp_ids).shape[1]
  rows = np.arange(tokens.shape[0])[:, None]
  return logp[rows, p - 1 + np.arange(n)[None], np.asarray(comp_ids)]


def np_gae(rewards, values, mask, gamma, lam):
  adv, ret = np.zeros(rewards.shape), np.zeros(rewards.shape)
  for i in range(rewards.shape[0]):
    next_v = next_a = 0.0
    for t in reversed(np.flatnonzero(mask[i])):
      a = rewards[i, t] + gamma * next_v - values[i, t] + gamma * lam * next_a
      adv[i, t], ret[i, t] = a, a + values[i, t]
      next_v, next_a = values[i, t], a
  return adv, ret


def np_ppo_chain(logp, ref_logp, values, mask, scores, kl_coef, gamma, lam, whiten=True):
  """(kl, token rewards, advantages, returns, summed-per-sequence KL mean) in float64."""
  m = np.asarray(mask, bool)
  logp, ref_logp = np.asarray(logp, np.float64), np.asarray(ref_logp, np.float64)
  kl = np.where(m, logp - ref_logp, 0.0)  # k1 = log pi - log ref
  rewards = -kl_coef * kl
  for i in range(m.shape[0]):
    valid = np.flatnonzero(m[i])
    if len(valid):
      rewards[i, valid[-1]] += scores[i]
  adv, ret = np_gae(rewards, np.where(m, np.asarray(values, np.float64), 0.0), m, gamma, lam)
  if whiten:
    mean, var = adv[m].mean(), adv[m].var()
    adv = np.where(m, (adv - mean) / np.sqrt(var + 1e-8), 0.0)
  return kl, rewards, adv, ret, kl.sum(-1).mean()


def np_adaptive_kl(coef, observed_kl, n_steps, target, horizon):
  error = np.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return coef * (1.0 + error * n_steps / horizon)


def max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def rl_config(algo="grpo", agg_mode="token_mean", kl_coef=0.04, group_size=G, max_new_tokens=16):
  config = ml_collections.ConfigDict()
  config_common.rl_sections(config, algo, steps=2, lr=1e-2, kl_coef=kl_coef, prompts_per_step=2,
                            group_size=group_size, max_new_tokens=max_new_tokens,
                            max_prompt_len=16)
  config.rl.agg_mode = agg_mode
  return config


def group_batch(prompts, comp_lens, vocab, width=None, seed=0) -> dict:
  """Rows in groups of len(comp_lens) / len(prompts) sharing a prompt (rollout order), prompts
  left-padded, completions right-padded to `width` with the given lengths."""
  rng = np.random.default_rng(seed)
  g = len(comp_lens) // len(prompts)
  width = width or max(comp_lens)
  p_ids, p_mask = (np.repeat(np.asarray(x), g, 0) for x in helpers.left_padded(prompts))
  c_mask = np.arange(width)[None] < np.asarray(comp_lens)[:, None]
  c_ids = np.where(c_mask, rng.integers(2, vocab, (len(comp_lens), width)), 0).astype(np.int32)
  return {"prompt_ids": p_ids, "prompt_mask": p_mask, "comp_ids": c_ids, "comp_mask": c_mask}
