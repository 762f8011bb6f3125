"""Losses for SFT, reward modelling, PPO and GRPO, as small pure JAX functions.

Shapes: B sequences, T completion positions (right-padded), V vocabulary. `mask: [B, T]` (bool or
float) is nonzero on valid completion tokens and 0 on padding; a float mask acts as token weights.

Padding never leaks: inputs are replaced by zeros on padded positions *before* any exp, square or
log, so garbage there (e.g. log-probs of pad tokens) produces neither NaN values nor NaN gradients,
and an all-padding row contributes nothing. All maths runs in float32.

String options (`mode`, `kind`, `ratio_level`, ...) and `max_len`, `dual_clip` are static: pass
Python values (mark them `static_argnames` when jitting a function that forwards them).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jaxprof import config as config_lib

AggMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KLKind = Literal["k1", "k2", "k3", "k3_inv"]
KL_KINDS = config_lib.KL_ESTIMATORS
RatioLevel = Literal["token", "sequence"]
Metrics = dict[str, jax.Array]


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _weights(mask: jax.Array) -> jax.Array:
  """Mask (bool or float) -> float32 weights."""
  return jnp.asarray(mask).astype(jnp.float32)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """`num / den` where `den > 0`, else 0; the double `where` keeps the gradient finite too."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def masked_sum(x: jax.Array, mask: jax.Array, axis: int | None = None,
               keepdims: bool = False) -> jax.Array:
  """sum(x * mask) over `axis`; padded entries of x are ignored even if they are NaN/inf."""
  w = _weights(mask)
  return jnp.sum(jnp.where(w > 0, _f32(x) * w, 0.0), axis=axis, keepdims=keepdims)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | None = None,
                keepdims: bool = False) -> jax.Array:
  """Masked mean: sum(x * mask) / sum(mask) over `axis`, and 0 where the mask sums to 0.

  Args:
    x: any shape, broadcastable with `mask`.
    mask: same shape as `x` (bool or float weights).
    axis: reduction axis; None reduces everything.
  """
  w = _weights(mask)
  return safe_div(masked_sum(x, w, axis, keepdims), jnp.sum(w, axis=axis, keepdims=keepdims))


def masked_var(x: jax.Array, mask: jax.Array, ddof: int = 0) -> jax.Array:
  """Masked variance over all entries: sum(mask * (x - mean)^2) / (sum(mask) - ddof), 0 if empty."""
  w = _weights(mask)
  centred = _f32(x) - masked_mean(x, w)
  return safe_div(masked_sum(centred * centred, w), jnp.sum(w) - ddof)


def aggregate(per_token: jax.Array, mask: jax.Array, mode: AggMode = "token_mean",
              max_len: int | None = None) -> jax.Array:
  """Reduces a per-token loss to a scalar.

  With m = mask, x = per_token, both [B, T]:
    token_mean:              sum(m x) / sum(m)   (every valid token in the batch weighs the same)
    seq_mean_token_mean:     mean over rows with sum_t m > 0 of  sum_t(m x) / sum_t(m)
    seq_mean_token_sum_norm: sum(m x) / (B * max_len)   (Dr.GRPO: a constant normaliser, so
                             neither length nor the number of valid tokens biases the gradient)
  `max_len` (only used by the last mode) defaults to T. An empty batch gives 0.

  Returns:
    [] float32 scalar.
  """
  if mode == "token_mean":
    return masked_mean(per_token, mask)
  if per_token.ndim != 2:
    raise ValueError(f"aggregate mode {mode!r} needs a [B, T] per-token array, "
                     f"got {per_token.shape}")
  if mode == "seq_mean_token_mean":
    w = _weights(mask)
    per_seq = masked_mean(per_token, w, axis=-1)  # [B]
    has_tokens = (jnp.sum(w, axis=-1) > 0).astype(jnp.float32)
    return safe_div(jnp.sum(per_seq * has_tokens), jnp.sum(has_tokens))
  if mode == "seq_mean_token_sum_norm":
    norm = per_token.shape[1] if max_len is None else max_len
    if norm <= 0:
      raise ValueError(f"aggregate: max_len must be positive, got {max_len}")
    return masked_sum(per_token, mask) / (per_token.shape[0] * norm)
  raise ValueError(f"aggregate: unknown mode {mode!r}; expected one of {AGG_MODES}")


def token_nll(logprobs: jax.Array, mask: jax.Array, mode: AggMode = "token_mean",
              max_len: int | None = None) -> jax.Array:
  """SFT loss: aggregate(-logprobs, mask, mode) over completion tokens only.

  Args:
    logprobs: [B, T] log pi(y_t | prefix) of the target tokens.
    mask: [B, T] completion mask (prompt and padding are 0).
  """
  return aggregate(-_f32(logprobs), mask, mode, max_len)


def pairwise_reward_loss(r_chosen: jax.Array, r_rejected: jax.Array,
                         margin: float | jax.Array = 0.0,
                         center_coef: float = 0.0) -> tuple[jax.Array, Metrics]:
  """Bradley-Terry reward-model loss with optional margin and reward centring.

    loss = mean_i -log sigmoid(r_c_i - r_r_i - margin_i) + center_coef * mean_i (r_c_i + r_r_i)^2

  -log sigmoid is computed as -log_sigmoid (softplus form), so it is finite for any gap.

  Args:
    r_chosen, r_rejected: [B] scores of the preferred and the other text.
    margin: scalar or [B].
    center_coef: weight of the centring term that keeps rewards near 0.

  Returns:
    (loss [], metrics) with accuracy (fraction r_c > r_r), mean gap r_c - r_r, mean chosen and
    rejected scores, and the centring term.
  """
  rc, rr = _f32(r_chosen), _f32(r_rejected)
  gap = rc - rr
  bt = jnp.mean(-jax.nn.log_sigmoid(gap - _f32(margin)))
  center = jnp.mean(jnp.square(rc + rr))
  loss = bt + center_coef * center
  metrics = {
      "accuracy": jnp.mean((gap > 0).astype(jnp.float32)),
      "reward_gap": jnp.mean(gap),
      "reward_chosen": jnp.mean(rc),
      "reward_rejected": jnp.mean(rr),
      "bt_loss": bt,
      "center_loss": center,
  }
  return loss, jax.lax.stop_gradient(metrics)


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                mask: jax.Array, *, eps_low: float = 0.2, eps_high: float | None = None,
                dual_clip: float | None = None, ratio_level: RatioLevel = "token",
                agg_mode: AggMode = "token_mean",
                max_len: int | None = None) -> tuple[jax.Array, Metrics]:
  """Clipped surrogate policy loss (PPO / GRPO / DAPO clip-higher / dual clip / GSPO).

  Per valid token, with rho the ratio and A the advantage:
    l = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))
    dual clip c > 1 (Ye et al. 2020): l = min(l, c |A|) where A < 0
  then `aggregate(l, mask, agg_mode, max_len)`.

  ratio_level="token":    rho_t = exp(logp_t - old_t).
  ratio_level="sequence": GSPO; the value of rho_t is the sequence ratio
    s_i = exp(mean over valid t of (logp_t - old_t)) (geometric mean of the token ratios), written
    as rho_t = sg(s_i) * pi_t / sg(pi_t) ("GSPO-token") so token t's gradient is s_i * grad logp_t
    and is driven by its own advantage; with a per-sequence advantage and
    agg_mode="seq_mean_token_mean" this is exactly GSPO's sequence objective and gradient.

  Args:
    logprobs: [B, T] log-probs under the current policy (differentiated).
    old_logprobs: [B, T] log-probs under the sampling policy (treated as constants).
    advantages: [B] per sequence (broadcast over tokens) or [B, T] per token.
    mask: [B, T] completion mask.
    eps_low, eps_high: clip range; eps_high defaults to eps_low.
    dual_clip: None or a Python float c > 1.

  Returns:
    (loss [], metrics): clip_fraction (clipped branch active; = low + high), clip_fraction_low
    (A < 0, rho < 1 - eps_low), clip_fraction_high (A > 0, rho > 1 + eps_high),
    dual_clip_fraction, ratio_mean, approx_kl (mean of rho - 1 - log rho, a k3 estimate of
    KL(old || new)); all token-weighted over valid tokens.
  """
  if eps_high is None:
    eps_high = eps_low
  if dual_clip is not None and not dual_clip > 1.0:
    raise ValueError(f"policy_loss: dual_clip must be > 1, got {dual_clip}")
  w = _weights(mask)
  valid = w > 0
  old = jax.lax.stop_gradient(_f32(old_logprobs))
  log_ratio = jnp.where(valid, _f32(logprobs) - old, 0.0)
  if ratio_level == "sequence":
    seq_log_ratio = masked_mean(log_ratio, w, axis=-1, keepdims=True)  # [B, 1]
    log_ratio = jax.lax.stop_gradient(seq_log_ratio) + log_ratio - jax.lax.stop_gradient(log_ratio)
    log_ratio = jnp.where(valid, log_ratio, 0.0)
  elif ratio_level != "token":
    raise ValueError(f"policy_loss: ratio_level must be 'token' or 'sequence', got {ratio_level!r}")
  ratio = jnp.exp(log_ratio)

  adv = _f32(advantages)
  if adv.ndim == 1:
    adv = adv[:, None]
  adv = jnp.where(valid, jnp.broadcast_to(adv, ratio.shape), 0.0)

  loss_unclipped = -adv * ratio
  loss_clipped = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  per_token = jnp.maximum(loss_unclipped, loss_clipped)
  dual_active = jnp.zeros_like(valid)
  if dual_clip is not None:
    cap = -adv * dual_clip  # = c |A| where A < 0
    dual_active = (adv < 0) & (per_token > cap)
    per_token = jnp.where(adv < 0, jnp.minimum(per_token, cap), per_token)
  loss = aggregate(per_token, w, agg_mode, max_len)

  low = (adv < 0) & (ratio < 1.0 - eps_low)
  high = (adv > 0) & (ratio > 1.0 + eps_high)
  metrics = {
      "clip_fraction": masked_mean(low | high, w),
      "clip_fraction_low": masked_mean(low, w),
      "clip_fraction_high": masked_mean(high, w),
      "dual_clip_fraction": masked_mean(dual_active, w),
      "ratio_mean": masked_mean(ratio, w),
      "approx_kl": masked_mean(ratio - 1.0 - log_ratio, w),
  }
  return loss, jax.lax.stop_gradient(metrics)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - var(R - V) / var(R) over valid tokens; 0 when var(R) == 0 (undefined). Shapes [B, T]."""
  var_r = masked_var(returns, mask)
  var_diff = masked_var(_f32(returns) - _f32(values), mask)
  return jnp.where(var_r > 0, 1.0 - safe_div(var_diff, var_r), 0.0)


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               *, clip_eps: float | None = None, agg_mode: AggMode = "token_mean",
               max_len: int | None = None) -> tuple[jax.Array, Metrics]:
  """Critic loss, optionally clipped around the old values (PPO2).

    l_t = 0.5 (v_t - R_t)^2                                          clip_eps None
    l_t = 0.5 max((v_t - R_t)^2, (clip(v_t, vo_t - e, vo_t + e) - R_t)^2)   otherwise
  then `aggregate(l, mask, agg_mode, max_len)`.

  Args:
    values: [B, T] current critic outputs (differentiated).
    old_values: [B, T] critic outputs at sampling time.
    returns: [B, T] targets (e.g. from `advantages.gae`).
    mask: [B, T] completion mask.

  Returns:
    (loss [], metrics): value_clip_fraction, explained_variance (of R by the old values),
    value_mean, return_mean, value_mse.
  """
  w = _weights(mask)
  valid = w > 0
  v = jnp.where(valid, _f32(values), 0.0)
  v_old = jnp.where(valid, jax.lax.stop_gradient(_f32(old_values)), 0.0)
  ret = jnp.where(valid, jax.lax.stop_gradient(_f32(returns)), 0.0)
  err = jnp.square(v - ret)
  if clip_eps is None:
    per_token = 0.5 * err
    clipped = jnp.zeros_like(valid)
  else:
    err_clipped = jnp.square(jnp.clip(v, v_old - clip_eps, v_old + clip_eps) - ret)
    per_token = 0.5 * jnp.maximum(err, err_clipped)
    clipped = err_clipped > err
  loss = aggregate(per_token, w, agg_mode, max_len)
  metrics = {
      "value_clip_fraction": masked_mean(clipped, w),
      "explained_variance": explained_variance(v_old, ret, w),
      "value_mean": masked_mean(v, w),
      "return_mean": masked_mean(ret, w),
      "value_mse": masked_mean(err, w),
  }
  return loss, jax.lax.stop_gradient(metrics)


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array,
               kind: KLKind = "k1") -> jax.Array:
  """Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman's k1/k2/k3).

  With d_t = log ref(y_t) - log pi(y_t):
    k1 = -d                   unbiased, can be negative (the PPO reward penalty)
    k2 = 0.5 d^2              biased, low variance
    k3 = exp(d) - d - 1       unbiased, always >= 0 (the GRPO loss term)
    k3_inv = exp(-d) + d - 1  k3 with the ratio inverted (rho = pi / ref: rho - 1 - log rho),
                              always >= 0; its mean under pi is chi^2(pi || ref) - KL(pi || ref),
                              which equals KL(pi || ref) to second order (a length-averaged
                              per-sequence penalty in some papers)
  Gradients flow into both inputs; stop them yourself where one side is a constant.

  Args:
    logprobs, ref_logprobs: [B, T] log-probs of the sampled tokens under pi and ref.
    mask: [B, T]; the estimate is 0 on padding.

  Returns:
    [B, T] float32.
  """
  valid = _weights(mask) > 0
  d = jnp.where(valid, _f32(ref_logprobs) - _f32(logprobs), 0.0)
  if kind == "k1":
    kl = -d
  elif kind == "k2":
    kl = 0.5 * jnp.square(d)
  elif kind == "k3":
    kl = jnp.exp(d) - d - 1.0
  elif kind == "k3_inv":
    kl = jnp.exp(-d) + d - 1.0
  else:
    raise ValueError(f"kl_penalty: kind must be one of {KL_KINDS}, got {kind!r}")
  return jnp.where(valid, kl, 0.0)


def entropy_from_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-token entropy H_t = -sum_v p_v log p_v with p = softmax(logits_t), 0 on padding.

  Logits of -inf (banned tokens) are fine; padded positions are replaced by zeros before the
  softmax so garbage there cannot produce NaN. Use `masked_mean(H, mask)` for a scalar.

  Args:
    logits: [B, T, V].
    mask: [B, T].

  Returns:
    [B, T] float32.
  """
  valid = _weights(mask) > 0
  z = jnp.where(valid[..., None], _f32(logits), 0.0)
  logp = jax.nn.log_softmax(z, axis=-1)
  p = jnp.exp(logp)
  # Where p == 0 (logit -inf), p * log p is 0 * -inf; use 0 for both the value and the gradient.
  logp_safe = jnp.where(p > 0, logp, 0.0)
  ent = -jnp.sum(p * logp_safe, axis=-1)
  return jnp.where(valid, ent, 0.0)
