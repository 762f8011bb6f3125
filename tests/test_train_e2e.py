"""End to end: `python -m jaxprof.train` on each system's tiny variant, as a user runs it."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train(config: str, workdir: pathlib.Path, *flags: str, check: bool = True):
  env = dict(os.environ, CI="true")
  env["XLA_FLAGS"] = ""  # one CPU device, like a user's laptop
  proc = subprocess.run(
      [sys.executable, "-m", "jaxprof.train", f"--config={config}", f"--workdir={workdir}",
       *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  if check and proc.returncode != 0:
    raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def assert_stage_outputs(workdir: pathlib.Path, stage: str, steps: int):
  stage_dir = workdir / stage
  assert json.loads((stage_dir / "DONE.json").read_text())["stage"] == stage
  lines = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in lines] == list(range(1, steps + 1))
  assert list((workdir / "tb").rglob("events.out.tfevents.*")) or list(
      stage_dir.rglob("events.out.tfevents.*"))
  assert (stage_dir / "checkpoints" / str(steps)).exists()
  return lines


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_girl_tiny_end_to_end(tmp_path, algo):
  train(f"configs/girl.py:tiny,algo={algo}", tmp_path)
  for stage in ("sft", "reward_model", algo):
    lines = assert_stage_outputs(tmp_path, stage, 3)
  assert "reward/mean" in lines[-1] and "rl/kl" in lines[-1]
  if algo == "ppo":
    assert "critic/explained_variance" in lines[-1]
  assert (tmp_path / algo / "export" / "model.safetensors").exists()
  results = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert set(results) == {"held_out", "enhanced_rec"}
  assert set(results["held_out"]) == {"start", "rl"}
  assert "truth/oracle_match" in results["held_out"]["rl"]
  assert {"plain/mlp", "plain/dot", "rl/mlp", "start/dot"} <= set(results["enhanced_rec"])
  assert "cold_start_test/auc" in results["enhanced_rec"]["rl/mlp"]
  assert (tmp_path / "eval" / "report.md").exists()
  assert (tmp_path / "eval" / "held_out.png").exists()
  assert (tmp_path / "eval" / "enhanced_rec.png").exists()
  # Re-running the same command skips every completed stage.
  again = train(f"configs/girl.py:tiny,algo={algo}", tmp_path)
  assert again.stderr.count("already complete") == 4


@pytest.mark.slow
@pytest.mark.parametrize("system", ["langptune", "blue", "hifi"])
def test_grpo_systems_tiny_end_to_end(tmp_path, system):
  train(f"configs/{system}.py:tiny", tmp_path)
  lines = assert_stage_outputs(tmp_path, "grpo", 3)
  assert any(k.startswith("reward/") and k not in ("reward/mean", "reward/std")
             for k in lines[-1])
  assert json.loads((tmp_path / "eval" / "results.json").read_text())["held_out"]["rl"]


def test_mistyped_key_names_the_nearest(tmp_path):
  proc = train("configs/girl.py:tiny", tmp_path, "--config.rl.kl_cof=0.1", check=False)
  assert proc.returncode != 0
  assert "rl.kl_coef" in proc.stderr and "kl_cof" in proc.stderr


def test_unknown_variant_is_an_error(tmp_path):
  proc = train("configs/girl.py:tinyy", tmp_path, check=False)
  assert proc.returncode != 0 and "tinyy" in proc.stderr
