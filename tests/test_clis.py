"""The small command lines run as a user runs them: `jaxprof.generate`, `jaxprof.data` and
`jaxprof.seeds`."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="", CI="true")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
def test_generate_writes_one_line_per_held_out_row(tmp_path):
  out = tmp_path / "texts.jsonl"
  proc = run("jaxprof.generate", "--config=configs/langptune.py:tiny", "--num_examples=2",
             "--max_new_tokens=12", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(x) for x in out.read_text().splitlines()]
  assert len(rows) == 2
  assert all("Movies the user watched" in r["prompt"] and r["completion"].strip() for r in rows)


def test_generate_without_prompt_or_config_is_a_usage_error():
  proc = run("jaxprof.generate")
  assert proc.returncode != 0 and "give --prompt=... or --config=" in proc.stderr


@pytest.mark.slow
def test_data_cli_builds_and_describes_a_data_set(tmp_path):
  proc = run("jaxprof.data", "job_market", "--seed=5", f"--data_dir={tmp_path}",
             "--sizes=num_seekers=30,num_cold_seekers=8,num_postings=40,sft=8,reward_model=8,"
             "rl=8,rec_train=8,rec_val=8,rec_test=8,cold_start_test=8,candidates=4",
             "--examples=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "rec_test" in proc.stdout and "8 rows" in proc.stdout, proc.stdout[:2000]
  assert list(tmp_path.rglob("*.array_record*"))


def test_seeds_names_the_missing_file_of_a_run_it_cannot_rescore(tmp_path):
  proc = run("jaxprof.seeds", f"--runs={tmp_path}", f"--out={tmp_path / 'out'}")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      f"jaxprof.seeds: {tmp_path / 'config.json'} does not exist: --runs takes workdirs whose "
      "eval stage wrote profiles.jsonl (one line per held-out row), or results/ copies")
  proc = run("jaxprof.seeds", f"--out={tmp_path}")
  assert proc.returncode != 0 and "--runs (workdirs, comma-separated) and --out" in proc.stderr
