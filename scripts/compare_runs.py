r"""Do two run directories hold the same metric values? (A refactor must not change any.)

  python scripts/compare_runs.py /tmp/before/girl /tmp/after/girl [--rtol=0]

Compares every stage's metrics.jsonl (every key but timings and throughput: perf/*, */time,
*_s, */seconds) step by step, and eval/results.json metric by metric. Eval results written before
evaluators existed ({"start": ..., "rl": ..., "enhanced_rec": ...}) are read as the "held_out" and
"enhanced_rec" evaluators' tables. Prints each difference; exits 1 if there is any.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

_UNTIMED = ("perf/", "time", "_s", "seconds", "elapsed")


def _metrics(path: pathlib.Path) -> list[dict]:
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [{k: v for k, v in r.items() if not any(t in k for t in _UNTIMED)} for r in rows]


def _results(path: pathlib.Path) -> dict[str, float]:
  results = json.loads(path.read_text())
  if "held_out" not in results:  # the layout before evaluators
    results = {"held_out": {k: v for k, v in results.items() if k != "enhanced_rec"},
               **({"enhanced_rec": results["enhanced_rec"]} if "enhanced_rec" in results else {})}
  return {f"{e}/{row}/{m}": v for e, table in results.items() for row, ms in table.items()
          for m, v in ms.items()}


def _same(a, b, rtol: float) -> bool:
  if isinstance(a, float) and isinstance(b, float):
    if math.isnan(a) and math.isnan(b):
      return True
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))
  return a == b


def compare(a: pathlib.Path, b: pathlib.Path, rtol: float = 0.0) -> list[str]:
  diffs = []
  for ma in sorted(a.glob("*/metrics.jsonl")):
    mb = b / ma.relative_to(a)
    if not mb.exists():
      diffs.append(f"{mb}: missing")
      continue
    ra, rb = _metrics(ma), _metrics(mb)
    if len(ra) != len(rb):
      diffs.append(f"{ma.parent.name}: {len(ra)} vs {len(rb)} metric rows")
    for x, y in zip(ra, rb, strict=False):
      for k in sorted(set(x) | set(y)):
        if not _same(x.get(k), y.get(k), rtol):
          diffs.append(f"{ma.parent.name} step {x.get('step')}: {k} {x.get(k)!r} vs {y.get(k)!r}")
  ea, eb = a / "eval" / "results.json", b / "eval" / "results.json"
  if ea.exists():
    xa, xb = _results(ea), _results(eb)
    for k in sorted(set(xa) | set(xb)):
      if not _same(xa.get(k), xb.get(k), rtol):
        diffs.append(f"eval: {k} {xa.get(k)!r} vs {xb.get(k)!r}")
  return diffs


def main(argv: list[str]) -> int:
  args = [a for a in argv if not a.startswith("--")]
  rtol = float(next((a.split("=")[1] for a in argv if a.startswith("--rtol=")), 0.0))
  if len(args) != 2:
    print(__doc__)
    return 2
  a, b = map(pathlib.Path, args)
  diffs = compare(a, b, rtol)
  n = sum(len(_metrics(p)) for p in a.glob("*/metrics.jsonl"))
  print("\n".join(diffs) if diffs else f"{a} and {b}: identical ({n} metric rows, eval results)")
  return 1 if diffs else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
