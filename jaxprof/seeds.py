r"""Runs of one config (e.g. one per seed), pooled: is RL's gain bigger than run-to-run noise?

  python -m jaxprof.seeds --runs=runs/s0,runs/s1,runs/s2 --out=results/x/seeds

One run's paired interval only says which users were drawn; two runs of the same config can
still disagree in sign, because RL itself is noisy. This reads each run's saved texts (its eval
stage's `profiles.jsonl`: one text per held-out row from the start and the RL policy; a results/
copy of a run, with config.json beside it, works too), re-scores them with the run's own system
(`System.truth_views`, the rankings its evaluation used), checks the re-scored means against the
run's `results.json`, and writes `report.md`, `results.json` and `gains.png` into --out: per run,
RL vs start with its paired interval, then the runs pooled, with two intervals: rows resampled
(these trained policies, other users) and runs and rows resampled (other training runs too;
with three runs a coarse interval).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib
import ml_collections
import numpy as np
from absl import app, flags, logging

from jaxprof import paths, systems
from jaxprof.evaluation import stage
from jaxprof.recsys import metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

POLICIES = ("start", "rl")  # the reference first
RUNS_NOTE = ("runs and rows resampled: the runs drawn with replacement, then each one's rows; "
             "it also covers how much training runs differ")

_RUNS = flags.DEFINE_list("runs", None, "Workdirs of runs of one config (e.g. one per seed) whose "
                          "eval stage wrote profiles.jsonl.")
_OUT = flags.DEFINE_string("out", None, "Directory for report.md, results.json and gains.png.")
_METRICS = flags.DEFINE_list("metrics", ["recall@10", "ndcg@10", "mrr"], "Truth metrics to pool.")
_REFERENCE = flags.DEFINE_float("reference_gain", None, "A relative gain to draw as a line in "
                                "gains.png (e.g. a paper's), as a fraction: 0.175 for +17.5%.")
_BOOT = flags.DEFINE_integer("n_boot", 2000, "Bootstrap draws.")

PerRow = dict[str, dict[str, dict[str, np.ndarray]]]  # view -> policy -> metric -> [N]


class Run(NamedTuple):
  """One run re-scored: its config, its texts' truth, the held-out rows' ids (`user_index`) and
  |re-scored mean - recorded mean| per row label of its results.json."""

  config: ml_collections.ConfigDict
  per_row: PerRow
  row_ids: tuple[int, ...]
  drift: dict[str, float]


def rescore(workdir: str) -> Run:
  """Re-scores the run's `eval/profiles.jsonl` with its own config's system."""
  run = paths.as_path(workdir)
  # A workdir has eval/profiles.jsonl; a results/ copy of one keeps the eval files beside config.
  eval_dir = run / "eval" if (run / "eval" / "profiles.jsonl").exists() else run
  config_path, profiles_path = run / "config.json", eval_dir / "profiles.jsonl"
  for p in (config_path, profiles_path):
    if not p.exists():
      raise FileNotFoundError(f"{p} does not exist: --runs takes workdirs whose eval stage wrote "
                              "profiles.jsonl (one line per held-out row), or results/ copies")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  system = systems.get(config)
  rows = system.rl_rows("eval")
  saved = [json.loads(x) for x in profiles_path.read_text().splitlines() if x.strip()]
  if len(saved) != len(rows):
    raise ValueError(f"{profiles_path} has {len(saved)} rows; the config's eval split gives "
                     f"{len(rows)} (config.eval.num_examples): is it this run's config.json?")
  for i, (s, r) in enumerate(zip(saved, rows, strict=True)):
    missing = [p for p in POLICIES if p not in s]
    if missing or s.get("user_index") != r.get("user_index"):
      raise ValueError(f"{profiles_path} line {i + 1}: " + (
          f"no {missing} text" if missing else f"user_index {s.get('user_index')} where the eval "
          f"split has {r.get('user_index')}") + "; re-run the eval stage of this workdir")
  per_row: PerRow = {}
  for name in POLICIES:
    views = system.truth_views(rows, [s[name] for s in saved])
    for view, values in views.items():
      per_row.setdefault(view, {})[name] = values
  return Run(config, per_row, tuple(s.get("user_index") for s in saved),
             _drift(eval_dir / "results.json", per_row))


def _drift(path, per_row: PerRow) -> dict[str, float]:
  """{row label: largest |re-scored mean - recorded mean|} over the rows the run's results.json
  (`path`) has in its evaluators' tables, so a change in scoring since the run shows up."""
  if not path.exists():
    return {}
  tables = json.loads(path.read_text()).values()
  out = {}
  for view, policies in per_row.items():
    for name, values in policies.items():
      for table in tables:
        row = table.get(name + view, {})
        gaps = [abs(float(np.nanmean(v)) - row[m]) for m, v in values.items() if m in row]
        if gaps:
          out[name + view] = max(gaps + [out.get(name + view, 0.0)])
  return out


def compare(runs: Sequence[tuple[str, PerRow]], metric_names: Sequence[str], n_boot: int,
            same_rows: bool = False) -> dict[str, dict[str, dict[str, float]]]:
  """{view: {row label: {stat: value}}}: per run and pooled, RL vs start on each metric: both
  means, the paired difference and the relative gain, each with its 95% interval. `same_rows`:
  every run scored the same rows, so the pooled intervals draw one set of rows for all runs."""
  out = {}
  for view in runs[0][1]:
    table = {}
    for label, per_row in runs:
      rl, start = per_row[view]["rl"], per_row[view]["start"]
      row = {}
      for m in metric_names:
        row[f"start/{m}"], row[f"rl/{m}"] = float(np.nanmean(start[m])), float(np.nanmean(rl[m]))
        _put(row, f"diff/{m}", metrics.paired_bootstrap_ci(rl[m], start[m], n_boot))
        _put(row, f"gain/{m}", metrics.paired_relative_gain_ci(rl[m], start[m], n_boot))
      table[label] = row
    for label, resample_runs in (("pooled, rows resampled", False),
                                 ("pooled, runs and rows resampled", True)):
      row = {}
      for m in metric_names:
        pairs = [(p[view]["rl"][m], p[view]["start"][m]) for _, p in runs]
        row[f"start/{m}"] = float(np.nanmean(np.concatenate([b for _, b in pairs])))
        row[f"rl/{m}"] = float(np.nanmean(np.concatenate([a for a, _ in pairs])))
        for stat, relative in (("diff", False), ("gain", True)):
          _put(row, f"{stat}/{m}", metrics.pooled_paired_ci(
              pairs, relative=relative, resample_runs=resample_runs, same_rows=same_rows,
              n_boot=n_boot))
      table[label] = row
    out[f"truth{view}"] = table
  return out


def _put(row: dict[str, float], key: str, ci: tuple[float, float, float]) -> None:
  row[key], row[f"{key}/ci_low"], row[f"{key}/ci_high"] = ci


def report(tables, labels: Sequence[str], drift: dict[str, dict[str, float]],
           same_rows: bool) -> str:
  """Markdown: one table per view (rows: runs, then pooled), relative gains in percent."""
  out = ["# RL vs start over several runs\n",
         "Runs: " + ", ".join(f"`{label}`" for label in labels) + ". Each run's held-out texts "
         "re-scored (`python -m jaxprof.seeds`). Relative gain = mean(RL) / "
         "mean(start) - 1; pooled over every (run, row) pair. Intervals: 95% percentile "
         f"bootstrap; per run and 'rows resampled' over rows in pairs; {RUNS_NOTE}. " + (
             "Every run scored the same rows, so each draw of rows is shared by all runs."
             if same_rows else "The runs scored different rows, each resampled on its own.")
         + "\n"]
  for view, table in tables.items():
    first, *_ = names = list(dict.fromkeys(k.split("/")[1] for row in table.values() for k in row))
    out += [f"## {view}\n", f"| | start {first} | RL {first} | {first} gain | " + " | ".join(
        f"{m} diff" for m in names) + " |", "|---|" + "---|" * (3 + len(names))]
    for label, row in table.items():
      cells = [f"{row[f'start/{first}']:.4f}", f"{row[f'rl/{first}']:.4f}",
               _cell(row, "gain", first), *(_cell(row, "diff", m) for m in names)]
      out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
  worst = {label: max(d.values(), default=0.0) for label, d in drift.items()}
  out.append("Re-scored means vs each run's results.json, largest absolute difference: "
             + ", ".join(f"`{label}` {w:.1e}" for label, w in worst.items()) + ".\n")
  return "\n".join(out)


def _cell(row: dict[str, float], stat: str, metric: str) -> str:
  v, low, high = (row[f"{stat}/{metric}{s}"] for s in ("", "/ci_low", "/ci_high"))
  return (f"{v:+.1%} [{low:+.1%}, {high:+.1%}]" if stat == "gain"
          else f"{v:+.4f} [{low:+.4f}, {high:+.4f}]")


def plot(tables, metric: str, path, reference: float | None = None) -> None:
  """gains.png: the relative gain on `metric` with its interval, per run and pooled, one panel
  per view."""
  fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 0.5 * max(
      len(t) for t in tables.values()) + 1.5), squeeze=False, sharey=True)
  for ax, (view, table) in zip(axes[0], tables.items(), strict=True):
    labels = list(table)[::-1]
    y = np.arange(len(labels))
    g = np.array([table[n][f"gain/{metric}"] for n in labels]) * 100
    low = np.array([table[n][f"gain/{metric}/ci_low"] for n in labels]) * 100
    high = np.array([table[n][f"gain/{metric}/ci_high"] for n in labels]) * 100
    ax.errorbar(g, y, xerr=np.nan_to_num([g - low, high - g]), fmt="o", capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    if reference is not None:
      ax.axvline(100 * reference, color="tab:red", ls="--", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_title(view, fontsize=9)
    ax.set_xlabel(f"{metric}: RL vs start, % (95% CI)" + (
        f"\ndashed: the reference gain, {reference:+.1%}" if reference is not None else ""),
        fontsize=8)
  fig.tight_layout()
  stage.save_figure(fig, path)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass runs with --runs=a,b,c")
  if not _RUNS.value or not _OUT.value:
    raise app.UsageError("--runs (workdirs, comma-separated) and --out are required")
  runs, drift, row_ids, systems_seen = [], {}, set(), set()
  for workdir in _RUNS.value:
    try:
      run = rescore(workdir)
    except (FileNotFoundError, ValueError) as e:  # a run that cannot be re-scored: one line
      sys.exit(f"jaxprof.seeds: {e}")
    systems_seen.add(run.config.system)
    row_ids.add(run.row_ids)
    label = f"{paths.as_path(workdir).name} (seed {run.config.seed})"
    if label in drift:  # the same workdir twice
      label += f" [{len(runs) + 1}]"
    logging.info("%s re-scored: views %s", label, list(run.per_row))
    runs.append((label, run.per_row))
    drift[label] = run.drift
  if len(systems_seen) > 1:
    raise app.UsageError(f"--runs mixes systems {sorted(systems_seen)}; pool runs of one config")
  same_rows = len(row_ids) == 1
  tables = compare(runs, _METRICS.value, _BOOT.value, same_rows)
  out = paths.as_path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  paths.atomic_write_json(out / "results.json", {"runs": list(_RUNS.value), "same_rows": same_rows,
                                                 "tables": tables, "rescore_drift": drift})
  paths.atomic_write_text(out / "report.md", report(tables, [r[0] for r in runs], drift,
                                                    same_rows))
  plot(tables, _METRICS.value[0], out / "gains.png", _REFERENCE.value)
  logging.info("wrote %s", out)


if __name__ == "__main__":
  app.run(main)
