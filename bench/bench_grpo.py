r"""One GRPO (or PPO) step, jaxprof vs TRL, side by side on this machine.

  .venv/bin/python -m bench.bench_grpo --rounds=3                      # GRPO vs TRL GRPOTrainer
  .venv/bin/python -m bench.bench_grpo --algo=ppo --prompts=4 --group=2 --rounds=3   # GIRL shape

The workload (the same on both sides): the packaged SmolLM2-135M-Instruct in float32, `prompts`
chat prompts (41-45 tokens with the template) x `group` completions of exactly `new_tokens` tokens
at temperature 1 (TRL: min_new_tokens; jaxprof: no EOS), beta 0.04 with a frozen reference, AdamW
lr 1e-6, reward -|words - 40| (bench/workers.py). Each system runs in its own subprocess (so peak
RSS is its own: VmHWM), builds its trainer, takes one compiling/warm-up step, then the parent asks
for steps in alternation, A B then B A, round after round. The speed-up is the median over rounds
of (TRL step seconds / jaxprof step seconds).

TRL is run twice over if --trl_checkpointing=both: with its default activation checkpointing
(TRL turns it on) and without. PPO: TRL 1.16 has no PPOTrainer in its main API any more, so
--algo=ppo times jaxprof's PPO step at GIRL's shape against jaxprof's GRPO step at the same number
of completions and reports the cost per completion of each.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from absl import app, flags

from bench import common, workers
from jaxprof import api

FLAGS = flags.FLAGS
flags.DEFINE_enum("algo", "grpo", ["grpo", "ppo"], "grpo: vs TRL; ppo: jaxprof PPO vs GRPO.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (each runs every system once).")
workers.define_workload_flags()
flags.DEFINE_enum("trl_checkpointing", "default", ["default", "off", "both"],
                  "TRL activation checkpointing: its default (on), off, or a run of each.")
flags.DEFINE_string("remat", "full", "jaxprof model.remat.")


class Worker:
  """A benchmark subprocess speaking bench/workers.py's protocol."""

  def __init__(self, name: str, argv: list[str]):
    self.name = name
    self.proc = subprocess.Popen([sys.executable, "-m", *argv], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    self.info = self._read("info")
    self.steps = [self._read("step")]  # the first (compiling / warm-up) step
    print(f"{name}: warm-up step {self.steps[0]['seconds']:.1f} s", flush=True)

  def _read(self, event: str) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.name} worker exited early (exit code {self.proc.wait()}); run "
                         f"it by hand to see its stderr")
    msg = json.loads(line)
    if msg.get("event") != event:
      raise RuntimeError(f"{self.name}: expected a {event!r} message, got {msg}")
    return msg

  def step(self) -> dict:
    self.proc.stdin.write("step\n")
    self.proc.stdin.flush()
    self.steps.append(self._read("step"))
    return self.steps[-1]

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.flush()
      self.proc.wait(timeout=120)

  @property
  def timed(self) -> list[float]:
    return [s["seconds"] for s in self.steps[1:]]

  @property
  def peak_rss_gb(self) -> float:
    return max(s["peak_rss_bytes"] for s in self.steps) / 1e9


def _shape_args(prompts: int, group: int) -> list[str]:
  return [f"--prompts={prompts}", f"--group={group}", f"--new_tokens={FLAGS.new_tokens}"]


def main(argv):
  del argv
  model_dir = str(api.resolve_model_dir(api.PACKAGED))
  print(common.machine_summary(), flush=True)
  shape = _shape_args(FLAGS.prompts, FLAGS.group)
  base = "jaxprof" if FLAGS.algo == "grpo" else "jaxprof PPO"
  specs = {base: ["bench.jaxprof_worker", f"--algo={FLAGS.algo}", f"--remat={FLAGS.remat}",
                       *shape]}
  if FLAGS.algo == "grpo":
    modes = {"default": ["on"], "off": ["off"], "both": ["on", "off"]}[FLAGS.trl_checkpointing]
    for mode in modes:
      specs[f"TRL (checkpointing {mode})"] = [
          "bench.trl_worker", f"--model_dir={model_dir}", *shape,
          f"--activation_checkpointing={mode == 'on'}"]
  else:  # GRPO at the same number of completions per step, the reference for cost per completion
    specs["jaxprof GRPO"] = ["bench.jaxprof_worker", "--algo=grpo", f"--remat={FLAGS.remat}",
                             *shape]
  procs = []
  try:
    for name, argv in specs.items():  # started one at a time: warm-ups are not timed side by side
      procs.append(Worker(name, argv))
    for r in range(FLAGS.rounds):
      for w in procs if r % 2 == 0 else reversed(procs):
        s = w.step()
        print(f"round {r}: {w.name} {s['seconds']:.2f} s", flush=True)
  finally:
    for w in procs:
      w.close()
  report(procs)


def report(procs: list[Worker]) -> None:
  base = procs[0]
  completions = FLAGS.prompts * FLAGS.group
  rows = []
  for w in procs:
    ratio = statistics.median(o / b for o, b in zip(w.timed, base.timed, strict=True))
    phases = w.steps[-1].get("phases")
    split = ", ".join(f"{k} {v:.1f}" for k, v in phases.items() if k != "reward") if phases else "-"
    mfu = w.steps[-1].get("mfu_train")
    rows.append([w.name, common.fmt(statistics.median(w.timed), 2),
                 common.fmt(statistics.median(w.timed) / completions, 3),
                 f"{ratio:.2f}x", f"{w.peak_rss_gb:.2f}", split,
                 f"{100 * mfu:.0f}%" if mfu else "-"])
  print(f"\n{FLAGS.algo.upper()} step, {FLAGS.prompts} prompts x {FLAGS.group} completions x "
        f"{FLAGS.new_tokens} tokens, {FLAGS.rounds} alternated rounds "
        f"(step seconds per round: " + "; ".join(
            f"{w.name} " + ", ".join(f"{t:.1f}" for t in w.timed) for w in procs) + ")")
  for w in procs:  # the workload is only the same if every completion had new_tokens tokens
    lengths = [s["completion_tokens"] for s in w.steps]
    if any(c.get("mean") != FLAGS.new_tokens or c.get("max") != FLAGS.new_tokens for c in lengths):
      print(f"WARNING: {w.name} completions were not all {FLAGS.new_tokens} tokens: {lengths}")
  print(common.markdown_table(
      ["system", "step s (median)", "s per completion", f"time / {base.name} (median of rounds)",
       "peak RSS GB", "last step phases s", "train MFU"], rows))


if __name__ == "__main__":
  app.run(main)
