"""Model FLOPs of the work a step really does, and the machine's measured matmul peak.

`perf/mfu` in the RL metrics is (model FLOPs on real tokens) / (step seconds) / (measured peak):
padding, recomputation (remat) and repeated prompts count as waste, not as work. Counts are the
usual 2 FLOPs per multiply-add of every matmul: 2 x weights per token through the layers, 2 x D x V
for each position that needs the LM head, 4 x (query width) per visible (query, key) pair in
attention. A backward pass costs twice its forward.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof.models import causal_lm


@functools.cache
def layer_weights(cfg: causal_lm.LMConfig) -> int:
  """Multiply-adds per token in the stacked layers' matrices (norms and biases excluded)."""
  specs = causal_lm.param_specs(cfg)
  return sum(math.prod(s.shape) for name, s in specs.items()
             if name.startswith("layers/") and len(s.shape) >= 3)


def attention_pairs(prompt_lens: np.ndarray, comp_lens: np.ndarray, group_size: int
                    ) -> tuple[int, int]:
  """(prompt pairs, completion pairs): causal (query, key) pairs over real tokens.

  prompt_lens, comp_lens: [R] real tokens per row, rows in groups of `group_size` sharing a prompt
  (the prompt is processed once per group).
  """
  p = prompt_lens.astype(np.int64)
  c = comp_lens.astype(np.int64)
  prompt_pairs = int(np.sum(p[::group_size] * (p[::group_size] + 1) // 2))
  comp_pairs = int(np.sum(c * p + c * (c + 1) // 2))
  return prompt_pairs, comp_pairs


def forward_flops(cfg, prompt_mask: np.ndarray, comp_mask: np.ndarray, group_size: int,
                  head: bool = True) -> float:
  """Forward FLOPs of scoring completions: each prompt once per group, LM head on completions.

  The same count is the useful work of sampling them (a prefill per prompt, then one token per
  real completion position). cfg: a causal-LM config (or a scalar-head backbone's with
  head=False: no LM head).

  prompt_mask: [R, P] bool; comp_mask: [R, N] bool (rows in groups of `group_size`).
  """
  p_len, c_len = prompt_mask.sum(-1), comp_mask.sum(-1)
  tokens = int(p_len[::group_size].sum() + c_len.sum())
  pairs = sum(attention_pairs(p_len, c_len, group_size))
  head = 2 * cfg.hidden_size * cfg.vocab_size * int(c_len.sum()) if head else 0
  attention = 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs
  return 2.0 * layer_weights(cfg) * tokens + head + attention


@functools.cache
def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a jitted float32 [n, n] @ [n, n] here (best of `repeats`), measured once."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), jnp.float32)
  b = jax.random.normal(keys[1], (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


class PhaseTimer:
  """Wall time per named phase of a step: `with timer("rollout"): ...`, then `timer.metrics()`.

  Each phase must end with its results on the host (or block on them), so the time of
  asynchronous device work lands in the phase that launched it.
  """

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

  def metrics(self, **flops: float) -> dict[str, float]:
    """perf/<phase>_s for each phase; with model FLOPs per phase, also the utilisations:

    perf/mfu over the timed phases, perf/mfu_train over reference + update (the training
    forward/backward), perf/mfu_<phase> for each phase given FLOPs.
    """
    out = {f"perf/{k}_s": v for k, v in self.seconds.items()}
    if not flops:
      return out
    peak = matmul_peak()

    def mfu(names):
      secs = sum(self.seconds.get(n, 0.0) for n in names)
      return sum(flops.get(n, 0.0) for n in names) / secs / peak if secs > 0 else float("nan")

    out["perf/mfu"] = mfu(list(self.seconds))
    out["perf/mfu_train"] = mfu([n for n in ("reference", "update") if n in self.seconds])
    out |= {f"perf/mfu_{n}": mfu([n]) for n in flops if n in self.seconds}
    out["perf/peak_gflops"] = peak / 1e9
    return out
