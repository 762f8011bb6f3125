"""Per-step metrics to TensorBoard, a JSONL file and the console.

  writer = MetricWriter(workdir, "ppo", total_steps=config.optim.total_steps,
                        show=("train/loss", "reward/total"), start_step=restored_step)
  timer = StepTimer()
  for step in range(start + 1, total + 1):
    state, metrics = update(state, batch, rng)
    writer.write(step, {**metrics, **timer.lap(step, tokens=num_tokens)})
  writer.close()

Names are namespaced (`train/loss`, `rl/kl`, `reward/length`). Each `write` fetches the whole
dict from the device once, then writes
  * TensorBoard scalars to `workdir/tb/<stage>/` (tensorboardX),
  * one JSON line `{"step": s, "time": t, name: value, ...}` to `workdir/<stage>/metrics.jsonl`,
    flushed at once; non-finite values are written as null,
  * a tqdm bar with ETA and the `show` metrics, or, without a TTY (or with CI set), an absl
    log line every `log_every` steps.
On resume (`start_step=s`), JSONL lines after step s are dropped and TensorBoard is told to
discard events after s, so neither holds a step twice. Only process 0 writes. On an object store
workdir (`gs://`), where nothing can be appended to, both are written to a local copy
(`paths.LocalMirror`) uploaded every 30 s, on `flush` (the train loop flushes at each
checkpoint) and on `close`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter

from jaxprof import paths

_TAG = re.compile(r"[^A-Za-z0-9_./-]")


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host floats from a dict of scalars (jax, numpy or Python), with one `jax.device_get`."""
  host = jax.device_get(dict(metrics))
  out = {}
  for name, value in host.items():
    arr = np.asarray(value)
    if arr.size != 1:
      raise ValueError(f"metric {name!r} must be a scalar, got shape {arr.shape}")
    out[name] = float(arr.reshape(()))
  return out


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> int:
  """Drops lines of a metrics.jsonl whose step is > `last_step` (and any torn last line).

  Returns how many lines were dropped. A missing file is fine (returns 0).
  """
  path = paths.as_path(path)
  if not path.exists():
    return 0
  kept, dropped = [], 0
  for line in path.read_text().splitlines():
    try:
      step = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
      dropped += 1  # A line cut short by a crash.
      continue
    if step <= last_step:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    paths.atomic_write_text(path, "".join(line + "\n" for line in kept))
  return dropped


def _console_is_interactive() -> bool:
  ci = os.environ.get("CI", "").strip().lower()
  return sys.stderr.isatty() and ci in ("", "0", "false")


def _fmt(value: float) -> str:
  return f"{value:.4g}"


class MetricWriter:
  """Writes each step's scalars to TensorBoard, `<stage>/metrics.jsonl` and the console.

  Args:
    workdir: the run's directory.
    stage: the stage name; files go to `workdir/tb/<stage>` and `workdir/<stage>/`.
    total_steps: the last step, for the progress bar and the ETA.
    show: metric names displayed on the bar / log line (those present in a step).
    start_step: the step restored from a checkpoint (0 for a fresh start); later lines and
      events are discarded so resumed steps are not written twice.
    log_every: log-line period when there is no progress bar.
    progress: force the tqdm bar on or off; default: on iff stderr is a TTY and CI is unset.
  """

  def __init__(
      self,
      workdir: str | os.PathLike,
      stage: str,
      total_steps: int,
      show: Sequence[str] = ("train/loss",),
      start_step: int = 0,
      log_every: int = 10,
      progress: bool | None = None,
  ):
    self.stage = stage
    self.total_steps = total_steps
    self.show = tuple(show)
    self.log_every = max(1, log_every)
    self.start_step = start_step
    self._active = jax.process_index() == 0
    self._start_time = time.time()
    self._last_step = start_step
    self.jsonl_path = paths.as_path(workdir) / stage / "metrics.jsonl"
    self.tb_dir = paths.as_path(workdir) / "tb" / stage
    self._bar = None
    self._tb = None
    self._jsonl = None
    if not self._active:
      return
    dropped = truncate_jsonl(self.jsonl_path, start_step)
    if dropped:
      logging.info("Dropped %d metric lines after step %d from %s", dropped, start_step,
                   self.jsonl_path)
    # Local workdirs: the files themselves; object stores: local copies uploaded on flush.
    self._mirrors = (paths.LocalMirror(self.jsonl_path.parent), paths.LocalMirror(self.tb_dir))
    self._jsonl = open(self._mirrors[0].pull(self.jsonl_path.name), "a", encoding="utf-8")
    # purge_step makes TensorBoard ignore events at steps >= it written by an earlier run.
    self._tb = SummaryWriter(str(self._mirrors[1].local),
                             purge_step=start_step + 1 if start_step else None, flush_secs=30)
    if progress is None:
      progress = _console_is_interactive()
    if progress:
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, desc=stage,
                            dynamic_ncols=True, smoothing=0.1)

  @classmethod
  def for_stage(cls, stage_dir: str | os.PathLike, total_steps: int, **kwargs: Any
                ) -> MetricWriter:
    """The writer for a stage run by `jaxprof.stages.run_stages` in `workdir/<stage>/`."""
    stage_dir = paths.as_path(stage_dir)
    return cls(stage_dir.parent, stage_dir.name, total_steps, **kwargs)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Records one step's scalars; returns them as host floats."""
    values = to_floats(metrics)
    if not self._active:
      return values
    now = time.time()
    for name, value in values.items():  # TensorBoard tags allow [A-Za-z0-9_./-] ("ndcg@10")
      self._tb.add_scalar(_TAG.sub("_", name), value, global_step=step, walltime=now)
    record = {"step": int(step), "time": round(now, 3)}
    record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for mirror in self._mirrors:  # uploads at most every 30 s (object stores only)
      mirror.sync()
    self._console(step, values)
    self._last_step = step
    return values

  def _console(self, step: int, values: Mapping[str, float]) -> None:
    shown = {k: _fmt(values[k]) for k in self.show if k in values}
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(shown, refresh=False)
      return
    if step % self.log_every and step != self.total_steps:
      return
    elapsed = time.time() - self._start_time
    done = step - self.start_step
    rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
    eta = (self.total_steps - step) / rate if rate else float("nan")
    logging.info("[%s] step %d/%d %s (%.2f steps/s, ETA %s)", self.stage, step,
                 self.total_steps, " ".join(f"{k}={v}" for k, v in shown.items()), rate,
                 _duration(eta))

  def write_text(self, name: str, text: str, step: int) -> None:
    """A text summary (e.g. sample completions) in TensorBoard."""
    if self._active:
      self._tb.add_text(name, text, global_step=step)

  def flush(self) -> None:
    """Writes what is buffered through to the workdir (uploads it, on an object store)."""
    if self._active:
      self._jsonl.flush()
      self._tb.flush()
      for mirror in self._mirrors:
        mirror.sync(force=True)

  def close(self) -> None:
    """Flushes and closes every sink; safe to call twice."""
    if not self._active:
      return
    self._active = False
    if self._bar is not None:
      self._bar.close()
    self._tb.close()
    self._jsonl.close()
    for mirror in self._mirrors:
      mirror.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StepTimer:
  """Wall-clock step time and throughput between consecutive `lap` calls.

  The first lap only starts the clock (its interval would include compilation). JAX dispatch is
  asynchronous, so a lap measures steady-state time when the loop fetches metrics every step
  (MetricWriter.write does).
  """

  def __init__(self, prefix: str = "perf"):
    self.prefix = prefix
    self._time: float | None = None
    self._step: int | None = None

  def lap(self, step: int, tokens: int | None = None, examples: int | None = None
          ) -> dict[str, float]:
    """Metrics for the steps since the last lap: step time, and tokens/s, examples/s if given.

    `tokens` and `examples` are per step. Returns {} on the first call.
    """
    now = time.perf_counter()
    out: dict[str, float] = {}
    if self._time is not None and step > self._step:
      dt = (now - self._time) / (step - self._step)
      out[f"{self.prefix}/step_time_s"] = dt
      if tokens is not None:
        out[f"{self.prefix}/tokens_per_s"] = tokens / dt
      if examples is not None:
        out[f"{self.prefix}/examples_per_s"] = examples / dt
    self._time, self._step = now, step
    return out
