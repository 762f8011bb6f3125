"""Multi-host for real: two local processes, gloo collectives on 127.0.0.1, one global mesh."""

import os
import pathlib
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
