r"""Kill a run anywhere, resume it, and check it ends exactly where an uninterrupted run ends.

  python scripts/kill_anywhere.py --kills=10 [--config=configs/girl.py:tiny] [--seed=0] \
      [any jaxprof.train flag, e.g. --stages=sft,reward_model,ppo]

Runs `python -m jaxprof.train` once without interruption (the reference, timing its start-up and
stages), then runs the same command into a second workdir and SIGKILLs it `--kills` times,
re-running the same command after each kill. Kill points alternate between a random moment 0-1 s
after the run logs a new step (so each kill lets the run move on through the stages) and the
moment a checkpoint write is under way (an orbax temporary directory exists); in a stage that logs
no steps (eval) the kill comes at a random moment of its reference duration. When the killed run
finally completes, every exported weight file (`*.safetensors` outside checkpoints/) must be
bit-equal to the reference's. Prints one line per kill (time, stage under way) and a summary;
exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train_command(config: str, workdir: pathlib.Path, extra: list[str]) -> list[str]:
  return [sys.executable, "-m", "jaxprof.train", f"--config={config}", f"--workdir={workdir}",
          *extra]


def env() -> dict[str, str]:
  # One CPU device and no progress bar, as CI runs it.
  return dict(os.environ, CI="true", JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(ROOT))


def stage_dirs(workdir: pathlib.Path) -> list[pathlib.Path]:
  """The workdir's stage directories (every directory but TensorBoard's), oldest first: a stage
  makes its directory when it starts."""
  if not workdir.exists():
    return []
  return sorted((p for p in workdir.iterdir() if p.is_dir() and p.name != "tb"),
                key=lambda p: p.stat().st_ctime)


def stage_under_way(workdir: pathlib.Path) -> str:
  """The first stage directory without a DONE.json (what the run is doing)."""
  stages = stage_dirs(workdir)
  running = [s.name for s in stages if not (s / "DONE.json").exists()]
  return running[0] if running else ("between stages" if stages else "start-up")


def reference_run(command: list[str], workdir: pathlib.Path) -> tuple[float, float, list]:
  """Runs `command` to completion, polling `workdir`: (total seconds, seconds until the first
  stage started, [(stage, seconds it ran)] in order)."""
  start, seen = time.time(), {}  # stage -> seconds until its directory appeared
  with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a full pipe would stall it
    proc = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    while proc.poll() is None:
      for d in stage_dirs(workdir):
        seen.setdefault(d.name, time.time() - start)
      time.sleep(0.01)
    if proc.returncode != 0:
      log.seek(0)
      sys.exit(f"kill_anywhere: the reference run failed:\n{log.read()[-2000:]}")
  total = time.time() - start
  stages = [(d.name, json.loads((d / "DONE.json").read_text())["seconds"])
            for d in stage_dirs(workdir) if (d / "DONE.json").exists()]
  return total, min(seen.values(), default=0.0), stages


def checkpoint_write_under_way(workdir: pathlib.Path, since: float) -> bool:
  """An orbax temporary directory made after `since` (one a killed run left behind is older)."""
  for p in workdir.glob("*/checkpoints/*"):
    try:
      if "tmp" in p.name and p.stat().st_ctime >= since:
        return True
    except FileNotFoundError:  # renamed into place meanwhile
      pass
  return False


def exported_weights(workdir: pathlib.Path) -> dict[str, bytes]:
  files = sorted(workdir.rglob("*.safetensors"))
  return {str(p.relative_to(workdir)): p.read_bytes() for p in files
          if "checkpoints" not in p.parts}


def progress(workdir: pathlib.Path) -> int:
  """Metric lines written so far over every stage, plus stages done: the run's progress."""
  total = len(list(workdir.glob("*/DONE.json")))
  for path in workdir.glob("*/metrics.jsonl"):
    try:
      total += path.read_bytes().count(b"\n")
    except FileNotFoundError:
      pass
  return total


def kill_once(command: list[str], workdir: pathlib.Path, how: str, delay: float,
              timeout: float) -> tuple[str, float] | None:
  """Starts `command` and SIGKILLs it. "step": `delay` seconds after it logs its first new
  step or finishes a stage (so every kill lets the run move on); "time": `delay` seconds after it
  starts (for a stage that logs no steps); "checkpoint": as soon as a checkpoint write is under
  way. Returns (what was under way, seconds since start) or None if the run completed first."""
  start = time.time()
  logged, stepped_at = progress(workdir), None
  proc = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    while proc.poll() is None:
      now = time.time()
      if now - start > timeout:
        raise RuntimeError(f"no kill point within {timeout:.0f} s")
      if how == "step" and stepped_at is None and progress(workdir) > logged:
        stepped_at = now
      if ((how == "time" and now - start >= delay)
          or (how == "step" and stepped_at is not None and now - stepped_at >= delay)
          or (how == "checkpoint" and checkpoint_write_under_way(workdir, start))):
        under_way = stage_under_way(workdir)
        if how == "checkpoint":
          under_way += " (checkpoint write)"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return under_way, now - start
      time.sleep(0.005)
  finally:
    if proc.poll() is None:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
  if proc.returncode != 0:
    raise RuntimeError(f"the run failed (exit {proc.returncode}) before it could be killed")
  return None


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/girl.py:tiny")
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="", help="where both runs go (default: a temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the run directories")
  args, extra = parser.parse_known_args(argv)  # other flags go to jaxprof.train
  base = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="kill_anywhere_"))
  reference, killed = base / "reference", base / "killed"
  for d in (reference, killed):
    shutil.rmtree(d, ignore_errors=True)
  rng = random.Random(args.seed)

  duration, startup, stages = reference_run(train_command(args.config, reference, extra),
                                             reference)
  print(f"reference run: {duration:.1f} s; stages " + ", ".join(
      f"{name} {secs:.1f} s" for name, secs in stages), flush=True)
  seconds = dict(stages)

  command = train_command(args.config, killed, extra)
  kills = []
  for i in range(args.kills):
    done = {d.name for d in stage_dirs(killed) if (d / "DONE.json").exists()}
    next_stage = next((name for name, _ in stages if name not in done), None)
    if next_stage is None:
      print(f"kill {i + 1}: every stage is complete; stopping", flush=True)
      break
    steps = (reference / next_stage / "metrics.jsonl").exists()
    if not steps:  # e.g. eval: a random moment of it
      how, delay = "time", startup + rng.uniform(0.05, 0.9) * seconds[next_stage]
    elif i % 2:
      how, delay = "checkpoint", 0.0
    else:
      how, delay = "step", rng.uniform(0.0, 1.0)
    hit = kill_once(command, killed, how, delay, timeout=3 * duration)
    if hit is None:  # the run completed before this kill point: nothing left to interrupt
      print(f"kill {i + 1}: the run completed first; stopping", flush=True)
      break
    kills.append(hit)
    print(f"kill {i + 1}: SIGKILL at {hit[1]:.1f} s, during {hit[0]}", flush=True)
  out = subprocess.run(command, env=env(), cwd=ROOT, capture_output=True, text=True)
  if out.returncode != 0:
    sys.exit(f"kill_anywhere: the resumed run failed:\n{out.stderr[-2000:]}")

  want, got = exported_weights(reference), exported_weights(killed)
  diffs = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
  for k in diffs:
    print(f"DIFFERENT: {k}")
  print(f"{len(kills)} kills ({sum('checkpoint' in k for k, _ in kills)} during checkpoint "
        f"writes; stages hit: {sorted({k.split(' (')[0] for k, _ in kills})}); "
        f"{len(want)} exported weight files, {len(want) - len(diffs)} bit-equal", flush=True)
  if not args.keep and not args.workdir:
    shutil.rmtree(base, ignore_errors=True)
  return 1 if diffs or not want else 0


if __name__ == "__main__":
  sys.exit(main())
