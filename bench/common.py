"""Helpers every side-by-side benchmark shares: machine peaks, an alternating timer, tables.

The machines these run on are small and shared, so a single timing means little. The pattern is:
measure the machine's own peaks once (memory bandwidth, f32 matmul FLOP/s), warm every system up,
then run the systems in alternation (A B, B A, A B, ...) so that a burst of outside load hits both,
and report the median of the per-pair time ratios rather than a ratio of medians.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof import perf

GB = 1e9


def block(x):
  """Waits for every jax array in `x` (any pytree); returns `x`."""
  return jax.block_until_ready(x)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
  """(wall seconds, result) of one call; jax results are waited for before the clock stops."""
  start = time.perf_counter()
  out = block(fn())
  return time.perf_counter() - start, out


def best_time(fn: Callable[[], object], repeats: int) -> float:
  """Fastest of `repeats` calls (after one unmeasured call): the least-disturbed run."""
  block(fn())
  return min(timed(fn)[0] for _ in range(repeats))


# ---------------------------------------------------------------------------------------------
# Machine peaks, measured rather than quoted.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peaks:
  """What this machine reaches right now. Bandwidths in bytes/s, FLOP/s in f32."""

  mem_bw_numpy_copy: float  # one thread, np.copyto of a large array (read + write counted)
  mem_bw_jax_sum: float  # XLA reduction over a large array (read only)
  mem_bw_jax_scale: float  # XLA elementwise x * c (read + write)
  matmul_flops: float  # XLA f32 [n, n] @ [n, n]
  matmul_n: int
  cores: int

  @property
  def mem_bw(self) -> float:
    """The best bandwidth any of the probes reached: the reference for 'achieved bytes/s'."""
    return max(self.mem_bw_numpy_copy, self.mem_bw_jax_sum, self.mem_bw_jax_scale)

  def describe(self) -> str:
    return (f"cores={self.cores}  memory: numpy copy {self.mem_bw_numpy_copy / GB:.1f} GB/s, "
            f"jax sum {self.mem_bw_jax_sum / GB:.1f} GB/s, jax scale "
            f"{self.mem_bw_jax_scale / GB:.1f} GB/s (peak used: {self.mem_bw / GB:.1f} GB/s); "
            f"f32 matmul n={self.matmul_n}: {self.matmul_flops / GB:.0f} GFLOP/s")


def measure_memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> tuple[float, float, float]:
  """Bytes/s of three streaming probes over an array far larger than any cache.

  Returns (numpy copy, jax sum, jax scale). Copy and scale count the read and the write.
  """
  n = megabytes * 2**20 // 4
  src = np.random.default_rng(0).random(n, dtype=np.float32)
  dst = np.empty_like(src)
  copy_s = best_time(lambda: np.copyto(dst, src), repeats)
  x = jnp.asarray(src)
  total = jax.jit(jnp.sum)
  sum_s = best_time(lambda: total(x), repeats)
  # Donated so each call writes into the buffer it read: no fresh 0.5 GB allocation per call.
  scale = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
  state = [jnp.array(x)]

  def scale_step():
    state[0] = scale(state[0])
    return state[0]

  scale_s = best_time(scale_step, repeats)
  nbytes = src.nbytes
  return 2 * nbytes / copy_s, nbytes / sum_s, 2 * nbytes / scale_s


def measure_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a jitted f32 [n, n] @ [n, n] (2 n^3 FLOPs): the probe `perf/mfu` divides by."""
  return perf.matmul_peak(n, repeats)


def measure_peaks(matmul_n: int = 2048, megabytes: int = 512) -> Peaks:
  copy_bw, sum_bw, scale_bw = measure_memory_bandwidth(megabytes)
  return Peaks(mem_bw_numpy_copy=copy_bw, mem_bw_jax_sum=sum_bw, mem_bw_jax_scale=scale_bw,
               matmul_flops=measure_matmul_flops(matmul_n), matmul_n=matmul_n,
               cores=os.cpu_count() or 1)


def machine_summary() -> str:
  return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, jax {jax.__version__}")


# ---------------------------------------------------------------------------------------------
# Alternating timing loop.
# ---------------------------------------------------------------------------------------------


def alternate(systems: Mapping[str, Callable[[], object]], runs: int,
              on_result: Callable[[str, int, object], None] | None = None
              ) -> dict[str, list[float]]:
  """Times each system `runs` times, interleaved, flipping the order every round.

  Round r runs the systems in the given order when r is even and reversed when odd, so neither
  always runs right after the other (e.g. into a warm or a cold cache).
  Returns {name: [seconds of round 0, round 1, ...]}; `on_result(name, round, output)` sees
  every output (e.g. to check it).
  """
  names = list(systems)
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(runs):
    for name in names if r % 2 == 0 else reversed(names):
      seconds, out = timed(systems[name])
      times[name].append(seconds)
      if on_result is not None:
        on_result(name, r, out)
  return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
  """Median over rounds of numerator[r] / denominator[r] (pairs from the same round)."""
  return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


# ---------------------------------------------------------------------------------------------
# Printing.
# ---------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A GitHub-markdown table; floats are printed as given (format them before)."""
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def fmt(x: float, digits: int = 1) -> str:
  return f"{x:,.{digits}f}"
