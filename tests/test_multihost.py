"""Multi-host for real: two local processes, gloo collectives on 127.0.0.1, one global mesh."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_shard_one_model():
  port = str(free_port())
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", port, str(i)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
    assert p.returncode == 0, f"process {i} failed:\n{err[-3000:]}"
    assert f"process {i}: OK" in out


@pytest.mark.slow
def test_train_command_runs_on_two_processes(tmp_path):
  """`python -m jaxprof.train --coordinator ...` as the README shows it: two processes, one device
  each, one mesh over both; they share the workdir and agree on every step."""
  port = str(free_port())
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", CI="true")
  cmd = [sys.executable, "-m", "jaxprof.train", "--config=configs/blue.py:tiny",
         f"--workdir={tmp_path}", f"--coordinator=127.0.0.1:{port}", "--num_processes=2"]
  procs = [subprocess.Popen([*cmd, f"--process_id={i}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for i, (p, (_, err)) in enumerate(zip(procs, outs, strict=True)):
    assert p.returncode == 0, f"process {i} failed:\n{err[-3000:]}"
    assert f"process {i} of 2, 1 local / 2 global devices" in err
  # One writer: three metrics rows, not six; both processes computed the same final step.
  rows = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  finals = [re.search(r"'rl/grad_norm': ([0-9.e-]+)", err).group(1) for _, err in outs]
  assert finals[0] == finals[1] and float(finals[0]) > 0
  assert json.loads((tmp_path / "eval" / "results.json").read_text())["held_out"]["rl"]
