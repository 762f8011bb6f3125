"""Tests for jaxprof/checkpoint.py: exact round trip, resharding, retention, crash leftovers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxprof.checkpoint import Checkpointer


def _state(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "params": {
          "w": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32),
          "emb": jnp.asarray(rng.standard_normal((16, 8)), jnp.bfloat16),
      },
      "opt": {"mu": jnp.asarray(rng.standard_normal((8, 16)) * 1e-30, jnp.float32),
              "count": jnp.int32(17)},
      "step": jnp.int32(42),
      "rng": jax.random.key(seed),
      "rngs": jax.random.split(jax.random.key(seed + 1), 8),
      "bits": jnp.asarray(rng.integers(0, 2**32, (4,), dtype=np.uint32)),
  }


def _bits(x: jax.Array) -> np.ndarray:
  """Raw bits of an array (key data for typed keys), to compare bit for bit."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = np.asarray(jax.device_get(x))
  return np.atleast_1d(x).view(np.uint8)


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(_bits(x), _bits(y))


def test_round_trip_bitwise(tmp_path):
  state = _state()
  meta = {"data_position": 123, "kl_coef": 0.0123456789, "note": "x"}
  ckpt = Checkpointer(tmp_path / "ckpt", every=1, keep=2)
  assert ckpt.latest_step() is None
  assert ckpt.save(5, state, meta)
  assert not ckpt.save(5, state, meta)  # Already saved.
  ckpt.close()

  ckpt = Checkpointer(tmp_path / "ckpt")  # A fresh process.
  assert ckpt.latest_step() == 5
  restored, restored_meta = ckpt.restore(5, jax.eval_shape(lambda: state))
  _assert_bitwise_equal(restored, state)
  assert restored_meta == meta
  assert jax.random.key_impl(restored["rng"]) == jax.random.key_impl(state["rng"])
  # Typed keys restored as keys: they keep producing the same numbers.
  np.testing.assert_array_equal(jax.random.normal(restored["rng"], (3,)),
                                jax.random.normal(state["rng"], (3,)))
  ckpt.close()


def test_restore_onto_other_sharding(tmp_path):
  assert jax.device_count() == 8
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"),
                           axis_types=(AxisType.Auto,) * 2)
  state = _state(1)
  # Saved sharded one way ...
  state["params"]["w"] = jax.device_put(state["params"]["w"], NamedSharding(mesh, P("data")))
  ckpt = Checkpointer(tmp_path / "ckpt")
  ckpt.save(1, state, {})
  ckpt.wait()
  # ... restored another way.
  specs = {"params": {"w": P("fsdp", "data"), "emb": P(None, ("data", "fsdp"))},
           "opt": {"mu": P(), "count": P()}, "step": P(), "rng": P(), "rngs": P("data"),
           "bits": P("fsdp")}
  abstract = jax.tree.map(
      lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)),
      jax.eval_shape(lambda: state), specs)
  restored, _ = ckpt.restore(None, abstract)
  _assert_bitwise_equal(restored, state)
  assert restored["params"]["w"].sharding.spec == P("fsdp", "data")
  assert restored["params"]["emb"].sharding.spec == P(None, ("data", "fsdp"))
  assert restored["rngs"].sharding.spec == P("data")
  ckpt.close()


def test_interval_and_keep(tmp_path):
  state = {"x": jnp.arange(4.0)}
  ckpt = Checkpointer(tmp_path, every=2, keep=2)
  written = [s for s in range(1, 8) if ckpt.save(s, {"x": state["x"] + s}, {"s": s})]
  assert written == [2, 4, 6]
  assert ckpt.save(7, state, force=True)  # The final step is saved regardless of the interval.
  assert ckpt.all_steps() == [6, 7]
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["6", "7"]
  restored, meta = ckpt.restore(6, jax.eval_shape(lambda: state))
  np.testing.assert_array_equal(restored["x"], np.arange(4.0) + 6)
  assert meta == {"s": 6}
  ckpt.close()


def test_leftover_tmp_dir_from_crash(tmp_path):
  state = {"x": jnp.arange(3.0)}
  ckpt = Checkpointer(tmp_path, keep=3)
  ckpt.save(1, state)
  ckpt.close()
  # A save of step 2 that died half way: orbax writes into a tmp directory, renamed when done.
  tmp = tmp_path / "2.orbax-checkpoint-tmp-1234567890"
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "partial").write_bytes(b"\0" * 10)
  ckpt = Checkpointer(tmp_path, keep=3)
  assert ckpt.latest_step() == 1
  assert ckpt.all_steps() == [1]
  assert ckpt.save(2, {"x": state["x"] * 2})  # The step can be saved again.
  assert ckpt.latest_step() == 2
  restored, _ = ckpt.restore(2, jax.eval_shape(lambda: state))
  np.testing.assert_array_equal(restored["x"], np.arange(3.0) * 2)
  ckpt.close()


def test_restore_errors(tmp_path):
  ckpt = Checkpointer(tmp_path)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(None, {"x": jax.ShapeDtypeStruct((2,), jnp.float32)})
  ckpt.save(1, {"k": jax.random.key(0)})
  with pytest.raises(ValueError, match="PRNG keys"):  # Key in the checkpoint, array expected.
    ckpt.restore(1, {"k": jax.ShapeDtypeStruct((2,), jnp.uint32)})
  ckpt.close()
  with pytest.raises(ValueError, match="every"):
    Checkpointer(tmp_path, every=0)
