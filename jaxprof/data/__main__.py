"""Builds one data set and prints its statistics and a few examples.

  python -m jaxprof.data job_market --seed=0 --data_dir=/tmp/tfds --sizes=rec_test=1000,sft=500
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from jaxprof.data import builders, loader

_SEED = flags.DEFINE_integer("seed", 0, "Seed the data set is built from.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: cache_dir()/tfds).")
_SIZES = flags.DEFINE_list("sizes", [], "Size overrides as key=value, e.g. rec_test=1000.")
_EXAMPLES = flags.DEFINE_integer("examples", 2, "Examples to print per split.")


def _stats(name: str, rows: list[dict]) -> str:
  parts = [f"{len(rows)} rows"]
  for key, value in rows[0].items():
    if isinstance(value, str):
      lengths = [len(r[key].split()) for r in rows if r[key]]
      if lengths:
        parts.append(f"{key} words mean {np.mean(lengths):.0f} max {max(lengths)}")
    elif isinstance(value, np.ndarray) and value.ndim == 1:
      parts.append(f"{key} len mean {np.mean([len(r[key]) for r in rows]):.1f}")
  if "label" in rows[0]:
    labels = np.array([r["label"] for r in rows])
    probs = np.array([r["prob"] for r in rows], float)
    if (labels >= 0).any():
      parts.append(f"label rate {np.mean(labels[labels >= 0] == 1):.3f}")
    if np.isfinite(probs).any():
      parts.append(f"oracle prob mean {np.nanmean(probs):.3f}")
    if len(set(labels.tolist())) == 2:
      from sklearn.metrics import roc_auc_score
      parts.append(f"oracle AUC {roc_auc_score(labels, probs):.3f}")
  if "past_actions" in rows[0]:
    acts = np.concatenate([r["past_actions"] for r in rows] + [r["future_actions"] for r in rows])
    parts.append("apply/click/skip " + "/".join(f"{x:.2f}" for x in np.bincount(acts, minlength=3)
                                                / len(acts)))
  return f"[{name}] " + "; ".join(parts)


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(f"usage: python -m jaxprof.data NAME [flags]; NAME in "
                         f"{sorted(builders.BUILDERS)}")
  sizes = {}
  for item in _SIZES.value:
    key, sep, value = item.partition("=")
    if not sep or not value.isdigit():
      raise app.UsageError(f"--sizes entry {item!r} is not key=integer")
    sizes[key] = int(value)
  start = time.perf_counter()
  builder = builders.build(argv[1], seed=_SEED.value, data_dir=_DATA_DIR.value, **sizes)
  print(f"built {argv[1]} in {time.perf_counter() - start:.1f}s at {builder.data_dir}")
  for split in builder.SPLITS:
    rows = [loader.decode(r) for r in builder.as_data_source(split)]
    print(_stats(split, rows))
    for row in rows[: _EXAMPLES.value]:
      for key, value in row.items():
        text = repr(value) if not isinstance(value, str) else value.replace("\n", " / ")
        print(f"    {key}: {text[:300]}")
      print()


if __name__ == "__main__":
  app.run(main)
