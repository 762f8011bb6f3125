r"""Writes the table of docs/scaling.md by running `jaxprof.compile_check` once per row.

  .venv/bin/python scripts/scaling_table.py                # the rows not yet in docs/scaling/
  .venv/bin/python scripts/scaling_table.py --rerun=llama3-8b

Rows: model shape x TPU slice x sharding preset, for the GRPO update at LangPTune's shape
(configs/langptune.py) and the PPO update (policy and critic) at GIRL's (configs/girl.py), in
bfloat16 compute with one prompt per chip. Each row's command is printed in the table; its JSON
goes to docs/scaling/<row>.json. The table replaces what lies between the markers in
docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxprof import compile_check  # noqa: E402  (its chip table; sets libtpu's environment)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scaling.md"
OUT = ROOT / "docs" / "scaling"
BEGIN, END = "<!-- scaling table: begin -->", "<!-- scaling table: end -->"

MODELS = ("smollm2-135m", "qwen2.5-1.5b", "llama3-8b")
SLICES = {"v5e-8": "v5e:2x4", "v5p-64": "v5p:4x4x2", "v5p-256": "v5p:4x8x4"}
WORKLOADS = {"GRPO (LangPTune)": ("configs/langptune.py", "grpo", "grpo/update"),
             "PPO (GIRL)": ("configs/girl.py", "ppo", "ppo/policy_update,ppo/critic_update")}
TENSOR = 4  # fsdp_tp: the tensor axis within a host's chips
# Beyond the grid: 8B trained with LoRA on a v5e-8 (in full it does not fit), and 8 chips of
# v5p (95 GiB each) as the 8x H100 node's stand-in: the same 8-device program, 80 GB per GPU.
PROXY = {"v5p-16": "v5p:2x2x2"}
EXTRA = ([(w, "llama3-8b", "v5e-8", "fsdp", 16) for w in WORKLOADS]
         + [(w, m, "v5p-16", "fsdp", 0) for w in WORKLOADS for m in ("qwen2.5-1.5b", "llama3-8b")])
ICI = {c.name: c.ici_bandwidth for c in compile_check.CHIPS.values()}


def chips(topology: str) -> int:
  return math.prod(int(x) for x in topology.split(":")[1].split("x"))


def command(workload: str, model: str, topology: str, preset: str, lora: int = 0) -> list[str]:
  config, stage, steps = WORKLOADS[workload]
  n = chips(topology)
  mesh = {"dp": dict(data=-1, fsdp=1, tensor=1), "fsdp": dict(data=1, fsdp=-1, tensor=1),
          "fsdp_tp": dict(data=1, fsdp=n // TENSOR, tensor=TENSOR)}[preset]
  return ["python", "-m", "jaxprof.compile_check", f"--config={config}",
          f"--topology={topology}", f"--model={model}", f"--config.mesh.rules={preset}",
          *[f"--config.mesh.{k}={v}" for k, v in mesh.items()],
          "--config.model.compute_dtype=bfloat16", f"--config.rollout.prompts_per_step={n}",
          *([f"--config.model.lora.rank={lora}"] if lora else []),
          f"--stages={stage}", f"--steps={steps}"]


def run_row(cmd: list[str], out: pathlib.Path) -> dict:
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, *cmd[1:], f"--json={out}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800)
  if proc.returncode not in (0, 1) or not out.exists():
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"}
  return json.loads(out.read_text())


def row_cells(result: dict) -> tuple[str, str, str, str]:
  """(fits, per-device GB, bound ms, tokens/s/chip) over the row's steps (PPO: both updates)."""
  if "error" in result:
    return "error", "", "", result["error"][:120]
  steps = result["steps"]
  budget = result["chip"]["hbm"] * result["hbm_fraction"]
  fits = all(not s["error"] and s["total"] <= budget for s in steps)
  if any(s["error"] for s in steps):
    return "no (XLA: out of HBM)", "", "", ""
  gb = max(s["total"] for s in steps) / 1e9
  ici = ICI[result["chip"]["name"]] * chips(result["topology"]) / result["devices"]
  bounds = [max(s["compute_s"], s["memory_s"], s["collective_bytes"] / ici) for s in steps]
  tokens = max(s["tokens_per_chip_s"] * s["bound_s"] for s in steps)  # tokens per chip per step
  bound = sum(bounds)  # PPO: the policy's and the critic's updates one after the other
  return ("yes" if fits else "no"), f"{gb:.2f}", f"{bound * 1e3:.1f}", f"{tokens / bound:,.0f}"


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--rerun", default="", help="comma-separated model shapes to run again "
                      "(rows with a JSON in docs/scaling/ are otherwise read back)")
  args = parser.parse_args()
  rerun = set(filter(None, args.rerun.split(",")))
  OUT.mkdir(parents=True, exist_ok=True)
  lines = ["| workload | model | slice | preset | fits | GB / chip | bound ms | tokens/s/chip "
           "| command |", "|---|---|---|---|---|---|---|---|---|"]
  grid = [(w, m, s, p, 0) for w in WORKLOADS for m in MODELS for s in SLICES
          for p in ("dp", "fsdp", "fsdp_tp")]
  for workload, model, slice_name, preset, lora in grid + EXTRA:
    cmd = command(workload, model, {**SLICES, **PROXY}[slice_name], preset, lora)
    key = (f"{workload.split()[0].lower()}_{model}_{slice_name}_{preset}"
           + (f"_lora{lora}" if lora else ""))
    out = OUT / f"{key}.json"
    if out.exists() and model not in rerun:
      result = json.loads(out.read_text())
    else:
      print(f"{key} ...", flush=True)
      out.unlink(missing_ok=True)
      result = run_row(cmd, out)
    label = f"{preset} + LoRA r={lora}" if lora else preset
    lines.append(f"| {workload} | {model} | {slice_name} | {label} | "
                 + " | ".join(row_cells(result)) + f" | `{' '.join(cmd)}` |")
  text = DOC.read_text()
  start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
  DOC.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])
  print("\n".join(lines))


if __name__ == "__main__":
  main()
