r"""Curves over steps of a run's stages, one PNG per stage, from their metrics.jsonl.

  python scripts/plot_run.py runs/girl results/girl

The eval stage writes the same curves into `<workdir>/eval/`; this redraws them for any run (for
example one stopped before its eval), via `jaxprof.evaluation.stage.plot_curves`.
"""

from __future__ import annotations

import pathlib
import sys

from jaxprof.evaluation.stage import plot_curves


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__)
    return 2
  workdir, out = map(pathlib.Path, argv)
  out.mkdir(parents=True, exist_ok=True)
  for metrics_path in sorted(workdir.glob("*/metrics.jsonl")):
    path = plot_curves(metrics_path, out)
    if path:
      print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
