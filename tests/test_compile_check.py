"""`jaxprof.compile_check`: every step of a config compiled for a TPU topology, on this CPU.

libtpu (the `tpu` extra, installed by scripts/setup.sh) compiles for abstract TPU devices; no TPU
is used. The tiny configs compile for v5e:2x2 (4 chips); a shape made to exceed HBM fails with one
line.
"""

import importlib
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import pytest

from jaxprof import compile_check, parallel
from jaxprof import config as config_lib
from jaxprof.models import causal_lm, shapes
from jaxprof.trainers import common, policy, rollout
from tests.helpers import TINY_LLAMA

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOPOLOGY = "v5e:2x2"


def tiny(name: str, **overrides):
  config = importlib.import_module(f"configs.{name}").get_config("tiny")
  config.unlock()
  for key, value in overrides.items():
    section, field = key.split(".")
    if isinstance(value, dict):
      config[section][field].update(value)
    else:
      config[section][field] = value
  return config_lib.validate(config)


EXPECTED = {
    "girl": {"sft/update", "reward_model/update", "ppo/policy_update", "ppo/critic_update",
             "ppo/reference", "ppo/values", "sampler/prefill", "sampler/decode"},
    "langptune": {"grpo/update", "grpo/reference", "sampler/prefill", "sampler/decode"},
    "blue": {"grpo/update", "grpo/reference", "sampler/prefill", "sampler/decode"},
    "hifi": {"grpo/update", "grpo/reference", "sampler/prefill", "sampler/decode"},
}


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(EXPECTED))
def test_tiny_config_of_each_system_compiles_for_a_small_topology(system):
  report = compile_check.check(tiny(system), TOPOLOGY)
  assert report.devices == 4 and report.chip.name == "v5e"
  assert {r.name for r in report.results} == EXPECTED[system]
  for r in report.results:
    assert not r.error, (r.name, r.error)
    assert 0 < r.total < report.budget, r.name
    assert r.flops > 0 and r.bound_s > 0 and r.tokens_per_chip_s > 0, r.name
  assert report.failure() == ""
  table = report.table()
  assert all(f"| {name} | yes |" in table for name in EXPECTED[system])


def test_fsdp_shards_the_update_state_that_dp_replicates():
  """The update's per-device arguments (params + Adam moments) fall about 4x from dp to fsdp over
  4 devices: the moments are sharded too (left to XLA, `jit(tx.init)` replicated them)."""
  args = {}
  for rules in ("dp", "fsdp"):
    config = tiny("langptune", **{"mesh.rules": rules, "mesh.data": 1, "mesh.fsdp": 4,
                                  "rollout.prompts_per_step": 4})
    report = compile_check.check(config, TOPOLOGY, step_names=["grpo/update"])
    args[rules] = report.results[0].arguments
  assert args["fsdp"] < 0.35 * args["dp"], args


def test_create_state_shards_adam_moments_like_the_params():
  mesh = parallel.make_mesh(data=1, fsdp=8)
  params = causal_lm.init_params(TINY_LLAMA, jax.random.key(0))
  optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup=1, total_steps=10, clip_norm=1.0,
                                         weight_decay=0.0, schedule="cosine", b1=0.9, b2=0.95,
                                         grad_accum=1))
  tx = common.make_optimizer(optim)
  state, _ = common.create_state(params, causal_lm.param_axes(TINY_LLAMA), tx, mesh, "fsdp")
  adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
  for moments in (adam.mu, adam.nu):
    specs = jax.tree.map(lambda m, p: (m.sharding.spec, p.sharding.spec), moments, state.params)
    for m_spec, p_spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, tuple)):
      assert m_spec == p_spec
  assert state.params["layers"]["q"].sharding.spec[1] == "fsdp"  # something is sharded


def test_reference_is_sharded_like_the_policy():
  mesh = parallel.make_mesh(data=1, fsdp=8)
  params = causal_lm.init_params(TINY_LLAMA, jax.random.key(0))
  start = policy.Start(policy.PolicySpec(cfg=TINY_LLAMA), params, {}, params, None, None, ())
  frozen, ref = rollout.place_reference(start, mesh, "fsdp")
  assert frozen == {}
  assert ref["layers"]["q"].sharding.spec[1] == "fsdp"
  assert tuple(ref["embed"].sharding.spec) == (None, "fsdp")


HLO = """\
%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]) parameter(0)
  %all-gather.1 = f32[16,8]{1,0} all-gather(%x), dimensions={0}
  ROOT %t = (s32[], f32[4]) tuple(%i, %y)
}

%cond (p: (s32[], f32[4])) -> pred[] {
  %constant.3 = s32[] constant(30)
  ROOT %lt = pred[] compare(%g, %constant.3), direction=LT
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %all-reduce.2 = (f32[4]{0}, bf16[2,2]{1,0}) all-reduce(%a, %b), to_apply=%sum
  %while.1 = (s32[], f32[4]) while(%init), condition=%cond, body=%body
  ROOT %r = f32[4] get-tuple-element(%while.1), index=1
}
"""


def test_collective_bytes_count_loop_bodies_by_their_trip_count():
  # entry: 4 f32 + 4 bf16 = 24 bytes; the loop body's all-gather 16*8*4 = 512 bytes, 30 times
  assert compile_check.collective_bytes(HLO) == 24 + 30 * 512


def test_named_shapes_have_their_published_sizes():
  sizes = {name: sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda n=name: causal_lm.init_params(shapes.from_name_or_path(n), jax.random.key(0)))))
      for name in ("smollm2-135m", "qwen2.5-1.5b", "llama3-8b")}
  assert 134e6 < sizes["smollm2-135m"] < 136e6
  assert 1.50e9 < sizes["qwen2.5-1.5b"] < 1.56e9
  assert 8.00e9 < sizes["llama3-8b"] < 8.06e9
  with pytest.raises(Exception, match="neither a named shape"):
    shapes.from_name_or_path("no-such-model")


def run_cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="", CI="true")
  return subprocess.run([sys.executable, "-m", "jaxprof.compile_check", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_step_over_hbm_exits_non_zero_with_one_line_naming_it(tmp_path):
  """Qwen2.5-1.5B trained in full with every param, moment and the reference replicated (dp)
  needs ~24 GB per chip; a v5e has 16 GiB."""
  out = run_cli("--config=configs/langptune.py:tiny", f"--topology={TOPOLOGY}",
                "--model=qwen2.5-1.5b", "--config.mesh.rules=dp", "--steps=grpo/update",
                f"--json={tmp_path / 'check.json'}")
  assert out.returncode == 1, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("jaxprof.compile_check: grpo/update ")
  assert "--config.mesh.fsdp=-1" in last and "v5e" in last
  assert "| grpo/update | no |" in out.stdout or "| grpo/update | NO |" in out.stdout
  assert (tmp_path / "check.json").exists()


def test_unknown_topology_and_step_are_one_line_errors():
  out = run_cli("--config=configs/langptune.py:tiny", "--topology=v9z:1x1")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith(
      "jaxprof.compile_check: TopologyError: --topology='v9z:1x1'")
  out = run_cli("--config=configs/langptune.py:tiny", f"--topology={TOPOLOGY}",
                "--steps=grpo/nope")
  assert out.returncode == 2
  assert "--steps: no step ['grpo/nope']" in out.stderr.strip().splitlines()[-1]


def test_lora_update_holds_the_base_once_and_moments_of_the_adapters_only():
  """Full training holds params + two Adam moments (3 copies); LoRA the frozen base and small
  adapters with their moments (just over 1 copy)."""
  args = {}
  for rank in (0, 4):
    report = compile_check.check(tiny("langptune", **{"model.lora": {"rank": rank}}), TOPOLOGY,
                                 step_names=["grpo/update"])
    args[rank] = report.results[0].arguments
  assert args[4] < 0.45 * args[0], args
