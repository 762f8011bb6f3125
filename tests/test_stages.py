"""Tests for jaxprof/stages.py: the stage runner, atomic writes and the non-finite guard."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxprof import stages


def _config(names) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      stages=tuple(names), checkpoint=dict(every=3, keep=2), log=dict(every=100),
      max_nonfinite=3))


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_write(tmp_path):
  path = tmp_path / "sub" / "f.json"
  stages.atomic_write_json(path, {"b": 1, "a": [1, 2]})
  assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
  stages.atomic_write_text(path, "new")
  assert path.read_text() == "new"
  with pytest.raises(TypeError):  # Not JSON-able: the old file stays.
    stages.atomic_write_json(path, {"x": object()})
  assert path.read_text() == "new"
  assert os.listdir(path.parent) == ["f.json"]  # No temp files left behind.


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
  path = tmp_path / "f.txt"
  path.write_text("old")

  def boom(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(stages.os, "replace", boom)
  with pytest.raises(OSError, match="disk full"):
    stages.atomic_write_text(path, "new")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


# ------------------------------------------------------------------------------ runner


class _Recorder:
  """Fake stages that record their calls; `fail` makes one raise once."""

  def __init__(self, fail: str | None = None):
    self.calls = []
    self.fail = fail

  def stage(self, name):
    def run(ctx, stage_dir, inputs):
      self.calls.append((name, dict(inputs)))
      assert stage_dir.name == name and stage_dir.is_dir()
      (stage_dir / "progress.txt").write_text(name)
      if self.fail == name:
        self.fail = None
        raise RuntimeError(f"{name} crashed")
      return {"path": str(stage_dir / "export"), "score": len(inputs)}
    return run

  def registry(self, names=stages.STAGE_NAMES):
    return {n: self.stage(n) for n in names}


def test_runs_in_order_and_passes_outputs(tmp_path):
  rec = _Recorder()
  config = _config(["sft", "reward_model", "ppo", "eval"])
  out = stages.run_stages(stages.Context(config), tmp_path, rec.registry())
  assert [c[0] for c in rec.calls] == ["sft", "reward_model", "ppo", "eval"]
  assert rec.calls[2][1] == {"sft": out["sft"], "reward_model": out["reward_model"]}
  assert out["eval"]["score"] == 3
  done = json.loads((tmp_path / "ppo" / "DONE.json").read_text())
  assert done["stage"] == "ppo" and done["outputs"] == out["ppo"] and "seconds" in done


def test_rerun_skips_done_and_resumes_crashed(tmp_path):
  config = _config(["sft", "reward_model", "ppo"])
  rec = _Recorder(fail="reward_model")
  with pytest.raises(RuntimeError, match="reward_model crashed"):
    stages.run_stages(stages.Context(config), tmp_path, rec.registry())
  assert (tmp_path / "sft" / "DONE.json").exists()
  assert not (tmp_path / "reward_model" / "DONE.json").exists()
  assert (tmp_path / "reward_model" / "progress.txt").exists()  # Its checkpoints stay.

  rec2 = _Recorder()
  out = stages.run_stages(stages.Context(config), tmp_path, rec2.registry())
  assert [c[0] for c in rec2.calls] == ["reward_model", "ppo"]  # sft skipped.
  assert rec2.calls[0][1] == {"sft": out["sft"]}  # Recorded outputs still feed later stages.

  rec3 = _Recorder()
  assert stages.run_stages(stages.Context(config), tmp_path, rec3.registry()) == out
  assert rec3.calls == []


@pytest.mark.parametrize("names,match", [
    (["sft", "rlhf"], r"unknown stage.*'rlhf'.*valid stages are: sft, reward_model, ppo"),
    (["sft", "sft"], r"listed twice"),
    ([], r"empty"),
])
def test_bad_stage_names_fail_before_running(tmp_path, names, match):
  rec = _Recorder()
  with pytest.raises(stages.StageError, match=match):
    stages.run_stages(stages.Context(_config(names)), tmp_path, rec.registry())
  assert rec.calls == [] and not any(tmp_path.iterdir())


def test_explicit_stage_list_and_bare_string(tmp_path):
  rec = _Recorder()
  stages.run_stages(stages.Context(_config(["sft", "ppo"])), tmp_path, rec.registry(),
                    stages=["ppo"])
  assert [c[0] for c in rec.calls] == ["ppo"]
  assert stages.check_stages("eval", {"eval": None}) == ("eval",)


def test_corrupt_done_file(tmp_path):
  (tmp_path / "sft").mkdir()
  (tmp_path / "sft" / "DONE.json").write_text("{oops")
  with pytest.raises(stages.StageError, match="DONE.json is not valid JSON"):
    stages.run_stages(stages.Context(_config(["sft"])), tmp_path, _Recorder().registry())


# ------------------------------------------------------------------------------ non-finite


def test_guard_counts_and_raises():
  guard = stages.NonFiniteGuard(max_consecutive=3)
  assert guard(1, {"loss": jnp.float32(1.0), "grads": jnp.bool_(True)})
  assert not guard(2, {"loss": jnp.float32(np.nan), "grads": jnp.bool_(True)})
  assert not guard(3, {"loss": jnp.float32(1.0), "grads": jnp.bool_(False)})
  assert guard(4, {"loss": 1.0})
  assert (guard.skipped, guard.consecutive) == (2, 0)
  assert not guard(5, {"loss": np.inf, "kl": np.nan})
  assert not guard(6, {"loss": 1.0, "kl": np.nan})
  with pytest.raises(stages.NonFiniteError, match=r"step 7: 'kl' is not finite \(3 consecutive"):
    guard(7, {"loss": 2.0, "kl": jnp.array([1.0, np.inf])})
  assert guard.skipped == 5


def test_guard_rejects_bad_limit():
  with pytest.raises(ValueError):
    stages.NonFiniteGuard(0)


def test_select_if_finite_in_jit():
  old = {"w": jnp.ones((2, 3)), "step": jnp.int32(1), "rng": jax.random.key(0)}

  @jax.jit
  def update(state, scale):
    new = {"w": state["w"] * scale, "step": state["step"] + 1,
           "rng": jax.random.split(state["rng"])[0]}
    terms = stages.finite_flags({"loss": jnp.sum(new["w"])})
    ok = terms["loss"] & stages.all_finite(new)
    return stages.select_if_finite(new, state, ok), terms

  good, terms = update(old, 2.0)
  assert bool(terms["loss"]) and int(good["step"]) == 2
  np.testing.assert_array_equal(good["w"], 2 * np.ones((2, 3)))
  bad, terms = update(old, np.nan)
  assert not bool(terms["loss"])
  np.testing.assert_array_equal(bad["w"], old["w"])
  assert int(bad["step"]) == 1
  np.testing.assert_array_equal(jax.random.key_data(bad["rng"]),
                                jax.random.key_data(old["rng"]))


def test_all_finite():
  assert bool(stages.all_finite({"a": jnp.ones(2), "i": jnp.int32(3)}))
  assert not bool(stages.all_finite({"a": jnp.array([1.0, np.inf])}))
  assert bool(stages.all_finite({"i": jnp.int32(3)}))  # No float leaves.


# ------------------------------------------------------------------------------ end to end


def _toy_stage(crash_at: int | None):
  """A tiny SGD stage run by the loop every trainer uses (`trainers.loop.run`): checkpoint every
  3 steps, resume, guard, metrics. `crash_at` preempts the run before that step."""
  from jaxprof.trainers import loop

  total = 10

  @jax.jit
  def update(state, rng):
    noise = jax.random.normal(jax.random.fold_in(rng, state["step"]), state["w"].shape)
    grad = state["w"] + noise
    new = {"w": state["w"] - 0.1 * grad, "step": state["step"] + 1}
    return new, {"train/loss": jnp.sum(grad**2), "train/finite": jnp.isfinite(jnp.sum(grad))}

  def run(ctx, stage_dir, inputs):
    def one_step(state, step):
      if step + 1 == crash_at:
        raise KeyboardInterrupt("preempted")
      return update(state, jax.random.key(0))

    state = {"w": jnp.arange(4.0), "step": jnp.int32(0)}
    state, _ = loop.run(stage_dir, state, one_step, total, ctx.config)
    return {"w": np.asarray(state["w"]).tolist()}

  return run


def test_crash_and_resume_matches_uninterrupted_run(tmp_path):
  config = _config(["sft"])
  clean = stages.run_stages(stages.Context(config), tmp_path / "clean", {"sft": _toy_stage(None)})
  with pytest.raises(KeyboardInterrupt):
    stages.run_stages(stages.Context(config), tmp_path / "crash", {"sft": _toy_stage(crash_at=8)})
  resumed = stages.run_stages(stages.Context(config), tmp_path / "crash", {"sft": _toy_stage(None)})
  assert resumed == clean  # Bitwise: floats compared exactly.
  lines = (tmp_path / "crash" / "sft" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == list(range(1, 11))
  clean_lines = (tmp_path / "clean" / "sft" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(a)["train/loss"] for a in lines] == [
      json.loads(b)["train/loss"] for b in clean_lines]
