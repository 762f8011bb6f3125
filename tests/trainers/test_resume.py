"""Exact resume: a run killed with SIGKILL and re-run ends bitwise equal to an uninterrupted run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOTAL, EVERY = 12, 2

# SFT on the toy model through loop.run, as a stage does: AdamW with warmup + cosine decay (the
# restored optimizer count matters), batches drawn by step with Batcher, checkpoints every EVERY.
SCRIPT = textwrap.dedent('''
    import functools, pathlib, sys, time

    import jax
    import ml_collections
    import numpy as np

    from configs import common as config_common
    from jaxprof import checkpoint, parallel
    from jaxprof.models import causal_lm
    from jaxprof.trainers import common, loop, policy, sft
    from tests.trainers import toy

    workdir, total, every, pause = (pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                    float(sys.argv[4]))
    config = ml_collections.ConfigDict(dict(
        checkpoint=config_common.checkpoint_config(every=every, keep=3),
        log=config_common.log_config(every=1000), max_nonfinite=3))
    rng = np.random.default_rng(0)
    num, p, n = 32, 5, 6
    data = {"prompt_ids": rng.integers(2, 32, (num, p)).astype(np.int32),
            "prompt_mask": np.ones((num, p), bool),
            "target_ids": rng.integers(2, 32, (num, n)).astype(np.int32),
            "target_mask": np.arange(n)[None, :] < rng.integers(1, n + 1, num)[:, None]}
    spec = policy.PolicySpec(cfg=toy.CFG)
    mesh = parallel.make_mesh(data=1)
    tx = common.make_optimizer(config_common.optim_config(lr=3e-3, warmup=3, total_steps=total))
    params = causal_lm.init_params(toy.CFG, jax.random.key(0))
    state, shardings = common.create_state(params, causal_lm.param_axes(toy.CFG), tx, mesh, "fsdp")
    update = common.jit_update(
        common.make_update(functools.partial(sft.sft_loss, spec), tx, 2, "sft"), shardings)
    batcher = common.Batcher(num, 4, seed=0)
    key = jax.random.key(0)

    def one_step(state, step):
      batch = {k: v[batcher.indices(step)] for k, v in data.items()}
      state, m = update(state, {}, parallel.shard_batch(batch, mesh), jax.random.fold_in(key, step))
      jax.block_until_ready(m)
      time.sleep(pause)  # a window to kill the process in
      return state, m

    stage_dir = workdir / "sft"
    start = checkpoint.Checkpointer(stage_dir / "checkpoints").latest_step()
    print("START", start or 0, flush=True)
    state, _ = loop.run(stage_dir, state, one_step, total, config, show=("sft/loss",))
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}
    np.savez(workdir / "final.npz", **flat)
    print("DONE", int(state.step), flush=True)
''')


def env():
  # One CPU device (not the 8 simulated ones of conftest), no progress bar.
  return dict(os.environ, CI="true", XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def command(script: pathlib.Path, workdir: pathlib.Path, pause: float) -> list[str]:
  return [sys.executable, str(script), str(workdir), str(TOTAL), str(EVERY), str(pause)]


def run_to_completion(script, workdir, pause=0.0) -> str:
  out = subprocess.run(command(script, workdir, pause), env=env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  d = workdir / "sft" / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def metric_steps_and_losses(workdir: pathlib.Path) -> list[tuple[int, float]]:
  lines = (workdir / "sft" / "metrics.jsonl").read_text().splitlines()
  return [(r["step"], r["sft/loss"]) for r in map(json.loads, lines)]


def past_a_checkpoint(workdir: pathlib.Path) -> bool:
  ckpts = checkpoint_steps(workdir)
  if not ckpts or ckpts[-1] < 4:
    return False
  try:
    return max(s for s, _ in metric_steps_and_losses(workdir)) > ckpts[-1]
  except (json.JSONDecodeError, KeyError, ValueError, FileNotFoundError):  # a line being written
    return False


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float) -> None:
  """SIGKILL `proc` as soon as `ready()` holds; fails if it ends first or `timeout` passes."""
  try:
    deadline = time.time() + timeout
    while not ready():
      assert proc.poll() is None, "the run ended before it could be killed"
      assert time.time() < deadline, f"no {what} in time"
      time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    if proc.poll() is None:
      os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
  script = tmp_path / "train_toy.py"
  script.write_text(SCRIPT)
  reference, killed = tmp_path / "reference", tmp_path / "killed"

  # The run to kill: SIGKILL once a checkpoint for step >= 4 exists and metrics.jsonl already
  # holds a later step (which the resumed run must drop and redo, not write twice).
  proc = subprocess.Popen(command(script, killed, pause=0.3), env=env(), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  kill_when(proc, lambda: past_a_checkpoint(killed), "checkpoint for step >= 4", 240)
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(checkpoint_steps(killed))
  assert 4 <= killed_at < TOTAL and not (killed / "final.npz").exists()
  steps_before = [s for s, _ in metric_steps_and_losses(killed)]
  assert max(steps_before) > killed_at

  # Re-run the same command: it resumes from the checkpoint and finishes.
  out = run_to_completion(script, killed)
  start = int(out.split("START ")[1].split()[0])
  assert 4 <= start < TOTAL, out
  assert f"DONE {TOTAL}" in out

  run_to_completion(script, reference)
  got, want = np.load(killed / "final.npz"), np.load(reference / "final.npz")
  assert sorted(got.files) == sorted(want.files)
  assert any("params" in k for k in got.files) and any("opt_state" in k for k in got.files)
  for k in want.files:  # params, Adam moments and count, step: bitwise
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  # metrics.jsonl: every step exactly once, with the uninterrupted run's losses.
  resumed, uninterrupted = metric_steps_and_losses(killed), metric_steps_and_losses(reference)
  print(f"killed after checkpoint {killed_at} (metrics up to step {max(steps_before)}), "
        f"resumed at {start}; {len(want.files)} arrays bitwise equal")
  assert [s for s, _ in resumed] == list(range(1, TOTAL + 1))
  assert resumed == uninterrupted


@pytest.mark.slow
def test_kill_anywhere_across_stages_ends_bit_equal(tmp_path, capsys):
  """The user's view, through scripts/kill_anywhere.py: `python -m jaxprof.train` SIGKILLed at
  random moments and during checkpoint writes, across SFT, the reward model and PPO, re-run after
  each kill; every exported weight file ends bit-equal to an uninterrupted run's."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("kill_anywhere",
                                                ROOT / "scripts" / "kill_anywhere.py")
  harness = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(harness)
  rc = harness.main(["--kills=4", "--seed=1", f"--workdir={tmp_path}",
                     "--stages=sft,reward_model,ppo", "--config.checkpoint.every=1"])
  out = capsys.readouterr().out
  assert rc == 0, out
  kills = [x for x in out.splitlines() if x.startswith("kill ") and "SIGKILL" in x]
  assert len(kills) >= 2 and any("checkpoint write" in x for x in kills), out
  exported = sorted(str(p.relative_to(tmp_path / "killed"))
                    for p in (tmp_path / "killed").rglob("*.safetensors")
                    if "checkpoints" not in p.parts)
  assert len(exported) == 3, exported  # SFT export, reward model, PPO export
