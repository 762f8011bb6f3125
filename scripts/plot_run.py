r"""Curves over steps of a run's stages, one PNG per stage, from their metrics.jsonl.

  python scripts/plot_run.py runs/girl results/girl

Plots every stage's loss, reward, KL, gradient norm and accuracy terms that it logged (the keys
in CURVES present in its metrics.jsonl), one panel per key, into `<out>/curves_<stage>.png`.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

CURVES = ("sft/loss", "rm/loss", "rm/accuracy", "reward/mean", "rl/kl", "rl/loss",
          "rl/grad_norm", "critic/loss", "critic/explained_variance", "rollout/length_mean",
          "rl/entropy")


def plot_stage(metrics_path: pathlib.Path, out: pathlib.Path) -> pathlib.Path | None:
  rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
  keys = [k for k in CURVES if any(isinstance(r.get(k), float) for r in rows)]
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
  fig.suptitle(metrics_path.parent.name)
  fig.tight_layout()
  path = out / f"curves_{metrics_path.parent.name}.png"
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__)
    return 2
  workdir, out = map(pathlib.Path, argv)
  out.mkdir(parents=True, exist_ok=True)
  for metrics_path in sorted(workdir.glob("*/metrics.jsonl")):
    path = plot_stage(metrics_path, out)
    if path:
      print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
