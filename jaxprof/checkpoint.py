"""Saving and restoring a train state with orbax, for exact resume.

A checkpoint holds a pytree of arrays (params, optimizer state, step, PRNG keys) and a JSON dict
of host-side facts (data iterator position, adaptive KL coefficient, ...):

  ckpt = Checkpointer(workdir / "checkpoints", every=config.checkpoint.every,
                      keep=config.checkpoint.keep)
  abstract = jax.eval_shape(init_state, rng)           # then give every leaf its sharding:
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_shardings)
  if (step := ckpt.latest_step()) is not None:
    state, meta = ckpt.restore(step, abstract)
  ...
  ckpt.save(step, state, {"data_position": pos, "kl_coef": kl})   # no-op between intervals
  ckpt.close()                                                   # waits for pending writes

`directory` may be an object store URL: orbax gets it as an `epath.Path` whose `str()` is
`gs://bucket/...`, from which it builds TensorStore's kvstore spec (the `gcs` driver for `gs://`,
`file` for an absolute local path), so the arrays go straight to the bucket.

Typed PRNG keys (`jax.random.key`) are stored as their raw `key_data` and re-wrapped on
restore, so restored arrays are bitwise identical to the saved ones. Saves are synchronous:
when `save` returns True the step directory is complete on disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from jaxprof import paths

_STATE, _META, _KEYS = "state", "meta", "prng_impls"


def _is_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _path_str(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path)


def _unwrap_keys(state: Any) -> tuple[Any, dict[str, str]]:
  """Replaces typed key leaves by their uint32 key data; returns {leaf path: impl name}."""
  impls: dict[str, str] = {}

  def unwrap(path, x):
    if _is_key(x):
      impls[_path_str(path)] = str(jax.random.key_impl(x))
      return jax.random.key_data(x)
    return x

  return jax.tree_util.tree_map_with_path(unwrap, state), impls


def _key_data_abstract(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """Abstract key data for an abstract typed key, with the key's sharding extended by one dim."""
  data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (len(data.shape) - len(sharding.spec))
    sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec))
  elif sharding is not None and not sharding.is_fully_replicated:
    raise ValueError(f"cannot restore a PRNG key sharded with {sharding}; use a NamedSharding")
  return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


class Checkpointer:
  """Keeps the last `keep` checkpoints of a train state in `directory`, one every `every` steps.

  Args:
    directory: where step directories (`<step>/state`, `<step>/meta`) go; created if missing. A
      local path (made absolute: TensorStore needs one) or a `gs://` URL.
    every: `save` writes only when `step % every == 0` (or `force=True`).
    keep: how many of the newest checkpoints to keep; None keeps all.
  """

  def __init__(self, directory: str | os.PathLike, every: int = 1, keep: int | None = 3):
    if every < 1:
      raise ValueError(f"checkpoint every={every}: must be >= 1")
    if keep is not None and keep < 1:
      raise ValueError(f"checkpoint keep={keep}: must be >= 1 or None")
    self.directory = paths.absolute(directory)
    self.every = every
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # `save` applies `every` itself (orbax also saves the first step).
        max_to_keep=keep,
        # A save that died half way leaves a tmp directory; clear it rather than trip over it.
        cleanup_tmp_directories=True,
        # Synchronous: a returned save is on disk, and nothing is pending at exit.
        enable_async_checkpointing=False,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(_STATE, _META, _KEYS))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    self._manager.reload()  # Another process (or a crashed run) may have changed the directory.
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would write (without `force`)."""
    return step % self.every == 0 and step not in self._manager.all_steps()

  def save(self, step: int, state: Any, meta: Mapping[str, Any] | None = None,
           force: bool = False) -> bool:
    """Saves `state` (a pytree of arrays) and `meta` (a JSON-able dict) as checkpoint `step`.

    Returns whether a checkpoint was written: False between save intervals unless `force`, and
    False for a step that already has one.
    """
    if step in self._manager.all_steps() or not (force or step % self.every == 0):
      return False
    data, impls = _unwrap_keys(state)
    return self._manager.save(
        step,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(data),
            _META: ocp.args.JsonSave(dict(meta or {})),
            _KEYS: ocp.args.JsonSave(impls),
        }),
        force=True,  # The interval was checked above.
    )

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint `step` (None: the latest) onto `abstract_state`'s shapes/shardings.

    Args:
      step: which checkpoint.
      abstract_state: a pytree like the saved state whose leaves are `jax.ShapeDtypeStruct`s
        (from `jax.eval_shape`), with `sharding=` set where the restored arrays should live;
        the sharding may differ from the one at save time.

    Returns:
      (state, meta): arrays bitwise equal to the saved ones, and the saved JSON dict.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    impls = self._manager.restore(
        step, args=ocp.args.Composite(**{_KEYS: ocp.args.JsonRestore()}))[_KEYS]
    key_paths = set()

    def to_data(path, x):
      if _is_key(x):
        key_paths.add(_path_str(path))
        return _key_data_abstract(x)
      return x

    abstract_data = jax.tree_util.tree_map_with_path(to_data, abstract_state)
    if key_paths != set(impls):
      raise ValueError(f"checkpoint {step} in {self.directory} has PRNG keys at "
                       f"{sorted(impls)} but the abstract state has them at {sorted(key_paths)}")
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(abstract_data),
        _META: ocp.args.JsonRestore(),
    }))

    def to_key(path, x):
      impl = impls.get(_path_str(path))
      return x if impl is None else jax.random.wrap_key_data(x, impl=impl)

    state = jax.tree_util.tree_map_with_path(to_key, restored[_STATE])
    return state, dict(restored[_META] or {})

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
