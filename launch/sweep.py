r"""A grid sweep of flag overrides over one config, run one after another (or printed).

  python launch/sweep.py --config=configs/hifi.py --workdir=runs/hifi_sweep \
      --grid="rl.kl_coef=0.01,0.04" --grid="rollout.group_size=4,8" [--dry_run]

Each point gets its own workdir (named after its overrides) and the usual resume behaviour; the
trainer never sees the sweep.
"""

import itertools
import shlex
import subprocess
import sys

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file (with :variant).", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.", required=True)
_GRID = flags.DEFINE_multi_string("grid", [], "key=v1,v2,... (repeatable).")
_DRY = flags.DEFINE_bool("dry_run", False, "Print the commands only.")


def points(grid: list[str]) -> list[list[tuple[str, str]]]:
  axes = []
  for entry in grid:
    key, sep, values = entry.partition("=")
    if not sep or not values:
      raise app.UsageError(f"--grid={entry!r}: expected key=v1,v2")
    axes.append([(key, v) for v in values.split(",")])
  return [list(p) for p in itertools.product(*axes)]


def main(argv):
  del argv
  for point in points(_GRID.value):
    name = "_".join(f"{k.split('.')[-1]}={v}" for k, v in point) or "base"
    cmd = [sys.executable, "-m", "jaxprof.train", f"--config={_CONFIG.value}",
           f"--workdir={_WORKDIR.value}/{name}"] + [f"--config.{k}={v}" for k, v in point]
    print(shlex.join(cmd), flush=True)
    if not _DRY.value:
      subprocess.run(cmd, check=True)


if __name__ == "__main__":
  app.run(main)
