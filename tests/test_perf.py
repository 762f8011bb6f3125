"""Model-FLOP counts and the phase timer behind perf/mfu."""

import time

import numpy as np

from jaxprof import perf
from tests import helpers


def test_forward_flops_counts_each_prompt_once_per_group():
  cfg = helpers.TINY_LLAMA
  d, f, n, k, h, layers = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.num_layers)
  per_token = layers * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f)
  assert perf.layer_weights(cfg) == per_token
  prompt = np.array([[False, True, True, True]] * 4)  # 2 prompts of 3 real tokens, groups of 2
  comp = np.array([[True, True, False], [True, False, False]] * 2)
  flops = perf.forward_flops(cfg, prompt, comp, group_size=2)
  tokens = 2 * 3 + 6  # prompts once per group + real completion tokens
  pairs = 2 * (3 * 4 // 2) + 2 * (2 * 3 + 3) + 2 * (1 * 3 + 1)
  expected = 2 * per_token * tokens + 2 * d * cfg.vocab_size * 6 + 4 * layers * n * h * pairs
  assert flops == expected
  # The same rows without sharing cost more: every prompt is counted once per row.
  assert perf.forward_flops(cfg, prompt, comp, group_size=1) > flops


def test_phase_timer_reports_times_and_utilisation():
  timer = perf.PhaseTimer()
  with timer("rollout"):
    time.sleep(0.02)
  with timer("update"):
    time.sleep(0.01)
  m = timer.metrics(rollout=1e9, update=2e9)
  assert m["perf/rollout_s"] >= 0.02 and m["perf/update_s"] >= 0.01
  peak = m["perf/peak_gflops"] * 1e9
  total = m["perf/rollout_s"] + m["perf/update_s"]
  np.testing.assert_allclose(m["perf/mfu"], 3e9 / total / peak, rtol=1e-6)
  np.testing.assert_allclose(m["perf/mfu_train"], 2e9 / m["perf/update_s"] / peak, rtol=1e-6)
  assert timer.metrics().keys() == {"perf/rollout_s", "perf/update_s"}
