r"""The command line: `python -m jaxprof.train --config=configs/girl.py --workdir=runs/girl`.

Reads the config (any field overridable: `--config.rl.kl_coef=0.02`), then runs its stages in
order (sft -> reward_model -> ppo | grpo -> eval). Each stage works in `workdir/<stage>/`, reads
what earlier stages wrote, and is skipped when complete; an interrupted stage resumes from its last
checkpoint, so re-running the same command continues where it stopped.
"""

from __future__ import annotations

import logging as std_logging
import math
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxprof import config as config_lib
from jaxprof import evaluation, parallel, paths, stages, systems
from jaxprof.evaluation import stage as evaluation_stage
from jaxprof.models import gguf, hf
from jaxprof.rewards import registry
from jaxprof.rewards.base import ColumnError
from jaxprof.trainers import grpo, ppo, reward_model, sft

_CONFIG = config_flags.DEFINE_config_file("config", None, "System config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes (a local "
                                "path or a gs:// URL).")
_STAGES = flags.DEFINE_list("stages", None, "Run only these stages (default: config.stages).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


# Stage name -> `run(ctx, stage_dir, inputs) -> outputs`; each module says what its stage does.
STAGES = {"sft": sft.run, "reward_model": reward_model.run, "ppo": ppo.run, "grpo": grpo.run,
          "eval": evaluation_stage.run}


def train_and_evaluate(config, workdir: str | os.PathLike, only: list[str] | None = None) -> dict:
  """Importable entry point: runs the config's stages in `workdir` (resuming), a local path or
  an object store URL (`gs://bucket/runs/x`)."""
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.lock_and_save(config, workdir)
  try:
    mesh = parallel.make_mesh(**mesh_shape(config, jax.device_count()))
  except ValueError as e:
    raise config_lib.ConfigError(f"config.mesh: {e}; set --config.mesh.data, .fsdp and .tensor "
                                 f"to fit the {jax.device_count()} devices") from None
  ctx = stages.Context(config, systems.get(config), mesh)
  preflight(config)
  check_batches(config, mesh)
  return stages.run_stages(ctx, workdir, STAGES, stages=only)


def preflight(config) -> None:
  """Every reward and evaluator the config names exists, checked before the first stage runs
  (not when the RL or eval stage reaches it, after the stages before it have trained)."""
  for log_name, term in (config.get("rewards") or {}).items():
    if term.name not in registry.REWARDS:
      raise config_lib.UnknownNameError(
          f"config.rewards.{log_name}.name={term.name!r} is not a registered reward; registered: "
          f"{sorted(registry.REWARDS)}")
  for name in config.eval.evaluators:
    evaluation.get(name)


def batch_sizes(config) -> dict[str, int]:
  """{what a user sets: rows} of every batch a stage shards over the data-parallel devices."""
  sizes = {}
  for stage in ("sft", "reward_model"):
    if stage in config.stages:
      sizes[f"{stage}.batch_size / {stage}.optim.grad_accum"] = (
          config[stage].batch_size // config[stage].optim.grad_accum)
  if {"ppo", "grpo"} & set(config.stages):
    prompts = config.rollout.prompts_per_step // config.rl.num_minibatches
    sizes["rollout.prompts_per_step / rl.num_minibatches"] = prompts
  return sizes


def mesh_shape(config, devices: int) -> dict[str, int]:
  """config.mesh's axis sizes. The default mesh (data=-1, fsdp=1, tensor=1: every device on the
  batch) adapts when the batches do not split over all the devices: data becomes the largest
  device count every batch splits over, tensor takes the rest (tensor parallelism needs no batch
  rows), so the same command runs on 1, 2, 4 or 8 devices. A mesh set by hand is kept as set."""
  shape = {k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}
  if shape != {"data": -1, "fsdp": 1, "tensor": 1}:
    return shape
  sizes = batch_sizes(config)
  data = math.gcd(devices, *sizes.values())
  if data < devices:
    logging.info("mesh: data=%d x tensor=%d on %d devices (batches %s do not split over %d)",
                 data, devices // data, devices, sizes, devices)
  return {"data": data, "fsdp": 1, "tensor": devices // data}


def check_batches(config, mesh) -> None:
  """Every batch a stage shards splits evenly over the mesh's data-parallel devices (data x
  fsdp), or the run stops here, naming each size and the flags to change."""
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  sizes = batch_sizes(config)
  bad = {k: v for k, v in sizes.items() if v % n}
  if bad:
    fits = math.gcd(n, *sizes.values())
    raise config_lib.ConfigError(
        ", ".join(f"{k} = {v}" for k, v in bad.items()) + f" does not split over the mesh's {n} "
        f"data-parallel devices (mesh.data x mesh.fsdp); use multiples of {n}, or "
        f"--config.mesh.data={fits} --config.mesh.fsdp=1")


class QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of orbax and tensorflow_datasets (checkpoint managers created,
  temporary directories cleaned, dataset info loaded: hundreds of lines per run) and TFDS's
  warnings about jaxprof's own builder configs, so the stage progress lines stay readable. Their
  other warnings and errors pass; `--verbosity=1` shows everything."""

  NOISY = ("/orbax/", "/tensorflow_datasets/")
  EXPECTED = ("Using custom data configuration", "Variant folder")

  def filter(self, record: std_logging.LogRecord) -> bool:
    if logging.get_verbosity() >= 1 or not any(s in record.pathname for s in self.NOISY):
      return True
    if record.levelno <= std_logging.INFO:
      return False
    return not (record.levelno == std_logging.WARNING
                and str(record.msg).startswith(self.EXPECTED))


# Errors a user's input causes (a flag, a file, a directory): printed as one line, exit status 2.
USER_ERRORS = (config_lib.ConfigError, stages.StageError, stages.NonFiniteError, ColumnError,
               hf.CheckpointError, gguf.GGUFConversionError, FileNotFoundError, PermissionError,
               NotADirectoryError, IsADirectoryError)


def one_line(error: BaseException) -> str:
  """`error`'s message on one line (multi-line messages joined by "; ")."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)  # no quotes
  return "; ".join(x.strip() for x in str(text).splitlines() if x.strip())


def main(argv: list[str]) -> None:
  logging.get_absl_logger().addFilter(QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("JAXPROF_JIT_CACHE", os.path.expanduser("~/.cache/jaxprof/jit")))
  try:
    config = config_lib.validate(_CONFIG.value)
    logging.info("config:\n%s", config)
    outputs = train_and_evaluate(config, _WORKDIR.value, _STAGES.value)
  except USER_ERRORS as e:
    if logging.get_verbosity() >= 1:  # --verbosity=1: the traceback too
      raise
    sys.stderr.write(f"jaxprof.train: {type(e).__name__}: {one_line(e)}\n")
    sys.exit(2)
  for name, out in outputs.items():
    logging.info("%s: %s", name, out)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
