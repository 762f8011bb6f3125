"""KL coefficient controllers for the PPO reward penalty (Ziegler et al. 2019).

A controller is a frozen (hashable) dataclass of settings; the coefficient itself is a float32
scalar kept in the train state, so it is checkpointed and restored with everything else:

  ctl = AdaptiveKL(init_coef=0.05, target=6.0, horizon=10_000)
  coef = ctl.init()                                   # [] float32, store in the train state
  coef = ctl.update(coef, observed_kl, n_steps=batch)  # pure, jit-able
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FixedKL:
  """A constant coefficient; `update` returns it unchanged."""

  coef: float

  def __post_init__(self):
    if not self.coef >= 0:
      raise ValueError(f"FixedKL: coef must be >= 0, got {self.coef}")

  def init(self) -> jax.Array:
    """Initial coefficient, [] float32."""
    return jnp.asarray(self.coef, jnp.float32)

  def update(self, coef: jax.Array, observed_kl: jax.Array, n_steps: int | jax.Array) -> jax.Array:
    """Returns `coef` unchanged (same signature as AdaptiveKL.update)."""
    del observed_kl, n_steps
    return jnp.asarray(coef, jnp.float32)


@dataclasses.dataclass(frozen=True)
class AdaptiveKL:
  """Proportional controller that steers the observed KL towards `target`.

    error = clip(observed_kl / target - 1, -0.2, 0.2)
    coef <- coef * (1 + error * n_steps / horizon)

  `n_steps` is how many samples (or steps, consistently with `horizon`) the update covers. A
  non-finite observed KL leaves the coefficient unchanged rather than poisoning the train state.
  """

  init_coef: float
  target: float
  horizon: float

  def __post_init__(self):
    if not self.init_coef >= 0:
      raise ValueError(f"AdaptiveKL: init_coef must be >= 0, got {self.init_coef}")
    if not self.target > 0:
      raise ValueError(f"AdaptiveKL: target must be > 0, got {self.target}")
    if not self.horizon > 0:
      raise ValueError(f"AdaptiveKL: horizon must be > 0, got {self.horizon}")

  def init(self) -> jax.Array:
    """Initial coefficient, [] float32."""
    return jnp.asarray(self.init_coef, jnp.float32)

  def update(self, coef: jax.Array, observed_kl: jax.Array, n_steps: int | jax.Array) -> jax.Array:
    """New coefficient, [] float32. `observed_kl` is the batch-mean KL (per sequence, summed
    over its tokens, as in Ziegler et al.)."""
    coef = jnp.asarray(coef, jnp.float32)
    kl = jnp.asarray(observed_kl, jnp.float32)
    error = jnp.clip(kl / self.target - 1.0, -0.2, 0.2)
    new = coef * (1.0 + error * jnp.asarray(n_steps, jnp.float32) / self.horizon)
    return jnp.where(jnp.isfinite(kl), new, coef)


KLController = FixedKL | AdaptiveKL


def make_kl_controller(coef: float, target: float | None = None,
                       horizon: float = 10_000) -> KLController:
  """FixedKL(coef) when `target` is None, else AdaptiveKL(coef, target, horizon)."""
  if target is None:
    return FixedKL(coef)
  return AdaptiveKL(init_coef=coef, target=target, horizon=horizon)
