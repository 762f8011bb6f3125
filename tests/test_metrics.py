"""Tests for jaxprof/metrics.py: JSONL lines, TensorBoard events, resume, console, timer."""

import json
import pathlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from jaxprof import metrics


def _masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC32C (as in the record format spec)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(tb_dir: pathlib.Path) -> list[event_pb2.Event]:
  """Reads every event file in `tb_dir`, checking each record's length and data CRCs."""
  events = []
  for path in sorted(tb_dir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack("<Q", header)
      (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
      assert length_crc == _masked_crc(header)
      body = data[pos + 12:pos + 12 + length]
      (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
      assert body_crc == _masked_crc(body)
      events.append(event_pb2.Event.FromString(body))
      pos += 16 + length
  return events


def _scalars(events) -> dict[str, list[tuple[int, float]]]:
  out = {}
  for e in events:
    for v in e.summary.value:
      out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


def _lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_and_tensorboard(tmp_path):
  with metrics.MetricWriter(tmp_path, "ppo", total_steps=3, progress=False) as w:
    for step in (1, 2, 3):
      out = w.write(step, {"train/loss": jnp.float32(1.0 / step), "rl/kl": np.float64(0.5),
                           "reward/length": step, "train/bad": jnp.float32(np.nan)})
      assert out["reward/length"] == float(step)
      # Flushed per line: readable while the writer is open.
      assert len(_lines(tmp_path / "ppo" / "metrics.jsonl")) == step
  lines = _lines(tmp_path / "ppo" / "metrics.jsonl")
  assert [r["step"] for r in lines] == [1, 2, 3]
  assert lines[1]["train/loss"] == pytest.approx(0.5) and lines[2]["rl/kl"] == 0.5
  assert lines[0]["train/bad"] is None  # Non-finite values are null in JSON.
  scalars = _scalars(_read_events(tmp_path / "tb" / "ppo"))
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [1, 0.5, 1 / 3], rtol=1e-6)
  assert np.isnan(scalars["train/bad"][0][1])


def test_resume_drops_later_lines(tmp_path):
  w = metrics.MetricWriter(tmp_path, "sft", total_steps=10, progress=False)
  for step in range(1, 7):
    w.write(step, {"train/loss": float(step)})
  w.close()
  path = tmp_path / "sft" / "metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"step": 7, "train/lo')  # A line cut short by the crash.
  # The last checkpoint was at step 4: steps 5 and 6 run again.
  w = metrics.MetricWriter(tmp_path, "sft", total_steps=10, start_step=4, progress=False)
  for step in range(5, 8):
    w.write(step, {"train/loss": 10.0 * step})
  w.close()
  lines = _lines(path)
  assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6, 7]
  assert [r["train/loss"] for r in lines] == [1, 2, 3, 4, 50, 60, 70]
  # TensorBoard is told to discard the first run's events after step 4.
  events = _read_events(tmp_path / "tb" / "sft")
  assert any(e.session_log.status == event_pb2.SessionLog.START and e.step == 5 for e in events)


def test_truncate_jsonl_missing_file(tmp_path):
  assert metrics.truncate_jsonl(tmp_path / "none.jsonl", 3) == 0


def test_non_scalar_rejected(tmp_path):
  with metrics.MetricWriter(tmp_path, "sft", total_steps=1, progress=False) as w:
    with pytest.raises(ValueError, match="'train/vec'.*shape"):
      w.write(1, {"train/vec": jnp.ones(3)})


def test_log_lines_without_tty(tmp_path, monkeypatch):
  logged = []
  monkeypatch.setattr(logging, "info", lambda msg, *args: logged.append(msg % args))
  monkeypatch.setenv("CI", "true")
  with metrics.MetricWriter(tmp_path, "grpo", total_steps=5, show=("train/loss",),
                            log_every=2) as w:
    assert w._bar is None
    for step in range(1, 6):
      w.write(step, {"train/loss": 0.25, "rl/kl": 1.0})
  steps = [m for m in logged if m.startswith("[grpo] step")]
  assert len(steps) == 3  # Steps 2, 4 and the last one.
  assert "step 2/5 train/loss=0.25" in steps[0] and "rl/kl" not in steps[0] and "ETA" in steps[0]


def test_progress_bar(tmp_path, capsys):
  with metrics.MetricWriter(tmp_path, "eval", total_steps=4, show=("train/loss",),
                            progress=True, start_step=1) as w:
    for step in (2, 3, 4):
      w.write(step, {"train/loss": 2.0})
    assert w._bar.n == 4
  assert "train/loss=2" in capsys.readouterr().err


def test_step_timer(monkeypatch):
  clock = iter([10.0, 11.0, 15.0])
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  timer = metrics.StepTimer()
  assert timer.lap(1, tokens=100) == {}
  assert timer.lap(2, tokens=100, examples=4) == {
      "perf/step_time_s": 1.0, "perf/tokens_per_s": 100.0, "perf/examples_per_s": 4.0}
  assert timer.lap(4, tokens=100)["perf/step_time_s"] == 2.0  # Two steps in 4 s.
