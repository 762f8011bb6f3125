"""A run whose workdir is a `gs://` URL writes everything there, and resumes from there.

A `:tiny` LangPTune run (GRPO then eval) in `gs://b/runs/lpt`, with `gs://` faked by
`tests/fake_gcs.py` (epath's fsspec filesystem and orbax's TensorStore kvstore both on a local
directory standing for the bucket). The GRPO stage is interrupted after its step-2 checkpoint; the
re-run resumes from it, and a third run skips both completed stages.
"""

import json
import os

import pytest

from configs import langptune
from jaxprof import metrics, train
from tests.fake_gcs import FakeGCS, bucket  # noqa: F401  (the fixture)

WORKDIR = "gs://b/runs/lpt"


def tiny_config():
  config = langptune.get_config("tiny")  # 3 GRPO steps, a checkpoint every 2
  config.eval.evaluators = {"held_out": dict(config.eval.evaluators.held_out)}
  config.mesh.data = 1  # the tests' 8 simulated devices would not divide the tiny batches
  return config


def read_jsonl(path) -> list[dict]:
  return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_gs_workdir_holds_the_whole_run_and_resumes(bucket, tmp_path, monkeypatch):  # noqa: F811
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # a URL taken for a local path would show up here as "gs:/b/..."
  write = metrics.MetricWriter.write

  def interrupted(self, step, values):
    if step == 3:
      raise KeyboardInterrupt("stopped after the step-2 checkpoint")
    return write(self, step, values)

  with monkeypatch.context() as m:
    m.setattr(metrics.MetricWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(tiny_config(), WORKDIR)
  run = bucket / "b" / "runs" / "lpt"
  assert (run / "grpo" / "checkpoints" / "2").is_dir() and not (run / "grpo" / "DONE.json").exists()
  first = read_jsonl(run / "grpo" / "metrics.jsonl")  # flushed with the checkpoint
  assert [r["step"] for r in first] == [1, 2]

  out = train.train_and_evaluate(tiny_config(), WORKDIR)
  rows = read_jsonl(run / "grpo" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[:2] == first  # steps 1-2 not re-run
  assert sorted(os.listdir(run / "grpo" / "checkpoints")) == ["2", "3"]
  # orbax got the URL itself and built TensorStore's kvstore for it (the gcs driver, here faked).
  assert any(p.startswith(f"{WORKDIR}/grpo/checkpoints/3") for p in FakeGCS.kvstore_paths)
  assert out["grpo"]["policy_dir"] == f"{WORKDIR}/grpo/export"
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(
      os.listdir(run / "grpo" / "export"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tb" / "grpo"))
  assert json.loads((run / "config.json").read_text())["system"] == "langptune"
  results = json.loads((run / "eval" / "results.json").read_text())
  assert set(results["held_out"]) == {"start", "rl", "rl vs start"}  # read the gs:// export
  for name in ("report.md", "samples.jsonl", "held_out.png", "curves_grpo.png", "DONE.json"):
    assert (run / "eval" / name).stat().st_size > 0, name
  done = {s: json.loads((run / s / "DONE.json").read_text()) for s in ("grpo", "eval")}

  def not_again(*args):
    raise AssertionError("a completed stage ran again")

  monkeypatch.setitem(train.STAGES, "grpo", not_again)
  monkeypatch.setitem(train.STAGES, "eval", not_again)
  again = train.train_and_evaluate(tiny_config(), WORKDIR)
  assert again["eval"] == out["eval"] and again["grpo"] == out["grpo"]
  assert done == {s: json.loads((run / s / "DONE.json").read_text()) for s in ("grpo", "eval")}
  assert os.listdir(cwd) == []  # nothing written to the working directory
  assert not list(tmp_path.glob("**/gs:*"))  # nor a local "gs:" folder anywhere
