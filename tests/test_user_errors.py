"""User errors in one line: a catalogue of bad inputs to `jaxprof.train` (issue 11).

Each case is a `:tiny` config plus one mistake. The run must stop with one of `train.USER_ERRORS`
whose one-line message names the input and the fix, before any stage trains, leaving what the
workdir held intact. The command-line boundary (one line on stderr, exit status 2) is run for real
once; the cases run in-process, where they fail in under a second each.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from configs import girl
from jaxprof import config as config_lib
from jaxprof import train
from tests.models.test_hf_parity import make_hf_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def garbled_model(tmp: pathlib.Path) -> str:
  (tmp / "garbled").mkdir()
  (tmp / "garbled" / "config.json").write_text("{not json")
  return str(tmp / "garbled")


def wrong_shape_model(tmp: pathlib.Path) -> str:
  make_hf_model("llama_untied", tmp / "shape")
  tensors = load_file(tmp / "shape" / "model.safetensors")
  tensors["model.layers.0.mlp.gate_proj.weight"] = np.zeros((95, 64), np.float32)
  save_file(tensors, tmp / "shape" / "model.safetensors")
  return str(tmp / "shape")


def another_runs_workdir(tmp: pathlib.Path) -> pathlib.Path:
  other = girl.get_config("tiny")
  other.data.seed = 7
  config_lib.lock_and_save(other, tmp / "run")
  return tmp / "run"


def file_as_parent(tmp: pathlib.Path) -> pathlib.Path:
  (tmp / "a_file").write_text("")
  return tmp / "a_file" / "run"


# (id, how the tiny config is broken (config, tmp) -> workdir or None, what the line must name)
CASES = [
    ("missing model dir", lambda c, t: c.model.update(path=str(t / "nope")), ["nope"]),
    ("garbled model dir", lambda c, t: c.model.update(path=garbled_model(t)),
     ["config.json"]),
    ("wrong tensor shape", lambda c, t: c.model.update(path=wrong_shape_model(t)),
     ["gate_proj.weight", "(95, 64)"]),
    ("unknown system", lambda c, t: c.update(system="girll"), ["girll", "known systems"]),
    ("unknown stage", lambda c, t: c.update(stages=("sft", "sftt")), ["sftt"]),
    ("repeated stage", lambda c, t: c.update(stages=("sft", "sft")), ["sft"]),
    ("unknown data set", lambda c, t: c.data.update(name="job_markt"),
     ["config.data.name", "job_markt"]),
    ("non-finite lr", lambda c, t: c.sft.optim.update(lr=float("nan")), ["sft.optim.lr"]),
    ("negative steps", lambda c, t: c.sft.optim.update(total_steps=-1),
     ["sft.optim.total_steps"]),
    ("batch the mesh does not divide", lambda c, t: c.mesh.update(data=3),
     ["sft.batch_size", "= 4", "3 data-parallel devices", "--config.mesh.data=1"]),
    ("mesh larger than the devices", lambda c, t: c.mesh.update(data=16), ["config.mesh", "16"]),
    ("unknown reward", lambda c, t: c.rewards.reward_model.update(name="lenght"),
     ["lenght", "config.rewards.reward_model.name"]),
    ("unknown evaluator", lambda c, t: c.eval.evaluators.update(held_outt={}),
     ["held_outt", "config.eval.evaluators"]),
    ("critic from a whole-text reward model",
     lambda c, t: (c.reward_model.update(backbone="embedding"), c.ppo.update(
         critic_init="reward_model")), ["ppo.critic_init", "policy:6"]),
    ("unknown KL estimator", lambda c, t: c.rl.update(kl_estimator="k4"),
     ["rl.kl_estimator", "k4"]),
    ("workdir of another run", lambda c, t: another_runs_workdir(t),
     ["data.seed", "new --workdir"]),
    ("workdir under a file", lambda c, t: file_as_parent(t), ["a_file"]),
]


@pytest.mark.parametrize("name, breaks, names", CASES, ids=[c[0] for c in CASES])
def test_each_bad_input_stops_with_one_line_naming_it(tmp_path, name, breaks, names):
  config = girl.get_config("tiny")
  workdir = breaks(config, tmp_path)
  workdir = workdir if isinstance(workdir, pathlib.Path) else tmp_path / "run"
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  with pytest.raises(train.USER_ERRORS) as info:
    train.train_and_evaluate(config_lib.validate(config), workdir)
  line = train.one_line(info.value)
  assert "\n" not in line and all(n in line for n in names), line
  assert not (workdir / "sft" / "DONE.json").exists()
  assert {p: p.read_bytes() for p in before} == before  # nothing it held was touched


@pytest.mark.parametrize("devices, flag, names", [
    (1, "--config.model.path={tmp}/nope", ["nope"]),
    # A host with 8 devices (an 8-GPU node, a v4-8) and a mesh set by hand that puts all of them
    # on the batch, which the tiny batches do not divide (the default mesh adapts instead).
    # Stopped at start, not by JAX's IndivisibleError mid-stage.
    (8, "--config.mesh.data=8", ["sft.batch_size", "8 data-parallel devices",
                                 "--config.mesh.data=2"]),
])
def test_the_command_prints_one_line_and_exits_2(tmp_path, devices, flag, names):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run(
      [sys.executable, "-m", "jaxprof.train", "--config=configs/girl.py:tiny",
       f"--workdir={tmp_path}", flag.format(tmp=tmp_path)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [x for x in proc.stderr.splitlines() if x.startswith("jaxprof.train:")]
  assert len(errors) == 1 and all(n in errors[0] for n in names), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_the_catalogue_covers_fifteen_inputs():
  assert len(CASES) >= 15 and len({c[0] for c in CASES}) == len(CASES)
