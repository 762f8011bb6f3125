"""End to end: `python -m jaxprof.train` on each system's tiny variant, as a user runs it."""

import importlib
import json
import math
import os
import pathlib
import re
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxprof.models import hf
from jaxprof.trainers import policy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train(config: str, workdir: pathlib.Path, *flags: str, check: bool = True, devices: int = 1):
  env = dict(os.environ, CI="true")
  # One CPU device, like a user's laptop, or several simulated ones, like an 8-GPU node or a v4-8.
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
  proc = subprocess.run(
      [sys.executable, "-m", "jaxprof.train", f"--config={config}", f"--workdir={workdir}",
       *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  if check and proc.returncode != 0:
    raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def tb_tags(directory: pathlib.Path) -> set[str]:
  """Scalar tags in the TensorBoard event files of one directory (TFRecord framing read by hand:
  8-byte length, 4-byte crc, the Event proto, 4-byte crc)."""
  from tensorboardX.proto import event_pb2

  tags = set()
  for path in directory.glob("events.out.tfevents.*"):
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      tags |= {v.tag for v in event.summary.value}
      pos += 12 + length + 4
  return tags


def assert_stage_outputs(workdir: pathlib.Path, stage: str, steps: int) -> list[dict]:
  """DONE.json, one metrics row per step, the stage's own TensorBoard scalars, a checkpoint."""
  stage_dir = workdir / stage
  assert json.loads((stage_dir / "DONE.json").read_text())["stage"] == stage
  lines = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in lines] == list(range(1, steps + 1))
  tags = tb_tags(workdir / "tb" / stage)  # this stage's directory, not any stage's
  # Tags keep TensorBoard's characters [\w./-]; the writer maps others to "_" (ndcg@10 -> ndcg_10).
  logged = {re.sub(r"[^\w./-]", "_", k) for k, v in lines[-1].items()
            if isinstance(v, float) and k != "time"}
  assert tags and logged - tags == set(), (stage, sorted(logged - tags)[:5])
  assert (stage_dir / "checkpoints" / str(steps)).exists()
  return lines


def assert_rl_outputs(workdir: pathlib.Path, stage: str, config) -> None:
  """Every configured reward term scored some completion, and the policy moved."""
  lines = assert_stage_outputs(workdir, stage, 3)
  for term in config.rewards:
    values = [x.get(f"reward/{term}") for x in lines]
    assert any(v is not None and math.isfinite(v) for v in values), (term, values)
  assert all(x["reward/none_fraction"] < 1 for x in lines), [x["reward/none_fraction"]
                                                              for x in lines]
  assert all(math.isfinite(x["rl/grad_norm"]) for x in lines)
  assert any(x["rl/grad_norm"] > 0 for x in lines)
  start = policy.start_dir(config, {"sft": read_done(workdir, "sft")} if "sft" in config.stages
                           else {})
  _, before, _ = policy.load(config.model, start, config.seed)
  _, after = hf.load_hf(workdir / stage / "export")
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
  assert moved > 0, "the RL export equals the policy it started from"


def read_done(workdir: pathlib.Path, stage: str) -> dict:
  return json.loads((workdir / stage / "DONE.json").read_text())["outputs"]


# (metric prefix, lowest, highest) every eval value must respect, first match; all finite.
RANGES = [("diff/truth/", -1.5, 1.5), ("downstream/", 0.0, 1.0), ("text/", 0.0, 1.0),
          ("win/", 0.0, 1.0), ("tie/", 0.0, 1.0), ("lose/", 0.0, 1.0),
          ("truth/", 0.0, 1.0), ("length/", 1.0, math.inf), ("rec_test/auc", 0.0, 1.0),
          ("cold_start_test/auc", 0.0, 1.0), ("rec_test/logloss", 0.0, math.inf),
          ("rec_test/auc/", 0.0, 1.0), ("cold_start_test/auc/", 0.0, 1.0),
          ("cold_start_test/logloss", 0.0, math.inf), ("reward/", -math.inf, math.inf),
          ("diff/", -1.0, 1.0), ("gain/", -1.0, math.inf), ("ndcg@", 0.0, 1.0),
          ("recall@", 0.0, 1.0), ("mrr", 0.0, 1.0)]


def assert_eval_outputs(workdir: pathlib.Path, evaluators: set[str],
                        policies: tuple[str, ...] = ("start", "rl")) -> dict:
  """Every eval value finite and in its range, completions real text, report and plots there."""
  eval_dir = workdir / "eval"
  results = json.loads((eval_dir / "results.json").read_text())
  assert set(results) == evaluators
  held_out = results["held_out"]
  assert set(held_out) == {*policies, *(f"rl vs {p}" for p in policies if p != "rl")}
  for name, table in results.items():
    for row, metrics in table.items():
      assert metrics, (name, row)
      for metric, value in metrics.items():
        where = f"{name}/{row}/{metric}={value}"
        assert value is not None and math.isfinite(value), where
        bounds = [(lo, hi) for prefix, lo, hi in RANGES if metric.startswith(prefix)]
        assert bounds, f"{where}: no range declared for this metric"
        assert bounds[0][0] <= value <= bounds[0][1], where
      (eval_dir / f"{name}.png").stat()
  for p in policies:  # truth with its interval; win + tie + lose = 1 against each other policy
    for m in (k for k in held_out[p] if k.startswith("truth/") and "/ci_" not in k):
      assert held_out[p][f"{m}/ci_low"] <= held_out[p][m] <= held_out[p][f"{m}/ci_high"]
      if p != "rl":
        vs = held_out[f"rl vs {p}"]
        assert abs(vs[f"win/{m}"] + vs[f"tie/{m}"] + vs[f"lose/{m}"] - 1) < 1e-9
        assert vs[f"diff/{m}/ci_low"] <= vs[f"diff/{m}"] <= vs[f"diff/{m}/ci_high"]
  samples = [json.loads(x) for x in (eval_dir / "samples.jsonl").read_text().splitlines()]
  assert samples and all(s[p].strip() for s in samples for p in policies), samples[:2]
  assert "## held_out" in (eval_dir / "report.md").read_text()
  return results


def config_of(spec: str):
  name, _, variant = spec.removeprefix("configs/").partition(".py")
  variant = variant.removeprefix(":")
  return importlib.import_module(f"configs.{name}").get_config(variant)


@pytest.mark.slow
@pytest.mark.parametrize("algo, devices", [("ppo", 8), ("grpo", 1)])
def test_girl_tiny_end_to_end(tmp_path, algo, devices):
  spec = f"configs/girl.py:tiny,algo={algo}"
  first = train(spec, tmp_path, devices=devices)
  # The console shows jaxprof's progress, not orbax's or TFDS's INFO chatter (issue 11).
  assert "checkpoint_manager.py" not in first.stderr and "Stage 'sft': starting" in first.stderr
  assert "Using custom data configuration" not in first.stderr
  for stage in ("sft", "reward_model"):
    assert_stage_outputs(tmp_path, stage, 3)
  assert_rl_outputs(tmp_path, algo, config_of(spec))
  rows = read_metrics(tmp_path, algo)
  if algo == "ppo":
    assert "critic/explained_variance" in rows[-1]
  # The oracle on a fixed probe set after steps 2 and 3 (eval.probe_every=2 and the last step).
  assert ["probe/truth/oracle_match" in r for r in rows] == [False, True, True]
  assert all(0 <= r["probe/truth/oracle_match"] <= 1 for r in rows[1:])
  for stage in ("sft", "reward_model", algo):  # curves next to the report
    (tmp_path / "eval" / f"curves_{stage}.png").stat()
  results = assert_eval_outputs(tmp_path, {"held_out", "enhanced_rec"}, ("base", "start", "rl"))
  assert "truth/oracle_match" in results["held_out"]["rl"]
  assert "win/truth/oracle_match" in results["held_out"]["rl vs base"]  # Table II
  assert "Reward model: held-out pairwise accuracy" in (tmp_path / "eval" / "report.md").read_text()
  done = json.loads((tmp_path / "reward_model" / "DONE.json").read_text())["outputs"]
  assert done["sampled_pairs_train"] >= 0 and (tmp_path / "reward_model" / "sampled_pairs.json"
                                               ).exists()  # reward_model.sampled ran
  assert {"plain/mlp", "plain/dot", "rl/N1/mlp", "start/N4/dot", "rl/N2/mlp"} <= set(
      results["enhanced_rec"])  # Tables III/IV, and Fig. 5's sweep over N
  # Re-running the same command skips every completed stage.
  again = train(spec, tmp_path, devices=devices)
  assert again.stderr.count("already complete") == 4


def read_metrics(workdir: pathlib.Path, stage: str) -> list[dict]:
  return [json.loads(x) for x in (workdir / stage / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("variant, devices", [
    ("langptune.py:tiny", 8), ("blue.py:tiny", 8), ("hifi.py:tiny", 8),
    ("hifi.py:tiny,reward=listwise", 1), ("blue.py:tiny,lora=4", 1),
    ("langptune.py:tiny,recommender=trained", 1)])
def test_grpo_systems_tiny_end_to_end(tmp_path, variant, devices):
  """Each system's tiny run, on 8 simulated devices (the default mesh adapts to the batches)."""
  spec = f"configs/{variant}"
  train(spec, tmp_path, devices=devices)
  assert_rl_outputs(tmp_path, "grpo", config_of(spec))
  if variant.startswith("hifi"):  # the paper's comparison, the engagement model's accuracy
    table = assert_eval_outputs(tmp_path, {"held_out", "member_engagement"})["member_engagement"]
    assert {"raw sources", "start", "rl", "rl vs start", "rl vs raw sources"} == set(table)
    assert {"downstream/retrieval_ndcg@10", "text/future_ndcg"} <= set(table["rl"])
    done = read_done(tmp_path, "reward_model")
    assert 0 <= done["eval_auc_raw"] <= 1 and 0 <= done["eval_accuracy_sampled"] <= 1
    assert "held-out rows: accuracy_raw" in (tmp_path / "eval" / "report.md").read_text()
  else:  # LangPTune's table: profiles, baselines, the second encoder, RL vs the zero-shot profile
    table = assert_eval_outputs(tmp_path, {"held_out", "recommenders"})["recommenders"]
    assert {"start", "rl", "raw history", "SASRec", "popularity", "rl @paraphrase-L3",
            "rl vs start", "rl vs start @paraphrase-L3"} <= set(table)
    assert "diff/recall@10/ci_low" in table["rl vs start"]
    if variant.startswith("langptune"):  # the trainable recommender ranks the same profiles
      assert {"rl +trained recommender", "rl vs start +trained recommender"} <= set(table)
    profiles = (tmp_path / "eval" / "profiles.jsonl").read_text().splitlines()
    assert {"user_index", "target", "start", "rl"} <= set(json.loads(profiles[0]))
    if variant == "langptune.py:tiny":
      assert_runs_pool(tmp_path, table)
  # Every report has curves over steps, the truth on the probe set among them (issue 11).
  assert any(k.startswith("probe/truth/") for k in read_metrics(tmp_path, "grpo")[-1])
  if variant.startswith("blue"):  # the next-item NLL is in BLUE's loss (rl.aux_nll)
    assert all(m["rl/aux_nll"] > 0 for m in read_metrics(tmp_path, "grpo"))
  (tmp_path / "eval" / "curves_grpo.png").stat()


def assert_runs_pool(workdir: pathlib.Path, table: dict) -> None:
  """`jaxprof.seeds` over the same run twice re-scores its profiles to the recorded
  means, and pooling a run with itself changes no estimate."""
  out = workdir / "seeds"
  proc = subprocess.run(
      [sys.executable, "-m", "jaxprof.seeds", f"--runs={workdir},{workdir}",
       f"--out={out}", "--n_boot=200"], cwd=ROOT, env=dict(os.environ, CI="true"),
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  pooled = json.loads((out / "results.json").read_text())
  assert set(pooled["tables"]) == {"truth", "truth @paraphrase-L3", "truth +trained recommender"}
  for drift in pooled["rescore_drift"].values():  # every start and rl row of the eval's tables
    assert len(drift) == 6 and max(drift.values()) < 1e-9, drift
  rows = pooled["tables"]["truth"]
  assert len(rows) == 4  # the two runs (same workdir, told apart) and the two pooled rows
  one, both = next(iter(rows.values())), rows["pooled, runs and rows resampled"]
  for stat in ("rl/recall@10", "start/mrr", "diff/mrr"):
    assert both[stat] == pytest.approx(one[stat])
  assert one["diff/mrr"] == pytest.approx(table["rl vs start"]["diff/mrr"])
  assert "pooled, rows resampled" in (out / "report.md").read_text()
  (out / "gains.png").stat()


def test_mistyped_key_names_the_nearest(tmp_path):
  proc = train("configs/girl.py:tiny", tmp_path, "--config.rl.kl_cof=0.1", check=False)
  assert proc.returncode != 0
  assert "rl.kl_coef" in proc.stderr and "kl_cof" in proc.stderr


def test_unknown_variant_is_an_error(tmp_path):
  proc = train("configs/girl.py:tinyy", tmp_path, check=False)
  assert proc.returncode != 0 and "tinyy" in proc.stderr


@pytest.mark.parametrize("spec", ["girl.py:tiny", "langptune.py:tiny", "blue.py:tiny",
                                  "hifi.py:tiny", "girl.py"])
def test_default_mesh_fits_any_device_count(spec):
  from jaxprof import train as train_lib

  config = config_of(f"configs/{spec}")
  sizes = train_lib.batch_sizes(config).values()
  for devices in (1, 2, 4, 8):
    shape = train_lib.mesh_shape(config, devices)
    assert shape["data"] * shape["fsdp"] * shape["tensor"] == devices
    assert all(s % (shape["data"] * shape["fsdp"]) == 0 for s in sizes), (devices, shape)
    # As many devices on the batch as the batches allow.
    assert shape["data"] == math.gcd(devices, *sizes)
  config.mesh.data = 8  # a mesh set by hand is kept, and checked
  assert train_lib.mesh_shape(config, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
