"""The outer loop every stage shares: resume, step, guard, log, checkpoint.

A stage supplies `one_step(state, step) -> (state, metrics)` (rollout + update for RL, one batch
for SFT). Everything the loop needs to resume exactly is in the checkpoint: the state pytree (with
the step) and, because batches and PRNG keys are functions of the step, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from absl import logging
from etils import epath

from jaxprof import checkpoint, metrics, stages


def restore_or_init(stage_dir: epath.Path, state: Any, ckpt_config
                    ) -> tuple[Any, int, checkpoint.Checkpointer]:
  """Restores the latest checkpoint of this stage onto `state`'s shardings, if there is one."""
  ckpt = checkpoint.Checkpointer(stage_dir / "checkpoints", every=ckpt_config.every,
                                 keep=ckpt_config.keep)
  latest = ckpt.latest_step()
  if latest is None:
    return state, 0, ckpt
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  state, _ = ckpt.restore(latest, abstract)
  logging.info("resumed %s at step %d", stage_dir.name, latest)
  return state, latest, ckpt


def run(stage_dir: epath.Path, state: Any, one_step: Callable[[Any, int], tuple[Any, dict]],
        total_steps: int, config, show: tuple[str, ...] = ("train/loss",)) -> tuple[Any, dict]:
  """Runs steps [resumed, total_steps); returns the final state and the last step's metrics."""
  state, start, ckpt = restore_or_init(stage_dir, state, config.checkpoint)
  guard = stages.NonFiniteGuard(config.max_nonfinite)
  last: dict[str, float] = {}
  timer = metrics.StepTimer()
  with metrics.MetricWriter.for_stage(stage_dir, total_steps, show=show, start_step=start,
                                      log_every=config.log.every) as writer:
    for step in range(start, total_steps):
      state, step_metrics = one_step(state, step)
      values = metrics.to_floats(step_metrics)
      terms = {k.rsplit("/", 1)[0] + "/loss" if k.endswith("/finite") else k: bool(v)
               for k, v in values.items() if k.endswith("/finite")}
      guard(step + 1, terms)
      values |= timer.lap(step + 1, tokens=int(values.get("perf/tokens", 0)) or None)
      last = writer.write(step + 1, values)
      if ckpt.save(step + 1, state, force=step + 1 == total_steps):
        writer.flush()  # the metrics up to a checkpoint are in the workdir with it
    ckpt.wait()
    ckpt.close()
  return state, last
