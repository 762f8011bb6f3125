"""A run moves between meshes: (data, fsdp, tensor) = (2,2,2) -> (8,1,1) -> (1,4,2) -> (1,1,1).

This is how a run moves between pod slices, or comes down to one host for debugging: the stage's
own resume path (`loop.run` restores onto the shardings of the state it is handed) must put every
saved bit back, laid out for the new mesh, and training must go on from there.
"""

import functools

import jax
import ml_collections
import numpy as np

from configs import common as config_common
from jaxprof import parallel
from jaxprof.models import causal_lm
from jaxprof.trainers import common, loop, policy, sft
from tests.trainers import toy

MESHES = ((2, 2, 2), (8, 1, 1), (1, 4, 2), (1, 1, 1))
STEPS_PER_MESH, BATCH = 2, 8


def _config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      checkpoint=config_common.checkpoint_config(every=STEPS_PER_MESH, keep=3),
      log=config_common.log_config(every=1000), max_nonfinite=3))


def _data() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  num, p, n = 32, 5, 6
  return {"prompt_ids": rng.integers(2, 32, (num, p)).astype(np.int32),
          "prompt_mask": np.ones((num, p), bool),
          "target_ids": rng.integers(2, 32, (num, n)).astype(np.int32),
          "target_mask": np.arange(n)[None, :] < rng.integers(1, n + 1, num)[:, None]}


def _trainer(mesh_shape: tuple[int, int, int], total: int):
  """(fresh state on this mesh, one_step) for SFT of the toy model, AdamW with a schedule."""
  mesh = parallel.make_mesh(*mesh_shape)
  tx = common.make_optimizer(config_common.optim_config(lr=3e-3, warmup=2, total_steps=total))
  params = causal_lm.init_params(toy.CFG, jax.random.key(0))
  state, shardings = common.create_state(params, causal_lm.param_axes(toy.CFG), tx, mesh, "fsdp")
  update = common.jit_update(
      common.make_update(functools.partial(sft.sft_loss, policy.PolicySpec(cfg=toy.CFG)), tx, 2,
                         "sft"), shardings)
  batcher, data = common.Batcher(32, BATCH, seed=0), _data()

  def one_step(state, step):
    batch = {k: v[batcher.indices(step)] for k, v in data.items()}
    return update(state, {}, parallel.shard_batch(batch, mesh), jax.random.fold_in(
        jax.random.key(0), step))
  return state, one_step, mesh


def _host(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_checkpoint_moves_across_meshes_bit_for_bit(tmp_path):
  assert jax.device_count() == 8
  total = STEPS_PER_MESH * len(MESHES)
  saved = None
  for i, shape in enumerate(MESHES):
    state, one_step, mesh = _trainer(shape, total)
    seen = []

    def recording_step(state, step, one_step=one_step, seen=seen):
      if not seen:  # what the loop resumed from (the step donates its input: copy it first)
        seen.append((int(state.step), _host(state), [x.sharding for x in jax.tree.leaves(state)]))
      return one_step(state, step)

    final, _ = loop.run(tmp_path / "sft", state, recording_step, STEPS_PER_MESH * (i + 1),
                        _config())
    step, restored, shardings = seen[0]
    assert step == STEPS_PER_MESH * i
    # Laid out for this mesh: every leaf on exactly its devices, kernels split where fsdp > 1.
    assert all(s.device_set == set(mesh.devices.flat) for s in shardings)
    assert any(not s.is_fully_replicated for s in shardings) == (shape[1] > 1)
    if saved is not None:
      for got, want in zip(restored, saved, strict=True):  # params, Adam moments and count, step
        np.testing.assert_array_equal(got, want)
    saved = _host(final)

  # The moved run ends where a run that never moved ends (up to the reassociation of sums that
  # a different mesh brings: not bitwise).
  state, one_step, _ = _trainer((1, 1, 1), total)
  unmoved, _ = loop.run(tmp_path / "unmoved", state, one_step, total, _config())
  for got, want in zip(saved, _host(unmoved), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
