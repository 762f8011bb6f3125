"""A non-finite loss or gradient skips the update; K in a row stop the loop with NonFiniteError."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common as config_common
from jaxprof import parallel, stages
from jaxprof.trainers import common, loop

DIM = 4


def loss_fn(params, frozen, batch, rng):
  """0.5 * |w - x|^2 per row; `poison` rows make the loss NaN, `kink` rows make the gradient NaN
  (the slope of sqrt|.| at 0) while the loss stays finite."""
  del frozen, rng
  diff = params["w"][None, :] - batch["x"]  # [B, DIM]
  per_row = 0.5 * jnp.sum(diff ** 2, axis=-1)
  per_row = jnp.where(batch["poison"], jnp.nan, per_row)
  # Zero-valued on kink rows (w - stop_gradient(w)) but with an infinite slope there; the where
  # is on the *input* so other rows never evaluate sqrt at 0 (inf * 0 would poison them too).
  at_kink = jnp.where(batch["kink"][:, None], params["w"] - jax.lax.stop_gradient(params["w"]),
                      1.0)
  kink = jnp.sum(jnp.sqrt(jnp.abs(at_kink)), axis=-1)
  per_row = per_row + jnp.where(batch["kink"], kink, 0.0)
  return jnp.sum(per_row), jnp.asarray(per_row.shape[0], jnp.float32), {}


def make(num_micro: int = 1):
  mesh = parallel.make_mesh(data=1)
  tx = common.make_optimizer(config_common.optim_config(lr=0.1, warmup=0, total_steps=100,
                                                        schedule="constant"))
  params = {"w": jnp.arange(DIM, dtype=jnp.float32)}
  state, shardings = common.create_state(params, {"w": (None,)}, tx, mesh, "dp")
  update = common.jit_update(common.make_update(loss_fn, tx, num_micro), shardings)
  return state, update, mesh


def batch(kind: str = "ok", rows: int = 4) -> dict:
  x = np.ones((rows, DIM), np.float32)
  poison = np.zeros(rows, bool)
  kink = np.zeros(rows, bool)
  if kind == "nan_loss":
    poison[-1] = True  # one bad row in the last micro-batch is enough
  elif kind == "nan_grad":
    kink[-1] = True
  return {"x": x, "poison": poison, "kink": kink}


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_tree_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("num_micro", [1, 2])
@pytest.mark.parametrize("kind", ["nan_loss", "nan_grad"])
def test_nonfinite_update_is_skipped(kind, num_micro):
  state, update, mesh = make(num_micro)
  state, m = update(state, {}, parallel.shard_batch(batch(), mesh), jax.random.key(0))
  assert bool(m["train/finite"]) and int(state.skipped) == 0
  before_params, before_opt = host(state.params), host(state.opt_state)

  state, m = update(state, {}, parallel.shard_batch(batch(kind), mesh), jax.random.key(1))
  if kind == "nan_grad":
    assert np.isfinite(float(m["train/loss"]))  # only the gradient is bad
  assert not bool(m["train/finite"])
  assert int(state.step) == 2 and int(state.skipped) == 1 and int(m["train/skipped"]) == 1
  assert_tree_equal(host(state.params), before_params)  # bitwise unchanged
  assert_tree_equal(host(state.opt_state), before_opt)  # Adam moments and count too

  state, m = update(state, {}, parallel.shard_batch(batch(), mesh), jax.random.key(2))
  assert bool(m["train/finite"]) and int(state.step) == 3 and int(state.skipped) == 1
  assert not np.array_equal(host(state.params)["w"], before_params["w"])  # training goes on


def loop_config(max_nonfinite: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = config_common.checkpoint_config(every=1000, keep=1)
  c.log = config_common.log_config(every=1000)
  c.max_nonfinite = max_nonfinite
  return c


def run_loop(tmp_path, bad_steps: set[int], total: int, k: int):
  state, update, mesh = make()

  def one_step(state, step):
    return update(state, {}, parallel.shard_batch(batch("nan_loss" if step in bad_steps else "ok"),
                                                  mesh), jax.random.key(step))

  return loop.run(tmp_path / "stage", state, one_step, total, loop_config(k))


def test_k_consecutive_nonfinite_steps_raise(tmp_path):
  k = 3
  # 0-based steps 2, 3, 4 are bad: the loop logs steps 1-based, so the third bad one is step 5.
  with pytest.raises(stages.NonFiniteError, match=r"step 5: 'train/loss' is not finite") as e:
    run_loop(tmp_path, {2, 3, 4}, total=10, k=k)
  assert (e.value.step, e.value.term, e.value.consecutive) == (5, "train/loss", k)


def test_fewer_than_k_in_a_row_do_not_raise(tmp_path):
  # Two bad steps, a good one, two bad ones: never 3 in a row.
  state, last = run_loop(tmp_path, {1, 2, 4, 5}, total=8, k=3)
  assert int(state.step) == 8 and int(state.skipped) == 4
  assert last["train/finite"] == 1.0 and last["train/skipped"] == 4.0
