r"""The command line: `python -m jaxprof.train --config=configs/girl.py --workdir=runs/girl`.

Reads the config (any field overridable: `--config.rl.kl_coef=0.02`), then runs its stages in
order (sft -> reward_model -> ppo | grpo -> eval). Each stage works in `workdir/<stage>/`, reads
what earlier stages wrote, and is skipped when complete; an interrupted stage resumes from its last
checkpoint, so re-running the same command continues where it stopped.
"""

from __future__ import annotations

import os
import pathlib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxprof import config as config_lib
from jaxprof import parallel, stages, systems
from jaxprof.evaluation import stage as evaluation_stage
from jaxprof.trainers import grpo, ppo, reward_model, sft

_CONFIG = config_flags.DEFINE_config_file("config", None, "System config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
_STAGES = flags.DEFINE_list("stages", None, "Run only these stages (default: config.stages).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


# Stage name -> `run(ctx, stage_dir, inputs) -> outputs`; each module says what its stage does.
STAGES = {"sft": sft.run, "reward_model": reward_model.run, "ppo": ppo.run, "grpo": grpo.run,
          "eval": evaluation_stage.run}


def train_and_evaluate(config, workdir: str | os.PathLike, only: list[str] | None = None) -> dict:
  """Importable entry point: runs the config's stages in `workdir` (resuming)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.lock_and_save(config, workdir)
  mesh = parallel.make_mesh(**{k: config.mesh[k] for k in ("data", "fsdp", "tensor")})
  ctx = stages.Context(config, systems.get(config), mesh)
  return stages.run_stages(ctx, workdir, STAGES, stages=only)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("JAXPROF_JIT_CACHE", os.path.expanduser("~/.cache/jaxprof/jit")))
  config = config_lib.validate(_CONFIG.value)
  logging.info("config:\n%s", config)
  outputs = train_and_evaluate(config, _WORKDIR.value, _STAGES.value)
  for name, out in outputs.items():
    logging.info("%s: %s", name, out)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
