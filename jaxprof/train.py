r"""The command line: `python -m jaxprof.train --config=configs/girl.py --workdir=runs/girl`.

Reads the config (any field overridable: `--config.rl.kl_coef=0.02`), then runs its stages in
order (sft -> reward_model -> ppo | grpo -> eval). Each stage works in `workdir/<stage>/`, reads
what earlier stages wrote, and is skipped when complete; an interrupted stage resumes from its last
checkpoint, so re-running the same command continues where it stopped.
"""

from __future__ import annotations

import functools
import os
import pathlib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxprof import config as config_lib
from jaxprof import parallel, stages, tasks
from jaxprof.models import heads
from jaxprof.trainers import artifacts, evaluation, grpo, policy, ppo, reward_model, sft

_CONFIG = config_flags.DEFINE_config_file("config", None, "System config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
_STAGES = flags.DEFINE_list("stages", None, "Run only these stages (default: config.stages).")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


def start_policy_dir(config, inputs) -> str:
  """The policy an RL or reward stage starts from: the SFT export if there is one."""
  return inputs.get("sft", {}).get("policy_dir") or config.model.path


def mesh_of(config):
  return parallel.make_mesh(**{k: config.mesh[k] for k in ("data", "fsdp", "tensor")})


def run_sft(config, stage_dir: pathlib.Path, inputs) -> dict:
  task = tasks.get(config)
  return sft.train(config, stage_dir, task.sft_examples("train"), task.sft_examples("eval"))


def run_reward_model(config, stage_dir: pathlib.Path, inputs) -> dict:
  task = tasks.get(config)
  return reward_model.train(config, stage_dir, task.reward_pairs("train"),
                            task.reward_pairs("eval"), start_policy_dir(config, inputs))


def _rl_setup(config, inputs):
  mesh = mesh_of(config)
  cfg, params, tok = policy.load(config.model, start_policy_dir(config, inputs), config.seed)
  spec = policy.spec_from_config(cfg, config.model)
  trainable, frozen, axes = policy.init_trainable(spec, params, config.model,
                                                  jax.random.key(config.seed + 1))
  ref = frozen["base"] if spec.uses_lora else params  # LoRA: the base *is* the reference
  return mesh, spec, trainable, frozen, ref, axes, tok


def run_rl(algo: str, config, stage_dir: pathlib.Path, inputs) -> dict:
  if config.rl.algo != algo:
    raise config_lib.ConfigError(f"stage '{algo}' listed but config.rl.algo={config.rl.algo!r}")
  task = tasks.get(config)
  mesh, spec, trainable, frozen, ref, axes, tok = _rl_setup(config, inputs)
  prompt_batch = task.prompt_batches(tok, inputs, stage_dir)
  common_args = (config, stage_dir, spec, trainable, frozen, ref, axes)
  if algo == "grpo":
    state, last = grpo.run(*common_args, prompt_batch, tok.eos_ids, tok.pad_id, mesh)
    policy_state = state
  else:
    critic_cfg, critic = build_critic(config, inputs, start_policy_dir(config, inputs))
    state, last = ppo.run(*common_args, critic_cfg, critic, prompt_batch, tok.eos_ids,
                          tok.pad_id, mesh)
    policy_state = state["policy"]
  out_dir = policy.export(spec, policy_state.params, frozen, tok, stage_dir / "export")
  return {"policy_dir": str(out_dir), "final_metrics": last}


def build_critic(config, inputs, policy_dir: str):
  """GIRL's critic: the reward model (backbone + head) if there is one, else policy:N layers."""
  init = config.rl.critic_init
  if init == "reward_model":
    rm_dir = inputs.get("reward_model", {}).get("reward_model_dir")
    if rm_dir is None:
      raise config_lib.ConfigError("rl.critic_init='reward_model' needs the reward_model stage "
                                   "to run first (or use rl.critic_init='policy:N')")
    params, card = artifacts.load_pytree(rm_dir)
    if card["backbone"] == "encoder":
      raise config_lib.ConfigError("a per-token critic needs a causal-LM reward model; set "
                                   "reward_model.backbone='policy:N' or rl.critic_init='policy:N'")
    cfg, _ = reward_model.card_backbone(card, config.model)
    return cfg, params
  cfg, backbone, _ = reward_model.build_backbone(init, policy_dir, config.model, config.seed)
  return cfg, {"backbone": backbone,
               "head": heads.init_head(jax.random.key(config.seed + 3), cfg.hidden_size)}


def run_eval(config, stage_dir: pathlib.Path, inputs) -> dict:
  return evaluation.run(config, stage_dir, inputs, tasks.get(config))


STAGES = {"sft": run_sft, "reward_model": run_reward_model,
          "ppo": functools.partial(run_rl, "ppo"), "grpo": functools.partial(run_rl, "grpo"),
          "eval": run_eval}


def train_and_evaluate(config, workdir: str | os.PathLike, only: list[str] | None = None) -> dict:
  """Importable entry point: runs the config's stages in `workdir` (resuming)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.lock_and_save(config, workdir)
  return stages.run_stages(config, workdir, STAGES, stages=only)


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
