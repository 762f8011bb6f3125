"""Advantages: GAE for PPO (per token) and group-relative baselines for GRPO / Dr.GRPO / RLOO.

Shapes: B sequences (or prompts), T completion positions (right-padded), G completions per prompt.
`mask: [B, T]` is nonzero on valid completion tokens. Everything is jit-able; string options are
static Python values. Rewards that are missing (a reward function returned None) are carried as a
`valid` mask: they are left out of every statistic and get advantage 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof.rl.losses import masked_mean, masked_var, safe_div

GroupMethod = Literal["grpo", "dr_grpo", "rloo"]
GroupScale = Literal["group", "batch", "none"]
_DEFAULT_SCALE = {"grpo": "group", "dr_grpo": "none", "rloo": "none"}


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over right-padded sequences (reverse `lax.scan`).

  Over the valid tokens t of a row, with V after the last valid token taken as 0 (the episode
  ends there: no bootstrap):
    delta_t = r_t + gamma V_{t+1} - V_t
    A_t     = delta_t + gamma lam A_{t+1}
    R_t     = A_t + V_t
  Padded positions get A = R = 0 and are skipped by the recursion ("next" means the next valid
  token), so a mask with holes behaves as if the holes were removed.

  Args:
    rewards: [B, T] per-token rewards (e.g. `sequence_reward_to_token_rewards`).
    values: [B, T] critic values at sampling time.
    mask: [B, T] completion mask.
    gamma, lam: discount and GAE lambda (floats or traced scalars).

  Returns:
    (advantages [B, T], returns [B, T]) float32, zero on padding; no gradient flows back.
  """
  valid = jnp.asarray(mask).astype(jnp.float32) > 0
  r = jnp.where(valid, jnp.asarray(rewards, jnp.float32), 0.0)
  v = jnp.where(valid, jnp.asarray(values, jnp.float32), 0.0)
  r, v = jax.lax.stop_gradient(r), jax.lax.stop_gradient(v)

  def step(carry, xs):
    next_value, next_adv = carry
    r_t, v_t, m_t = xs
    adv = r_t + gamma * next_value - v_t + gamma * lam * next_adv
    carry = (jnp.where(m_t, v_t, next_value), jnp.where(m_t, adv, next_adv))
    return carry, jnp.where(m_t, adv, 0.0)

  zeros = jnp.zeros(r.shape[0], jnp.float32)
  _, adv_tb = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, valid.T), reverse=True)
  adv = adv_tb.T
  return adv, jnp.where(valid, adv + v, 0.0)


def sequence_advantages(scores: jax.Array, kl_per_token: jax.Array, mask: jax.Array,
                        kl_coef: float | jax.Array, prompt_values: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
  """One advantage per sequence: the reward minus the critic's value of the prompt alone.

    r_i = score_i - kl_coef * mean over valid t of kl_it      (a length-averaged KL penalty)
    a_i = r_i - V(prompt_i)

  Args:
    scores: [B] sequence scores.
    kl_per_token: [B, T] per-token KL estimates (`losses.kl_penalty`).
    mask: [B, T] completion mask.
    kl_coef: scalar.
    prompt_values: [B] the critic's value after reading the prompt (before completion token 0).

  Returns:
    (advantages [B], returns r [B]) float32.
  """
  w = jnp.asarray(mask).astype(jnp.float32)
  kl = jnp.where(w > 0, jnp.asarray(kl_per_token, jnp.float32), 0.0)
  n = jnp.sum(w, axis=-1)
  kl_mean = jnp.where(n > 0, jnp.sum(kl * w, axis=-1) / jnp.maximum(n, 1.0), 0.0)
  returns = jnp.asarray(scores, jnp.float32) - kl_coef * kl_mean
  return returns - jnp.asarray(prompt_values, jnp.float32), returns


def sequence_reward_to_token_rewards(scores: jax.Array, mask: jax.Array,
                                     kl_per_token: jax.Array | None = None,
                                     kl_coef: float | jax.Array = 0.0) -> jax.Array:
  """PPO per-token reward (InstructGPT-style): the score on the last token, a KL penalty on all.

    r_t = score * [t == last valid token] - kl_coef * kl_t * mask_t

  Args:
    scores: [B] sequence scores (reward model, rule rewards...).
    mask: [B, T] completion mask; an all-padding row gets no score.
    kl_per_token: [B, T] or None, e.g. `losses.kl_penalty(logp, ref_logp, mask, "k1")`.
    kl_coef: scalar (Python or traced, e.g. from a KL controller).

  Returns:
    [B, T] float32.
  """
  valid = jnp.asarray(mask).astype(jnp.float32) > 0
  t = valid.shape[1]
  last = t - 1 - jnp.argmax(valid[:, ::-1], axis=1)  # [B] index of the last valid token
  at_last = (jnp.arange(t)[None, :] == last[:, None]) & jnp.any(valid, axis=1, keepdims=True)
  rewards = jnp.where(at_last, jnp.asarray(scores, jnp.float32)[:, None], 0.0)
  if kl_per_token is not None:
    kl = jnp.where(valid, jnp.asarray(kl_per_token, jnp.float32), 0.0)
    rewards = rewards - kl_coef * kl
  return rewards


def group_advantages(rewards: jax.Array, valid: jax.Array | None = None, *, group_size: int,
                     method: GroupMethod = "grpo", std_ddof: int = 0, eps: float = 1e-6,
                     scale: GroupScale | None = None) -> jax.Array:
  """Group-relative advantages of G completions per prompt (outcome rewards, one per sequence).

  Over the valid members j of a group of n valid rewards r_j:
    centring, method="grpo" or "dr_grpo":  c_i = r_i - mean_j r_j
    centring, method="rloo":               c_i = r_i - mean_{j != i} r_j = n / (n - 1) (r_i - mean)
    scale="group": A_i = c_i / (std_j r_j + eps)     (GRPO; std with `std_ddof`)
    scale="batch": A_i = c_i / (std of c over the valid batch + eps)   (REINFORCE++-baseline style)
    scale="none":  A_i = c_i                          (Dr.GRPO, RLOO)
  `scale` defaults to "group" for grpo and "none" for dr_grpo / rloo. Invalid members, and every
  member of a group with fewer than 2 valid rewards, get A = 0. A group of equal rewards gives
  exactly 0 (rewards are shifted by the group max before averaging, so the float32 mean of equal
  values cannot leave a residue that the division by std + eps would amplify).

  Args:
    rewards: [B * G] (groups contiguous) or [B, G] float.
    valid: same shape, bool; False where the reward was None. None means all valid.
    group_size: G.

  Returns:
    advantages with the shape of `rewards`, float32.
  """
  if method not in _DEFAULT_SCALE:
    raise ValueError(f"group_advantages: method must be one of {tuple(_DEFAULT_SCALE)}, "
                     f"got {method!r}")
  scale = _DEFAULT_SCALE[method] if scale is None else scale
  if scale not in ("group", "batch", "none"):
    raise ValueError(f"group_advantages: scale must be 'group', 'batch' or 'none', got {scale!r}")
  if method == "dr_grpo" and scale == "group":
    raise ValueError("group_advantages: dr_grpo means no group-std scaling; use method='grpo'")
  r = jnp.asarray(rewards, jnp.float32)
  shape = r.shape
  if r.ndim == 1 and r.shape[0] % group_size == 0:
    r = r.reshape(-1, group_size)
  elif r.ndim != 2 or r.shape[1] != group_size:
    raise ValueError(f"group_advantages: rewards of shape {shape} do not split into groups of "
                     f"group_size={group_size}")
  ok = jnp.ones(r.shape, bool) if valid is None else jnp.asarray(valid, bool).reshape(r.shape)

  n = jnp.sum(ok, axis=1, keepdims=True).astype(jnp.float32)  # [B, 1]
  ref = jnp.max(jnp.where(ok, r, -jnp.inf), axis=1, keepdims=True)
  d = jnp.where(ok, r - jnp.where(n > 0, ref, 0.0), 0.0)  # shifted rewards, 0 if invalid
  d_sum = jnp.sum(d, axis=1, keepdims=True)
  d_mean = safe_div(d_sum, n)
  if method == "rloo":
    centred = d - safe_div(d_sum - d, n - 1.0)
  else:
    centred = d - d_mean
  usable = ok & (n >= 2)
  centred = jnp.where(usable, centred, 0.0)

  if scale == "group":
    dev = jnp.where(ok, d - d_mean, 0.0)
    std = jnp.sqrt(safe_div(jnp.sum(dev * dev, axis=1, keepdims=True), n - std_ddof))
    adv = centred / (std + eps)
  elif scale == "batch":
    adv = centred / (jnp.sqrt(masked_var(centred, usable, ddof=std_ddof)) + eps)
  else:
    adv = centred
  return jax.lax.stop_gradient(jnp.where(usable, adv, 0.0).reshape(shape))


def weight_groups(advantages: jax.Array | np.ndarray, weights: jax.Array | np.ndarray,
                  group_size: int) -> jax.Array:
  """A_i * w_g: each prompt's weight [B] on its group's G advantages [B * G] (groups contiguous).

  Group normalisation removes any per-prompt constant from the rewards (c r has the same
  (r - mean) / std as r); a weight applied here survives it, so prompts whose outcome says more
  (e.g. a mixed engagement log) move the policy more. Weights must be finite and >= 0.
  """
  a = jnp.asarray(advantages, jnp.float32)
  w = jnp.asarray(weights, jnp.float32)
  if a.ndim != 1 or w.ndim != 1 or a.shape[0] != w.shape[0] * group_size:
    raise ValueError(f"weight_groups: advantages {a.shape} and weights {w.shape} do not match "
                     f"group_size={group_size} (expected [B * G] and [B])")
  return jax.lax.stop_gradient(a * jnp.repeat(w, group_size))


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
  """Masked whitening of PPO advantages over all valid tokens of the batch.

    y = (x - mean) / sqrt(var + eps)     (+ mean again if shift_mean is False)
  with mean and (ddof 0) var over valid entries; y = 0 on padding and for an empty batch.

  Args:
    x: [B, T] (or any shape matching mask).
    mask: same shape.
  """
  valid = jnp.asarray(mask).astype(jnp.float32) > 0
  x = jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)
  mean = masked_mean(x, valid)
  y = (x - mean) * jax.lax.rsqrt(masked_var(x, valid) + eps)
  if not shift_mean:
    y = y + mean
  return jnp.where(valid, y, 0.0)


def rewards_to_arrays(rewards: Sequence[float | None] | Sequence[Sequence[float | None]]
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Host-side: a (possibly nested) list of rewards with None -> (values float32, valid bool).

  None becomes value 0 with valid False. A NaN or infinite reward is a bug in a reward function
  and raises ValueError naming its index.
  """
  table = np.asarray(rewards, dtype=object)
  valid = np.array([x is not None for x in table.flat], bool).reshape(table.shape)
  values = np.array([0.0 if x is None else float(x) for x in table.flat],
                    np.float32).reshape(table.shape)
  bad = np.argwhere(valid & ~np.isfinite(values))
  if len(bad):
    index = tuple(int(i) for i in bad[0])
    raise ValueError(f"rewards_to_arrays: reward at index {index} is {table[index]}")
  return values, valid
