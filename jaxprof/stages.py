"""Running a config's stages in order, resuming after a crash, and guarding steps against NaN.

A config lists its stages, e.g. `config.stages = ("sft", "reward_model", "ppo", "eval")`.
`run_stages` runs each in `workdir/<stage>/`. A stage that returns marks itself complete with
`workdir/<stage>/DONE.json` (its outputs: exported model paths, final metrics). Re-running the same
command skips complete stages (their recorded outputs feed later stages) and re-enters the first
incomplete one, which resumes from its own checkpoints.

The workdir may be a local directory or an object store URL (`gs://bucket/runs/x`): every path
goes through `jaxprof.paths`. Process 0 writes DONE.json; all processes meet at a barrier after
each stage, so the next stage reads what process 0 wrote. Also here: `atomic_write_text` /
`atomic_write_json` (from `jaxprof.paths`: a reader never sees half a file) and `NonFiniteGuard` /
`select_if_finite` (skip a non-finite update, fail after K in a row).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxprof import paths

# Every stage name a config may list; `jaxprof.config.validate` checks `config.stages` against it.
STAGE_NAMES = ("sft", "reward_model", "ppo", "grpo", "eval")
DONE_FILE = "DONE.json"



@dataclasses.dataclass(frozen=True)
class Context:
  """What every stage of one run shares, built once by the entry point and passed to each stage.

  config: the run's (locked) config; system: its paper's `jaxprof.systems.System`; mesh: the
  device mesh every stage shards over.
  """

  config: Any
  system: Any = None
  mesh: Any = None


# A stage: (context, its own directory, outputs of earlier stages by name) -> JSON-able outputs.
StageFn = Callable[[Context, epath.Path, Mapping[str, Mapping[str, Any]]], Mapping[str, Any]]


# Atomic file writes, kept here for the callers that import them from `stages`.
atomic_write_text = paths.atomic_write_text
atomic_write_json = paths.atomic_write_json


# ---------------------------------------------------------------------------------------------
# The stage runner.
# ---------------------------------------------------------------------------------------------


class StageError(ValueError):
  """A config names stages the runner cannot run."""


def check_stages(stages: Sequence[str], registry: Mapping[str, StageFn]) -> tuple[str, ...]:
  """Checks stage names before anything runs; returns them as a tuple."""
  if isinstance(stages, str):  # ("sft") instead of ("sft",) is an easy slip.
    stages = (stages,)
  stages = tuple(stages)
  if not stages:
    raise StageError("config.stages is empty: nothing to run")
  unknown = [s for s in stages if s not in registry]
  if unknown:
    raise StageError(f"unknown stage(s) {unknown} in config.stages={stages}; "
                     f"valid stages are: {', '.join(registry)}")
  repeated = sorted({s for s in stages if stages.count(s) > 1})
  if repeated:
    raise StageError(f"stage(s) {repeated} listed twice in config.stages={stages}: each stage "
                     "owns one directory")
  return stages


def read_done(stage_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The contents of `stage_dir/DONE.json`, or None if the stage has not completed."""
  path = paths.as_path(stage_dir) / DONE_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:  # Written atomically, so this means a hand edit.
    raise StageError(f"{path} is not valid JSON ({e}); delete it to re-run the stage") from e


def run_stages(
    ctx: Context,
    workdir: str | os.PathLike,
    registry: Mapping[str, StageFn],
    stages: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
  """Runs `stages` (default `config.stages`) in order, skipping the ones already complete.

  Args:
    ctx: the run's context, passed unchanged to every stage (`ctx.config.stages` lists them).
    workdir: the run's directory (a local path or a `gs://` URL); stage `name` works in
      `workdir/name/`.
    registry: stage name -> function `(ctx, stage_dir, inputs) -> outputs`, where `inputs`
      maps each earlier stage's name to its outputs, and `outputs` is a JSON-able dict.
    stages: overrides `config.stages`.

  Returns:
    Stage name -> outputs, for every stage listed.

  Raises:
    StageError: unknown or repeated stage names (before any stage runs).
  """
  config = ctx.config
  stages = check_stages(config.stages if stages is None else stages, registry)
  workdir = paths.as_path(workdir)
  outputs: dict[str, dict[str, Any]] = {}
  for name in config.stages:  # stages not asked for still feed their recorded outputs forward
    done = read_done(workdir / name) if name not in stages else None
    if done is not None:
      outputs[name] = dict(done.get("outputs", {}))
  for name in stages:
    stage_dir = workdir / name
    done = read_done(stage_dir)
    if done is not None:
      logging.info("Stage %r already complete (%s); skipping. Delete %s to re-run it.",
                   name, done.get("finished"), stage_dir / DONE_FILE)
      outputs[name] = dict(done.get("outputs", {}))
      continue
    resuming = stage_dir.exists()
    stage_dir.mkdir(parents=True, exist_ok=True)
    logging.info("Stage %r: %s in %s", name, "resuming" if resuming else "starting", stage_dir)
    start = time.time()
    result = registry[name](ctx, stage_dir, dict(outputs))
    result = dict(result or {})
    record = {
        "stage": name,
        "outputs": result,
        "seconds": round(time.time() - start, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if jax.process_index() == 0:  # One writer on a shared filesystem.
      atomic_write_json(stage_dir / DONE_FILE, record)
    if jax.process_count() > 1:  # The next stage may read what process 0 wrote in this one.
      multihost_utils.sync_global_devices(f"jaxprof stage {name} done")
    outputs[name] = result
    logging.info("Stage %r complete in %.1f s.", name, record["seconds"])
  return outputs


# ---------------------------------------------------------------------------------------------
# Non-finite guard.
# ---------------------------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
  """Too many consecutive steps produced a non-finite term."""

  def __init__(self, step: int, term: str, consecutive: int):
    self.step, self.term, self.consecutive = step, term, consecutive
    super().__init__(f"step {step}: {term!r} is not finite ({consecutive} consecutive "
                     "non-finite steps, updates skipped); stopping")


def finite_flags(terms: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Per-term `all(isfinite(x))` flags, for use inside a jitted step. Keys are kept."""
  return {k: jnp.all(jnp.isfinite(v)) for k, v in terms.items()}


def all_finite(tree: Any) -> jax.Array:
  """True iff every floating leaf of `tree` is finite (e.g. all gradients). Scalar bool."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select_if_finite(new_state: Any, old_state: Any, is_finite: Any) -> Any:
  """`new_state` where `is_finite` (a scalar bool), else `old_state`, leaf by leaf.

  Use it inside the jitted step so a non-finite update is skipped without a host round trip.
  Works for typed PRNG key leaves too.
  """
  pred = jnp.asarray(is_finite, dtype=bool)
  return jax.tree.map(lambda n, o: jax.lax.select(pred, n, o), new_state, old_state)


class NonFiniteGuard:
  """Counts skipped (non-finite) updates; raises after `max_consecutive` in a row.

  The step loop calls `guard(step, flags)` once per step with a dict term -> finiteness, either
  bool flags (e.g. from `finite_flags`) or the values themselves (checked with `isfinite`).
  All values are fetched with a single `jax.device_get`.
  """

  def __init__(self, max_consecutive: int = 5):
    if max_consecutive < 1:
      raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
    self.max_consecutive = max_consecutive
    self.consecutive = 0
    self.skipped = 0

  def __call__(self, step: int, terms: Mapping[str, Any]) -> bool:
    """Returns True if every term is finite (the update was applied)."""
    host = jax.device_get(dict(terms))
    bad = None
    for name, value in host.items():
      value = np.asarray(value)
      ok = bool(value.all()) if value.dtype == bool else bool(np.isfinite(value).all())
      if not ok:
        bad = name
        break
    if bad is None:
      self.consecutive = 0
      return True
    self.consecutive += 1
    self.skipped += 1
    logging.warning("step %d: %r is not finite; update skipped (%d in a row, %d in total)",
                    step, bad, self.consecutive, self.skipped)
    if self.consecutive >= self.max_consecutive:
      raise NonFiniteError(step, bad, self.consecutive)
    return False
