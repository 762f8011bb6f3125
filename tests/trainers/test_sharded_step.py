"""A jitted update on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices equals the 1-device one."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from configs import common as config_common
from jaxprof import parallel
from jaxprof.models import causal_lm
from jaxprof.trainers import common, grpo, policy, sft
from tests import helpers

# Every sharded dim divides its mesh axes: embed 64 / fsdp 2, heads 4 and kv heads 2 / tensor 2,
# mlp 128 / tensor 2, vocab 128 / tensor 2.
CFG = helpers.TINY_LLAMA
B, P, N = 8, 6, 8


def rollout_batch(seed: int = 0) -> dict:
  """A synthetic GRPO batch: left-padded prompts, right-padded completions of mixed lengths."""
  rng = np.random.default_rng(seed)
  prompt_mask = np.arange(P)[None, :] >= (P - rng.integers(2, P + 1, size=B))[:, None]
  prompt_ids = np.where(prompt_mask, rng.integers(2, CFG.vocab_size, size=(B, P)), 0)
  comp_mask = np.arange(N)[None, :] < rng.integers(1, N + 1, size=B)[:, None]
  comp_ids = np.where(comp_mask, rng.integers(2, CFG.vocab_size, size=(B, N)), 0)
  return {"prompt_ids": prompt_ids.astype(np.int32), "prompt_mask": prompt_mask,
          "comp_ids": comp_ids.astype(np.int32), "comp_mask": comp_mask,
          # Names the SFT loss reads, the same tokens.
          "target_ids": comp_ids.astype(np.int32), "target_mask": comp_mask,
          "advantages": rng.normal(size=B).astype(np.float32),
          "ref_logprobs": (-np.log(CFG.vocab_size)
                           + 0.3 * rng.normal(size=(B, N))).astype(np.float32)}


def loss_and_accum(name: str, spec: policy.PolicySpec):
  if name == "sft":
    return functools.partial(sft.sft_loss, spec), 2
  # Every row its own prompt (the shared-prefix path on a mesh: tests/trainers/test_shared_prefix).
  config = ml_collections.ConfigDict()
  config_common.rl_sections(config, "grpo", steps=1, lr=1e-3, kl_coef=0.04, prompts_per_step=B,
                            group_size=1, max_new_tokens=N, max_prompt_len=P)
  return functools.partial(grpo.grpo_loss, spec, config, True), 1


def make_tx():
  return common.make_optimizer(config_common.optim_config(
      lr=1e-3, warmup=0, total_steps=10, schedule="constant", weight_decay=0.01))


def off_mesh_leaves(state, mesh) -> list[str]:
  devices = set(mesh.devices.flat)
  return [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(state)
          if x.sharding.device_set != devices]


def one_update(name: str, params, mesh, rules: str):
  """Two updates: ([(loss, grad norm)] per step, updated params on the host, sharded fraction of
  the params before and after)."""
  spec = policy.PolicySpec(cfg=CFG)
  loss_fn, accum = loss_and_accum(name, spec)
  tx = make_tx()
  state, shardings = common.create_state(params, causal_lm.param_axes(CFG), tx, mesh, rules)
  fraction = parallel.sharded_fraction(state.params)
  update = common.jit_update(common.make_update(loss_fn, tx, accum, "train"), shardings)
  batch = parallel.shard_batch(rollout_batch(), mesh)
  # Two steps: Adam's first step is ~lr * sign(grad); the second depends on the gradient values.
  metrics = []
  for step in range(2):
    state, m = update(state, {}, batch, jax.random.key(step))
    assert bool(m["train/finite"])
    metrics.append((float(m["train/loss"]), float(m["train/grad_norm"])))
  out_fraction = parallel.sharded_fraction(state.params)
  return metrics, jax.device_get(state.params), fraction, out_fraction


@pytest.mark.parametrize("name", ["sft", "grpo"])
def test_sharded_update_equals_single_device(name):
  assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
  params = helpers.tiny_params(CFG, scale=2.0)
  m1, p1, _, _ = one_update(name, params, parallel.make_mesh(data=1), "fsdp_tp")
  mesh8 = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  m8, p8, frac_in, frac_out = one_update(name, params, mesh8, "fsdp_tp")

  assert frac_in > 0.5 and frac_out > 0.5  # params (and the updated params) really are sharded
  # (loss, grad norm) of both steps.
  np.testing.assert_allclose(np.asarray(m8), np.asarray(m1), rtol=1e-5, atol=1e-5)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1),
                                                         strict=True))
  print(f"{name}: sharded fraction {frac_in:.3f} -> {frac_out:.3f}; (loss, grad norm) 1-dev "
        f"{m1} 8-dev {m8}; params max |diff| {diff:.2e}")
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1),
                                                          jax.tree.leaves(params), strict=True))
  assert moved > 1e-3  # the updates changed the params
  # Adam divides each update by sqrt(v): an entry whose gradient is at float-noise level (~1e-9)
  # gets an update that depends on that noise. So: every entry within 1e-5, except at most one in
  # a thousand, which stays within a tenth of one Adam step (lr = 1e-3).
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(p8), jax.tree.leaves(p8),
                        jax.tree.leaves(p1), strict=True):
    err = np.abs(np.asarray(a) - np.asarray(b))
    where = jax.tree_util.keystr(path[0])
    assert np.mean(err > 1e-5) <= 1e-3, (where, np.sort(err.ravel())[-5:])
    assert err.max() <= 1e-4 * 2.5, (where, err.max())


def test_create_state_puts_every_leaf_on_the_mesh():
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  tx = make_tx()
  state, shardings = common.create_state(helpers.tiny_params(CFG), causal_lm.param_axes(CFG), tx,
                                         mesh, "fsdp_tp")
  assert off_mesh_leaves(state, mesh) == []


def test_create_state_copies_params_on_a_multi_device_mesh():
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  params = helpers.tiny_params(CFG)
  state, _ = common.create_state(params, causal_lm.param_axes(CFG), make_tx(), mesh, "fsdp_tp")
  # What jit_update does to the state: donate it.
  jax.jit(lambda p: jax.tree.map(lambda x: x + 1, p), donate_argnums=0)(state.params)
  deleted = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(params)
             if x.is_deleted()]
  assert deleted == []
