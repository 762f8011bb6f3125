r"""One logged key of several runs' RL stage on one plot (e.g. the paper's Figure 2: length).

  python scripts/overlay_curves.py results/member_profiles/length.png rollout/length_mean \
      penalty=runs/hifi none=runs/hifi_no_length format=runs/hifi_format --target=150

Each LABEL=WORKDIR reads WORKDIR/grpo/metrics.jsonl (or ppo/); --target draws a dashed line and
a +-15% band around it. Prints each run's mean of the key over its first and last five steps.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def read(workdir: pathlib.Path, key: str) -> list[tuple[int, float]]:
  for stage in ("grpo", "ppo"):
    path = workdir / stage / "metrics.jsonl"
    if path.exists():
      rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
      return [(r["step"], r[key]) for r in rows
              if isinstance(r.get(key), float) and math.isfinite(r[key])]
  raise SystemExit(f"overlay_curves: no grpo/ or ppo/ metrics.jsonl under {workdir}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("out", type=pathlib.Path)
  parser.add_argument("key")
  parser.add_argument("runs", nargs="+", help="LABEL=WORKDIR")
  parser.add_argument("--target", type=float, default=None)
  args = parser.parse_args()
  fig, ax = plt.subplots(figsize=(6, 3.6))
  for spec in args.runs:
    label, sep, workdir = spec.partition("=")
    if not sep:
      raise SystemExit(f"overlay_curves: {spec!r} is not LABEL=WORKDIR")
    points = read(pathlib.Path(workdir), args.key)
    values = [v for _, v in points]
    print(f"{label}: first 5 steps {sum(values[:5]) / len(values[:5]):.1f}, last 5 "
          f"{sum(values[-5:]) / len(values[-5:]):.1f} ({len(values)} steps)")
    ax.plot([s for s, _ in points], values, marker="o", markersize=3, label=label)
  if args.target:
    ax.axhline(args.target, color="grey", linestyle="--", linewidth=1)
    ax.axhspan(0.85 * args.target, 1.15 * args.target, color="grey", alpha=0.15)
  ax.set_xlabel("RL step")
  ax.set_ylabel(args.key)
  ax.legend()
  fig.tight_layout()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
