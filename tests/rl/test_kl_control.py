"""jaxprof.rl.kl_control against a plain Python version of Ziegler et al.'s controller."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.rl import kl_control


def ref_adaptive(coef, kl, n_steps, target, horizon):
  error = min(max(kl / target - 1.0, -0.2), 0.2)
  return coef * (1.0 + error * n_steps / horizon)


def test_fixed_kl_never_changes():
  ctl = kl_control.FixedKL(0.05)
  coef = ctl.init()
  assert coef.dtype == jnp.float32
  for kl in (0.0, 3.0, 1e6):
    coef = jax.jit(ctl.update)(coef, kl, 256)
  np.testing.assert_allclose(coef, 0.05, rtol=1e-7)


def test_adaptive_kl_matches_python_loop():
  ctl = kl_control.AdaptiveKL(init_coef=0.2, target=6.0, horizon=10_000)
  observed = [0.5, 6.0, 6.6, 7.0, 20.0, 1e-3, 5.5]  # below, at, inside and beyond the clip range
  update = jax.jit(ctl.update)
  coef, want = ctl.init(), 0.2
  for kl in observed:
    coef = update(coef, jnp.float32(kl), 512)
    want = ref_adaptive(want, kl, 512, 6.0, 10_000)
    np.testing.assert_allclose(coef, want, rtol=1e-5)


def test_adaptive_kl_under_scan_and_clip_bounds():
  ctl = kl_control.AdaptiveKL(init_coef=1.0, target=1.0, horizon=100)
  kls = jnp.array([100.0, 0.0, 1.1, 0.95], jnp.float32)
  _, coefs = jax.lax.scan(lambda c, kl: (ctl.update(c, kl, 10), ctl.update(c, kl, 10)),
                          ctl.init(), kls)
  want, ref = [], 1.0
  for kl in kls.tolist():
    ref = ref_adaptive(ref, kl, 10, 1.0, 100)
    want.append(ref)
  np.testing.assert_allclose(coefs, want, rtol=1e-5)
  np.testing.assert_allclose(coefs[0], 1.02, rtol=1e-6)  # error clipped at +0.2


def test_adaptive_kl_ignores_non_finite_kl():
  ctl = kl_control.AdaptiveKL(init_coef=0.1, target=6.0, horizon=10_000)
  for bad in (jnp.nan, jnp.inf):
    np.testing.assert_allclose(ctl.update(ctl.init(), bad, 64), 0.1, rtol=1e-7)


def test_controllers_are_frozen_hashable_and_validated():
  ctl = kl_control.AdaptiveKL(0.1, 6.0, 10_000)
  with pytest.raises(dataclasses.FrozenInstanceError):
    ctl.target = 1.0
  assert hash(ctl) == hash(kl_control.AdaptiveKL(0.1, 6.0, 10_000))
  for kwargs in ({"init_coef": -1.0, "target": 1.0, "horizon": 1.0},
                 {"init_coef": 0.1, "target": 0.0, "horizon": 1.0},
                 {"init_coef": 0.1, "target": 1.0, "horizon": 0.0}):
    with pytest.raises(ValueError):
      kl_control.AdaptiveKL(**kwargs)
  with pytest.raises(ValueError):
    kl_control.FixedKL(-0.1)


def test_make_kl_controller():
  assert kl_control.make_kl_controller(0.05) == kl_control.FixedKL(0.05)
  assert kl_control.make_kl_controller(0.05, target=6.0, horizon=1e4) == kl_control.AdaptiveKL(
      0.05, 6.0, 1e4)
