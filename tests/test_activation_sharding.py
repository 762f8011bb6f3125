"""The compiled update step keeps the batch sharded: no device gathers the whole batch's states.

On 8 simulated devices, under the dp and fsdp presets, the GRPO update's optimized HLO is read for
collectives whose result carries the global batch (B rows or B / 2 prompts, or their
flattened tokens): with whole groups on every device (24 prompts over 8), the residual stream is
pinned to ("data", "fsdp") on its batch dim inside the layer scan
(`parallel.constrain`), so only parameters and scalars are ever all-gathered.
"""

import re

import jax
import ml_collections
import numpy as np
import pytest

from configs import common as config_common
from jaxprof import parallel
from jaxprof.models import causal_lm
from jaxprof.trainers import common, grpo, policy
from tests import helpers

CFG = helpers.TINY_LLAMA
B, P, N = 48, 6, 10  # 48 rows, 24 prompts (groups of 2): sizes no parameter dimension has


def batch() -> dict:
  rng = np.random.default_rng(0)
  prompt_ids = rng.integers(2, CFG.vocab_size, (B // 2, P)).repeat(2, 0).astype(np.int32)
  comp_mask = np.arange(N)[None] < rng.integers(1, N + 1, B)[:, None]
  return {"prompt_ids": prompt_ids, "prompt_mask": np.ones((B, P), bool),
          "comp_ids": np.where(comp_mask, rng.integers(2, CFG.vocab_size, (B, N)), 0
                               ).astype(np.int32),
          "comp_mask": comp_mask, "advantages": rng.normal(size=B).astype(np.float32),
          "ref_logprobs": np.full((B, N), -4.0, np.float32)}


def gathered_shapes(hlo: str) -> list[tuple[int, ...]]:
  """Result shapes of every all-gather / all-to-all in optimized HLO text."""
  shapes = []
  for line in hlo.splitlines():
    if re.search(r"= \S+ (all-gather|all-to-all)(-start)?\(", line):
      for dims in re.findall(r"\w+\[([\d,]*)\]", line.split("=")[1].split("(")[0]):
        shapes.append(tuple(int(d) for d in dims.split(",") if d))
  return shapes


@pytest.mark.parametrize("rules,mesh_shape", [("dp", dict(data=8)),
                                              ("fsdp", dict(data=2, fsdp=4))])
def test_update_never_gathers_the_batch(rules, mesh_shape):
  mesh = parallel.make_mesh(**mesh_shape)
  spec = policy.PolicySpec(cfg=CFG, chunk_size=64, remat="full")
  rl = ml_collections.ConfigDict()
  config_common.rl_sections(rl, "grpo", steps=1, lr=1e-3, kl_coef=0.04, prompts_per_step=B // 2,
                            group_size=2, max_new_tokens=N, max_prompt_len=P)
  tx = common.make_optimizer(config_common.optim_config(lr=1e-3, warmup=0, total_steps=10))
  state, shardings = common.create_state(helpers.tiny_params(CFG), causal_lm.param_axes(CFG), tx,
                                         mesh, rules)
  loss = lambda *a: grpo.grpo_loss(spec, rl, True, *a)
  update = common.jit_update(common.make_update(loss, tx, 1, "rl"), shardings, rules)
  sharded = parallel.shard_batch(batch(), mesh)
  hlo = update.lower(state, {}, sharded, jax.random.key(0)).compile().as_text()
  shapes = gathered_shapes(hlo)
  rows = {B, B // 2}  # completions, and the prompt stream (one row per group)
  tokens = {r * t for r in rows for t in range(1, P + N + 1)}
  whole_batch = [s for s in shapes if s and (s[0] in rows or s[0] in tokens)]
  assert not whole_batch, whole_batch
  # The step still runs and is finite.
  state, m = update(state, {}, sharded, jax.random.key(0))
  assert bool(m["rl/finite"])
