"""Pieces shared by the system configs (girl.py, langptune.py, blue.py, hifi.py).

A system config reads its variant string with `parse_arg` and builds its sections with the
`*_config` helpers, so each file only states what differs:

  import ml_collections
  from configs import common

  def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, algo="ppo", tiny=False, seed=0)
    config = ml_collections.ConfigDict()
    config.optim = common.optim_config(lr=1e-5, total_steps=10 if arg.tiny else 2000)
    config.mesh = common.mesh_config()
    ...

Run as `python -m jaxprof.train --config=configs/girl.py:algo=grpo,tiny --workdir=/tmp/girl`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def _parse_bool(key: str, text: str) -> bool:
  low = text.strip().lower()
  if low in _TRUE:
    return True
  if low in _FALSE:
    return False
  raise ValueError(f"config argument {key!r}: cannot read {text!r} as a bool "
                   f"(use one of {_TRUE + _FALSE})")


def _parse_value(key: str, text: str, default: Any) -> Any:
  """Reads `text` with the type of `default` (bool, int, float, str; None means str)."""
  # bool first: bool is a subclass of int.
  if isinstance(default, bool):
    return _parse_bool(key, text)
  try:
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
  except ValueError:
    raise ValueError(f"config argument {key!r}: cannot read {text!r} as "
                     f"{type(default).__name__} (its default is {default!r})") from None
  if default is None or isinstance(default, str):
    return text
  raise TypeError(f"config argument {key!r}: default {default!r} has unsupported type "
                  f"{type(default).__name__}; use bool, int, float or str")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses the `get_config` argument string, e.g. `"algo=grpo,tiny"`.

  Args:
    arg: comma-separated `key=value` items or bare `key`s (a bare key means True). None or ""
      gives the defaults.
    **defaults: every accepted key with its default; each value is read with the type of its
      default (bool, int, float, str; a None default reads a str).

  Returns:
    A ConfigDict with one field per default, overridden by `arg`.

  Raises:
    ValueError: for an unknown key (naming it and the valid ones), a key given twice, or a value
      that does not parse as the default's type.
  """
  values = dict(defaults)
  seen = set()
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; "
                       f"valid ones are: {', '.join(sorted(defaults))}")
    if key in seen:
      raise ValueError(f"config argument {key!r} given twice in {arg!r}")
    seen.add(key)
    if not sep:  # A bare name switches a flag on.
      if not isinstance(defaults[key], bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...): its default "
                         f"{defaults[key]!r} is not a bool")
      values[key] = True
    else:
      values[key] = _parse_value(key, text.strip(), defaults[key])
  return ml_collections.ConfigDict(values)


def optim_config(
    lr: float = 3e-4,
    warmup: int = 100,
    total_steps: int = 1000,
    clip_norm: float = 1.0,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    b1: float = 0.9,
    b2: float = 0.95,
    grad_accum: int = 1,
) -> ml_collections.ConfigDict:
  """Optimiser section (AdamW + warmup + decay schedule, global-norm clipping).

  `clip_norm=0` turns clipping off; `grad_accum` micro-batches are summed per update.
  """
  return ml_collections.ConfigDict(dict(
      lr=lr, warmup=warmup, total_steps=total_steps, clip_norm=clip_norm,
      weight_decay=weight_decay, schedule=schedule, b1=b1, b2=b2, grad_accum=grad_accum))


def mesh_config(
    data: int = -1, fsdp: int = 1, tensor: int = 1, rules: str = "fsdp"
) -> ml_collections.ConfigDict:
  """Device mesh section: axis sizes (-1 = all remaining devices) and a sharding-rule preset."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules))


def checkpoint_config(every: int = 500, keep: int = 3) -> ml_collections.ConfigDict:
  """Checkpoint section: save every `every` steps (and at the end), keep the last `keep`."""
  return ml_collections.ConfigDict(dict(every=every, keep=keep))


def log_config(
    every: int = 10, show: tuple[str, ...] = ("train/loss",)
) -> ml_collections.ConfigDict:
  """Logging section: console line every `every` steps without a TTY; `show` metrics on the bar."""
  return ml_collections.ConfigDict(dict(every=every, show=tuple(show)))


def model_config(path: str = "packaged", compute_dtype: str = "float32", remat: str = "full",
                 lora_rank: int = 0) -> ml_collections.ConfigDict:
  """Policy section. path: "packaged" (SmolLM2-135M-Instruct), an HF directory, or "tiny".

  remat: what the backward pass recomputes per layer: "full" (keep only layer inputs; on CPU the
  fastest as well as the smallest, bench/BENCHMARKS.md), "dots" (keep matmul outputs) or "none".
  chunk_size: tokens per LM-head chunk in log-prob computation (memory: chunk_size x vocab floats).
  """
  return ml_collections.ConfigDict(dict(
      path=path, compute_dtype=compute_dtype, remat=remat, chunk_size=512,
      # "tiny": a random Llama sharing the SmolLM2 tokenizer, for tests and smoke runs.
      tiny=dict(hidden_size=64, num_layers=2, num_heads=4, head_dim=16),
      lora=dict(rank=lora_rank, alpha=16.0, targets="q,k,v,o,gate,up,down")))


def sft_config(steps: int = 200, batch_size: int = 8, lr: float = 5e-5,
               max_prompt_len: int = 256, max_target_len: int = 192) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=batch_size, max_prompt_len=max_prompt_len, max_target_len=max_target_len,
      optim=optim_config(lr=lr, warmup=max(steps // 10, 1), total_steps=steps,
                         weight_decay=0.01)))


def reward_model_config(steps: int = 200, batch_size: int = 8, lr: float = 5e-5,
                        backbone: str = "policy:8") -> ml_collections.ConfigDict:
  """backbone "policy:N": the first N layers of the SFT policy (shares its tokenizer);
  "encoder": the packaged MiniLM."""
  return ml_collections.ConfigDict(dict(
      backbone=backbone, pooling="last", batch_size=batch_size, margin=0.0, center_coef=0.01,
      head_init_scale=0.0,  # scores start at 0: no saturated pairs at step 0
      # Pairs of the start policy's own samples for `prompts` reward-model prompts, ordered by
      # the system's labeller (jaxprof/trainers/sampled_pairs.py); 0 = off.
      sampled=dict(prompts=0, samples=4, margin=0.02),
      max_prompt_len=256, max_response_len=192,
      optim=optim_config(lr=lr, warmup=max(steps // 10, 1), total_steps=steps,
                         weight_decay=0.01)))


def rollout_config(prompts_per_step: int = 4, group_size: int = 8, max_new_tokens: int = 64,
                   max_prompt_len: int = 256) -> ml_collections.ConfigDict:
  """RL prompts and sampling, shared by PPO and GRPO."""
  return ml_collections.ConfigDict(dict(
      prompts_per_step=prompts_per_step, group_size=group_size, max_prompt_len=max_prompt_len,
      max_new_tokens=max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
      # Each prompt once per group in training and scoring (policy, reference, critic, reward
      # model): the G completions attend to one prompt pass. False: G full sequences (the
      # reference path the shared one is tested against).
      share_prefix=True))


def rl_config(algo: str = "grpo", steps: int = 100, lr: float = 1e-6, kl_coef: float = 0.04
              ) -> ml_collections.ConfigDict:
  """The clipped policy update PPO and GRPO share (each algorithm's own fields: ppo_config,
  grpo_config). epochs: passes over each rollout (PPO's epochs, GRPO's mu)."""
  return ml_collections.ConfigDict(dict(
      algo=algo, total_steps=steps, epochs=2 if algo == "ppo" else 1, num_minibatches=1,
      # Policy loss: separate clip bounds (DAPO-style clip-higher), optional dual clip.
      eps_low=0.2, eps_high=0.28, dual_clip=0.0, ratio_level="token", agg_mode="token_mean",
      # KL to the frozen reference: in the loss (GRPO, k3) or in the reward (PPO, k1).
      kl_coef=kl_coef, kl_estimator="k3" if algo == "grpo" else "k1",
      # Completions cut off by rollout.max_new_tokens: "keep" (scored as finished texts), "mask"
      # (left out of the update, like a None reward) or "penalty" (truncation_penalty added).
      truncated="keep", truncation_penalty=-1.0,
      # A supervised term in GRPO's loss: coef * the policy's mean token NLL of a target text per
      # prompt (the `column` of the system's RL rows), its first max_len tokens, given the prompt
      # (after="prompt") or the prompt and each sampled completion (after="completion")
      # (jaxprof/trainers/aux_nll.py). coef=0: off, and no cost.
      aux_nll=dict(coef=0.0, column="", max_len=64, after="prompt"),
      optim=optim_config(lr=lr, warmup=0, total_steps=steps, schedule="constant",
                         clip_norm=1.0)))


def ppo_config(critic_init: str = "reward_model") -> ml_collections.ConfigDict:
  """PPO's own fields: the critic, the advantage, the value loss, the adaptive KL coefficient.

  advantage: "gae" (per-token rewards and values, GAE(gamma, lam)) or "sequence" (one advantage
  per completion: score - kl_coef * length-averaged KL - V(prompt); jaxprof/trainers/ppo.py).
  """
  return ml_collections.ConfigDict(dict(
      critic_init=critic_init, critic_lr=1e-5, advantage="gae", gamma=1.0, lam=0.95,
      # The fresh value head of a "policy:N" critic: kernel ~ N(0, scale^2 / D). 0 (the default)
      # starts every value at 0; at 1 values start at the scale of the backbone's hidden states,
      # far from rewards of ~0.1, and GIRL's critic never caught up in 10 steps (explained
      # variance -8 to -16, advantages of value noise).
      critic_head_scale=0.0,
      value_clip=0.2,
      whiten_advantages=True, entropy_coef=0.0, kl_target=0.0, kl_horizon=10000))


def grpo_config(advantage: str = "grpo") -> ml_collections.ConfigDict:
  """GRPO's own fields: how rewards in a group become advantages.

  prompt_weight: a column of the system's RL rows holding one weight per prompt (>= 0) that
  multiplies its group's advantages after normalisation ("" = off). A per-prompt factor on the
  rewards would cancel in the group's (r - mean) / std; on the advantages it sets how much each
  prompt's group moves the policy (jaxprof/rl/advantages.py, `weight_groups`).
  """
  return ml_collections.ConfigDict(dict(advantage=advantage, std_ddof=0, adv_eps=1e-6,
                                        adv_scale="", prompt_weight=""))


def rl_sections(config: ml_collections.ConfigDict, algo: str, *, steps: int, lr: float,
                kl_coef: float, prompts_per_step: int, group_size: int, max_new_tokens: int,
                max_prompt_len: int) -> None:
  """Adds config.rollout, config.rl and the section of `algo` (only that one: a key of the other
  algorithm is then an unknown key, and the error names it)."""
  config.rollout = rollout_config(prompts_per_step, group_size, max_new_tokens, max_prompt_len)
  config.rl = rl_config(algo, steps, lr, kl_coef)
  config[algo] = ppo_config() if algo == "ppo" else grpo_config()


def run_config(system: str, seed: int = 0) -> ml_collections.ConfigDict:
  """Top-level fields every system config has. `system` names its jaxprof/systems module.

  eval.evaluators: evaluator name -> its keyword arguments (jaxprof/evaluation); "held_out"
  scores each policy's completions of eval.num_examples held-out prompts by reward and truth.
  """
  return ml_collections.ConfigDict(dict(
      system=system, seed=seed, mesh=mesh_config(),
      checkpoint=checkpoint_config(every=50, keep=2), log=log_config(every=10), max_nonfinite=5,
      # include_base: also evaluate model.path itself when an SFT stage ran (its "base" row).
      # probe_every: every N RL steps, the truth of the policy's completions of the first
      # probe_size eval prompts, logged as probe/* (curves over steps; 0 = off).
      # batch_size: completions per generate call (prompts x samples).
      eval=dict(num_examples=32, batch_size=8, temperature=0.0, include_base=False,
                probe_every=0, probe_size=16,
                evaluators=dict(held_out=dict(samples_shown=8)))))


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
  """The `tiny` variant: a random 2-layer model and a handful of steps, same code paths."""
  config.model.path = "tiny"
  config.checkpoint.every = 2
  config.eval.num_examples = 4
  config.eval.batch_size = 4
  # A random model's greedy text is a few blank tokens, which every reward rejects; sampled text
  # is real (random) words, so the evaluators' reward and truth paths run on text.
  config.eval.temperature = 1.0
  for stage in ("sft", "reward_model"):
    if stage in config:
      config[stage].batch_size = 4
      config[stage].optim.total_steps = 3
      config[stage].optim.warmup = 1
      config[stage].max_prompt_len = 96 if stage == "sft" else config[stage].max_prompt_len
  if "reward_model" in config:
    config.reward_model.max_prompt_len = 96
    config.reward_model.max_response_len = 48
    config.reward_model.backbone = "policy:1"
  if "sft" in config:
    config.sft.max_target_len = 48
  config.rl.total_steps = 3
  config.rl.optim.total_steps = 3
  config.rollout.prompts_per_step = 2
  config.rollout.group_size = 2
  config.rollout.max_new_tokens = 8
  config.rollout.max_prompt_len = 96


def reward(name: str, weight: float, **kwargs) -> ml_collections.ConfigDict:
  """One term of config.rewards (keyed by its log name): a registered reward with its kwargs.

  "@name" kwargs refer to objects the task provides (an encoder, the trained reward model).
  """
  return ml_collections.ConfigDict(dict(name=name, weight=weight, kwargs=kwargs))


def movielens_data(seed: int, max_history: int = 20) -> ml_collections.ConfigDict:
  """movielens100k section (LangPTune, BLUE): the whole data set, the last items held out."""
  return ml_collections.ConfigDict(dict(name="movielens100k", seed=seed, data_dir="",
                                        max_history=max_history, include_skipped=False, sizes={}))


def profile_rl(config: ml_collections.ConfigDict, steps: int = 20) -> None:
  """GRPO for history -> profile writing on CPU: `steps` steps of 4 users x 4 profiles of up to 64
  tokens.

  lr 1e-5: at 2e-6 LangPTune's 20 steps left the policy where it started (per-token KL to the
  start policy at most 0.0015, the training reward flat; results/langptune/README.md)."""
  rl_sections(config, "grpo", steps=steps, lr=1e-5, kl_coef=0.04, prompts_per_step=4, group_size=4,
              max_new_tokens=64, max_prompt_len=512)
  config.eval.probe_every = 5  # the truth on a fixed probe set over RL steps (report curves)
  # Held out: the test item of 512 users (of 943), one greedy profile per user and policy, shared
  # by both evaluators; `recommenders` adds the raw history, SASRec and popularity rows and a
  # second, reward-free encoder (jaxprof/systems/langptune.py).
  config.eval.num_examples = 512
  config.eval.batch_size = 64  # 64 users per generate call: larger matmuls in the decode steps
  config.eval.evaluators.recommenders = dict(sasrec_epochs=20)
