"""The eval stage: run the configured evaluators on the run's policies, write what they found.

Policies: "start" (the SFT export, or model.path) and "rl" (the RL stage's export, if one ran).
Writes `results.json` ({evaluator: {row: {metric: value}}}), `report.md` (one table per
evaluator), `samples.jsonl`, one bar chart per evaluator (`<name>.png`) and the curves over steps
of every earlier stage (`curves_<stage>.png`: losses, reward, KL, the truth probe) into the stage
dir, process 0 only, through `jaxprof.paths` (the workdir may be a `gs://` URL).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping

import jax
import matplotlib
import numpy as np
from absl import logging
from etils import epath

from jaxprof import evaluation, paths
from jaxprof.trainers import policy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def policies(config, inputs: Mapping[str, Mapping]) -> dict[str, str]:
  """{"base": model.path (with eval.include_base, when SFT ran), "start": the policy RL started
  from, "rl": the RL export (if an RL stage ran)}."""
  out = {}
  if config.eval.include_base and "sft" in inputs:
    out["base"] = config.model.path
  out["start"] = policy.start_dir(config, inputs)
  for algo in ("ppo", "grpo"):
    if algo in inputs:
      out["rl"] = inputs[algo]["policy_dir"]
  return out


def run(ctx, stage_dir: epath.Path, inputs) -> dict:
  ev = evaluation.Context(ctx.config, ctx.system, policies(ctx.config, inputs), inputs,
                          stage_dir)
  results, samples = {}, []
  writer = jax.process_index() == 0  # one writer of the shared stage directory
  for name, kwargs in ctx.config.eval.evaluators.items():
    logging.info("evaluator %s on policies %s", name, ev.policies)
    result = evaluation.get(name)(ev, **dict(kwargs))
    results[name] = result.table
    samples += result.samples
    if writer:
      plot(result.table, stage_dir / f"{name}.png", name)
  if not writer:
    return {"results": results}
  paths.atomic_write_json(stage_dir / "results.json", results)
  paths.atomic_write_text(stage_dir / "samples.jsonl",
                          "".join(json.dumps(s) + "\n" for s in samples))
  paths.atomic_write_text(stage_dir / "report.md", report(ctx.config, results, samples, inputs))
  for metrics_path in sorted(stage_dir.parent.glob("*/metrics.jsonl")):
    plot_curves(metrics_path, stage_dir)
  return {"results": results}


def _table(table: evaluation.Table) -> list[str]:
  """Markdown: the rows, then the comparison rows ("X vs Y") as a table of their own; one column
  per row label when there are fewer labels than metrics. A metric's 95% interval
  (`<m>/ci_low`, `<m>/ci_high`) is written in its cell: "0.713 [0.619, 0.787]"."""
  pairs = {n: row for n, row in table.items() if " vs " in n}
  if pairs and len(pairs) < len(table):
    return [*_table({n: r for n, r in table.items() if n not in pairs}), "", *_table(pairs)]
  labels = list(table)
  metrics = sorted({m for row in table.values() for m in row if "/ci_" not in m})

  def fmt(row, m):
    v = row.get(m)
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return "nan" if m in row else ""
    low, high = row.get(f"{m}/ci_low"), row.get(f"{m}/ci_high")
    return f"{v:.3f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else (
        f"{v:.3f}")

  if len(labels) < len(metrics):
    out = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    out += [f"| {m} | " + " | ".join(fmt(table[n], m) for n in labels) + " |" for m in metrics]
  else:
    out = ["| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    out += [f"| {n} | " + " | ".join(fmt(table[n], m) for m in metrics) + " |" for n in labels]
  return out


def report(config, results: Mapping[str, evaluation.Table], samples,
           inputs: Mapping[str, Mapping] | None = None) -> str:
  out = [f"# Evaluation: {config.system}\n",
         "`truth/*` is the system's independent measure; `reward/*` is what RL optimised.\n"]
  rm = (inputs or {}).get("reward_model", {})
  if rm.get("eval_pairwise_accuracy") is not None:
    sampled = rm.get("eval_pairwise_accuracy_sampled")
    out.append(f"Reward model: held-out pairwise accuracy {rm['eval_pairwise_accuracy']:.3f} "
               f"(`reward_model.backbone={config.reward_model.backbone}`)" + (
                   f"; on pairs of the start policy's own samples for held-out prompts "
                   f"{sampled:.3f} ({rm.get('sampled_pairs_eval')} pairs)" if sampled is not None
                   else "") + ".\n")
    if rm.get("eval_pairwise_accuracy_init") is not None:
      out.append("The plain cosine the head started from: " + ", ".join(
          f"{rm[k]:.3f}" for k in ("eval_pairwise_accuracy_init",
                                   "eval_pairwise_accuracy_sampled_init") if k in rm) + ".\n")
  held_out_scores = {k.removeprefix("eval_"): v for k, v in rm.items()
                     if k.startswith(("eval_auc_", "eval_accuracy_"))}
  if held_out_scores:  # a classifier reward model (e.g. backbone "engagement")
    out.append(f"Reward model (`reward_model.backbone={config.reward_model.backbone}`), on "
               "held-out rows: " + ", ".join(f"{k} {v:.3f}"
                                             for k, v in sorted(held_out_scores.items())) + ".\n")
  for name, table in results.items():
    doc = " ".join((evaluation.get(name).__doc__ or "").strip().split("\n\n")[0].split())
    out += [f"## {name}\n", doc + "\n" if doc else "", *_table(table), ""]
  if samples:
    out.append("## Samples\n")
    for key, text in samples[0].items():
      out.append(f"**{key}**\n\n```\n{text}\n```\n")
  return "\n".join(out)


def save_figure(fig, path: str | os.PathLike) -> None:
  """Writes a matplotlib figure as a PNG to `path` (local or `gs://`, atomically) and closes it."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  paths.atomic_write_bytes(path, buf.getvalue())


def plot(table: evaluation.Table, path: str | os.PathLike, title: str) -> None:
  """Bars of every metric for each row label, with their 95% intervals where the table has them
  (`<metric>/ci_low`, `/ci_high`). Lengths (another scale) and the "X vs Y" comparison rows
  (in the report) are left out."""
  names = [n for n in table if " vs " not in n]
  metrics = sorted({k for n in names for k in table[n]
                    if not k.startswith("length/") and "/ci_" not in k})
  # Room for every bar, plus the legend beside them; more than 10 rows take tab20's colours.
  fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names) * len(metrics)) + 3, 4))
  if len(names) > 10:
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
  width = 0.8 / max(len(names), 1)
  for j, n in enumerate(names):
    row = table[n]
    means = np.array([row.get(m, np.nan) for m in metrics], np.float64)
    low = np.array([row.get(f"{m}/ci_low", np.nan) for m in metrics], np.float64)
    high = np.array([row.get(f"{m}/ci_high", np.nan) for m in metrics], np.float64)
    err = np.nan_to_num(np.stack([means - low, high - means]), nan=0.0)
    ax.bar(np.arange(len(metrics)) + j * width, means, width, yerr=err, capsize=3, label=n)
  ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, metrics, rotation=30,
                ha="right")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the bars
  ax.set_title(title)
  ax.set_ylabel("mean over held-out prompts\n(error bars: 95% bootstrap CI)", fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)


CURVES = ("sft/loss", "rm/loss", "rm/accuracy", "reward/mean", "rl/kl", "rl/loss",
          "rl/grad_norm", "critic/loss", "critic/explained_variance", "rollout/length_mean",
          "rollout/truncated_fraction", "rl/entropy")


def plot_curves(metrics_path: str | os.PathLike, out: str | os.PathLike) -> epath.Path | None:
  """`out/curves_<stage>.png`: one panel per logged key of CURVES and per probe/* key (the truth
  on fixed held-out prompts), over the stage's steps. None when the stage logged none of them."""
  metrics_path = paths.as_path(metrics_path)
  rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
  probes = sorted({k for r in rows for k in r if k.startswith("probe/")})
  keys = [k for k in (*CURVES, *probes) if any(isinstance(r.get(k), float) for r in rows)]
  if not rows or not keys:
    return None
  cols = min(4, len(keys))
  rows_n = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.6 * rows_n), squeeze=False)
  for ax in axes.flat[len(keys):]:
    ax.axis("off")
  for ax, key in zip(axes.flat, keys, strict=False):
    points = [(r["step"], r[key]) for r in rows
              if isinstance(r.get(key), float) and math.isfinite(r[key])]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  fig.suptitle(f"{metrics_path.parent.name}: logged per step"
               + (" (probe/*: the truth on fixed held-out prompts)" if probes else ""))
  fig.tight_layout()
  path = paths.as_path(out) / f"curves_{metrics_path.parent.name}.png"
  save_figure(fig, path)
  return path
