"""What both sides of a step benchmark share: the workload's prompts and reward, and the protocol.

A worker is a subprocess that builds its trainer, then reports every optimizer step as one JSON
line on its own stdout and waits for the parent's next command on stdin ("step" runs one more,
anything else ends it). Both workers print nothing else on stdout: `Protocol` keeps a private copy
of file descriptor 1 and points fd 1 (C-level writes too) at stderr.
"""

from __future__ import annotations

import json
import os
import sys

# Varied requests; with SmolLM2's chat template (default system turn added) each is 41-45 tokens.
REQUESTS = [
    "Write a short job description for a data engineer with Spark experience.",
    "Write a short job description for a night-shift cardiac nurse.",
    "Describe the ideal candidate for a senior maths teacher position.",
    "List three jobs for a warehouse supervisor who trains forklift drivers.",
    "Recommend three thrillers for a fan of Fargo and The Godfather.",
    "Write a short profile of a junior UX designer who works remotely.",
    "Summarise the skills of an electrician moving into solar power.",
    "Write a short job description for a bilingual software sales manager.",
    "Describe the strengths of a chef who runs a small vegan restaurant.",
    "Write a short job advert for a primary school librarian.",
    "Suggest three careers for a retired pilot who enjoys teaching.",
    "Write a short job description for a hospital pharmacist in London.",
    "Describe a good first job for a graduate in environmental science.",
    "Write a short profile of a freelance translator of Japanese novels.",
    "List three job titles for a bookkeeper who knows payroll.",
    "Write a short job description for a backend developer who uses Go.",
]

TARGET_WORDS = 40


def define_workload_flags(prompts: int = 4, group: int = 8, new_tokens: int = 64) -> None:
  """The flags that fix the workload's shape, the same in the driver and in every worker."""
  from absl import flags

  flags.DEFINE_integer("prompts", prompts, "Distinct prompts per step.")
  flags.DEFINE_integer("group", group, "Completions per prompt.")
  flags.DEFINE_integer("new_tokens", new_tokens, "Tokens per completion (exactly this many).")


def word_reward(text: str) -> float:
  """The workload's reward: -|words in the completion - 40|."""
  return -abs(len(text.split()) - float(TARGET_WORDS))


def memory() -> dict[str, int]:
  """VmRSS and VmHWM (peak resident set) of this process, in bytes."""
  with open("/proc/self/status") as f:
    kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k.startswith("Vm")}
  return {"rss_bytes": 1024 * kb["VmRSS"], "peak_rss_bytes": 1024 * kb["VmHWM"]}


class Protocol:
  """The worker's end: `emit` JSON lines to the parent, `next_command` blocks on stdin."""

  def __init__(self):
    self._out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # C-level and Python writes to stdout now land on stderr
    sys.stdout = sys.stderr

  def emit(self, obj: dict) -> None:
    self._out.write(json.dumps(obj) + "\n")
    self._out.flush()

  def next_command(self) -> str:
    return sys.stdin.readline().strip()

  def finish(self) -> None:
    self._out.flush()
    sys.stderr.flush()
    os._exit(0)


def run_in_checkout(script: str, checkout: str, *args: str) -> dict:
  """Runs `script --worker *args` with `checkout` first on the path and as the working directory
  (a baseline commit's code, this checkout's benchmark), and returns the JSON of its last stdout
  line."""
  import subprocess

  env = dict(os.environ, PYTHONPATH=checkout, HF_HUB_OFFLINE="1")
  res = subprocess.run([sys.executable, script, "--worker", *args], cwd=checkout, env=env,
                       capture_output=True, text=True, check=False)
  if res.returncode:
    raise RuntimeError(f"worker in {checkout} failed:\n{res.stderr[-3000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])
