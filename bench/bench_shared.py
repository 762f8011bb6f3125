r"""The RL update phase with each prompt once per group (rollout.share_prefix) vs G full rows.

  .venv/bin/python -m bench.bench_shared --rounds=3 --steps=2

Two shapes, from the systems' default configs: GIRL (configs/girl.py, PPO: 4 CV prompts x 2 JDs,
policy + 6-layer critic, 2 PPO epochs) and LangPTune (configs/langptune.py, GRPO: 4 history prompts
x 4 profiles). Prompts are the RL rows the default run starts with (the task's own batches, chat
template, length buckets); completions are max_new_tokens random tokens each (the longest a rollout
trains on). The update phase is what follows the rollout and the reward: the reference forward,
for PPO the critic's value forward, then every policy (and critic) update of the step.

Each (system, mode) runs in its own process, so each has its own peak RSS; rounds alternate the
order of the modes. Reported per system: positions each policy pass processes (padded widths, what
the hardware computes), seconds per step (median over a worker's steps after one compiling step),
the median over rounds of the per-round time ratio, the target (1.25 x the token ratio) and peak
RSS.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app, flags

from bench import workers

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 3, "Alternated rounds.")
flags.DEFINE_integer("steps", 2, "Timed steps per worker (after one compiling step).")
flags.DEFINE_list("systems", ["girl", "langptune"], "Default configs to take the shapes from.")
flags.DEFINE_string("worker", "", "Internal: 'system:shared' or 'system:unshared'.")

_ALGO = {"girl": "ppo", "langptune": "grpo"}


def _batch(config, task, tok, step: int, seed: int = 0) -> dict:
  """The default run's prompts for `step`, each repeated G times, + random full-length comps."""
  import numpy as np

  from jaxprof.trainers import common, policy

  rl = config.rollout
  rows = task.rl_rows("train")
  idx = common.Batcher(len(rows), rl.prompts_per_step, config.seed).indices(step)
  prompts = [policy.format_prompt(tok, task.prompt(rows[i])) for i in idx]
  ids, mask = policy.encode_prompts(tok, prompts, rl.max_prompt_len)
  g, n = rl.group_size, rl.max_new_tokens
  rng = np.random.default_rng([seed, step])
  r = len(prompts) * g
  comp = rng.integers(100, tok.vocab_size, (r, n)).astype(np.int32)
  return {"prompt_ids": np.repeat(ids, g, 0), "prompt_mask": np.repeat(mask, g, 0),
          "comp_ids": comp, "comp_mask": np.ones((r, n), bool),
          "old_logprobs": rng.normal(-2.0, 0.5, (r, n)).astype(np.float32),
          "advantages": rng.normal(size=r).astype(np.float32),
          "returns": rng.normal(size=(r, n)).astype(np.float32)}


def _worker(system: str, shared: bool) -> dict:
  import jax
  import numpy as np

  from jaxprof import parallel, systems
  from jaxprof.models import heads
  from jaxprof.trainers import common, grpo, policy, ppo, rollout

  sys.path.insert(0, str(pathlib.Path.cwd()))
  from configs import girl, langptune  # noqa: I001 (this checkout's configs)

  config = {"girl": girl, "langptune": langptune}[system].get_config()
  rl, ro_cfg = config.rl, config.rollout
  assert rl.algo == _ALGO[system], rl.algo
  ro_cfg.share_prefix = shared
  task = systems.get(config)
  mesh = parallel.make_mesh(data=1)
  cfg, params, tok = policy.load(config.model, seed=config.seed)
  spec = policy.spec_from_config(cfg, config.model)
  trainable, frozen, axes = policy.init_trainable(spec, params, config.model, jax.random.key(1))
  g = rollout.prompt_group(ro_cfg)
  tx = common.make_optimizer(rl.optim)
  pol, pol_sh = common.create_state(trainable, axes, tx, mesh, config.mesh.rules)
  ref_fn = jax.jit(functools.partial(rollout.ref_logprobs, spec, g))
  minibatches = lambda n, rng: rollout.minibatches(n, rl.num_minibatches, rng,
                                                   ro_cfg.group_size)
  state = {"policy": pol}
  if rl.algo == "grpo":
    update = common.jit_update(common.make_update(
        functools.partial(grpo.grpo_loss, spec, config, False), tx, 1, "rl"), pol_sh)
  else:  # PPO: policy and a critic on the first layers of the policy (GIRL: the RM's backbone)
    n_layers = int(config.reward_model.backbone.split(":")[1])  # the RM's: ppo.critic_init
    ccfg_params, ccfg = heads.truncate_layers(params, cfg, n_layers)
    critic = {"backbone": ccfg_params, "head": heads.init_head(jax.random.key(2), cfg.hidden_size)}
    ctx = common.make_optimizer(rl.optim)
    state["critic"], crit_sh = common.create_state(critic, heads.scored_model_axes(ccfg), ctx,
                                                   mesh, config.mesh.rules)
    update = common.jit_update(common.make_update(
        functools.partial(ppo.policy_loss_fn, spec, config), tx, 1, "rl"), pol_sh)
    update_critic = common.jit_update(common.make_update(
        functools.partial(ppo.critic_loss_fn, ccfg, config, spec.remat), ctx, 1, "critic"),
        crit_sh)
    values_fn = jax.jit(functools.partial(ppo.critic_values, ccfg, g, False))

  def update_phase(batch: dict, step: int) -> None:
    batch = dict(batch)
    sharded = parallel.shard_batch(batch, mesh)
    batch["ref_logprobs"] = np.asarray(ref_fn(params, sharded))
    if rl.algo == "ppo":
      batch["old_values"] = np.asarray(values_fn(state["critic"].params, sharded))
    rng = np.random.default_rng(step)
    for _ in range(rl.epochs):
      for rows in minibatches(len(batch["advantages"]), rng):
        mb = parallel.shard_batch({k: v[rows] for k, v in batch.items()}, mesh)
        state["policy"], m = update(state["policy"], frozen, mb, jax.random.key(step))
        if rl.algo == "ppo":
          state["critic"], m = update_critic(state["critic"], {}, mb, jax.random.key(step))
    jax.block_until_ready(m)

  times, seen, after_compile = [], set(), 0
  for step in range(FLAGS.steps):
    batch = _batch(config, task, tok, step)
    shape = (batch["prompt_ids"].shape, batch["comp_ids"].shape)
    if shape not in seen:  # steady state: a new bucket's compile is not a step's cost
      seen.add(shape)
      update_phase(batch, step)
      after_compile = after_compile or workers.memory()["peak_rss_bytes"]
    start = time.perf_counter()
    update_phase(batch, step)
    times.append(time.perf_counter() - start)
  b = _batch(config, task, tok, 0)
  r, p = b["prompt_ids"].shape
  n = b["comp_ids"].shape[1]
  return {"seconds": statistics.median(times), "times": times,
          "positions": (r // g) * p + r * (n - 1) if g > 1 else r * (p + n - 1),
          "shape": {"rows": r, "group": ro_cfg.group_size, "prompt": p, "completion": n,
                    "real_prompt_tokens": int(b["prompt_mask"][::ro_cfg.group_size].sum())},
          "peak_rss_after_first_step_bytes": after_compile, **workers.memory()}


def _run(system: str, mode: str) -> dict:
  here = pathlib.Path(__file__).resolve()
  cmd = [sys.executable, "-m", "bench.bench_shared", f"--worker={system}:{mode}",
         f"--steps={FLAGS.steps}"]
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  res = subprocess.run(cmd, cwd=here.parents[1], env=env, capture_output=True, text=True,
                       check=False)
  if res.returncode:
    raise RuntimeError(f"{system}:{mode} worker failed:\n{res.stderr[-3000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.worker:
    system, mode = FLAGS.worker.split(":")
    print(json.dumps(_worker(system, mode == "shared")))
    return
  print(f"load: {os.getloadavg()[0]:.2f}")
  for system in FLAGS.systems:
    runs = {"shared": [], "unshared": []}
    for i in range(FLAGS.rounds):
      order = ("shared", "unshared") if i % 2 == 0 else ("unshared", "shared")
      for mode in order:
        runs[mode].append(_run(system, mode))
        print(f"  {system} round {i} {mode}: {runs[mode][-1]['seconds']:.2f} s/step "
              f"{runs[mode][-1]['times']}", flush=True)
    sh, un = runs["shared"][0], runs["unshared"][0]
    token_ratio = sh["positions"] / un["positions"]
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs["shared"], runs["unshared"],
                                                          strict=True)]
    ratio = statistics.median(ratios)
    peak = {m: max(r["peak_rss_bytes"] for r in runs[m]) / 2**30 for m in runs}
    first = {m: max(r["peak_rss_after_first_step_bytes"] for r in runs[m]) / 2**30 for m in runs}
    secs = {m: statistics.median(r["seconds"] for r in runs[m]) for m in runs}
    print(f"{system} ({_ALGO[system]}) {json.dumps(sh['shape'])}\n"
          f"  positions per policy pass: shared {sh['positions']:,} vs unshared "
          f"{un['positions']:,} (ratio {token_ratio:.3f})\n"
          f"  update phase s/step: shared {secs['shared']:.2f} vs unshared "
          f"{secs['unshared']:.2f}; "
          f"per-round ratios {[round(x, 3) for x in ratios]}, median {ratio:.3f} "
          f"(speed-up {1 / ratio:.2f}x)\n"
          f"  target: ratio <= 1.25 x token ratio = {1.25 * token_ratio:.3f}: "
          f"{'met' if ratio <= 1.25 * token_ratio else 'MISSED'}\n"
          f"  peak RSS: shared {peak['shared']:.2f} GiB vs unshared {peak['unshared']:.2f} GiB "
          f"(after the first, compiling step: {first['shared']:.2f} vs {first['unshared']:.2f})",
          flush=True)


if __name__ == "__main__":
  app.run(main)
