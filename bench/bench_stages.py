r"""SFT and reward-model steps at the GIRL default: real tokens per second, vs a baseline commit.

  git worktree add /tmp/jaxprof_base 38ea63e          # the commit to compare against
  .venv/bin/python -m bench.bench_stages --baseline=/tmp/jaxprof_base --rounds=3

Each round runs a worker process per checkout (this one and --baseline), alternating the order,
and each worker times --steps steps of the real SFT update (packaged SmolLM2-135M, GIRL's batches
of the job_market SFT rows) and of the reward-model update (6-layer policy backbone, GIRL's pairs)
after one compiling step (a step whose batch has a shape not seen yet first runs once untimed:
the steady-state cost, compiles excluded; the number of shapes is reported). It reports target
tokens/s for SFT (the tokens the loss is over, as the
SFT stage's perf/tokens counts them), all real tokens/s for both, and the padded batch widths.
The worker imports only functions both checkouts have, so it runs unchanged on either.
"""

from __future__ import annotations

import functools
import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
# Defined here, not imported: a worker runs against a baseline checkout's bench package.
flags.DEFINE_string("baseline", "", "A checkout (e.g. a git worktree) to compare against.")
flags.DEFINE_integer("rounds", 3, "Alternated rounds.")
flags.DEFINE_integer("steps", 4, "Timed steps per stage per worker (after one compiling step).")
flags.DEFINE_bool("worker", False, "Internal: run the timed work and print one JSON line.")


def _worker() -> dict:
  import jax
  import numpy as np

  from jaxprof import parallel, systems
  from jaxprof.trainers import common, policy, reward_model, sft

  sys.path.insert(0, str(pathlib.Path.cwd()))
  from configs import girl  # noqa: I001 (the checkout's own configs)

  config = girl.get_config()
  task = systems.get(config)
  mesh = parallel.make_mesh(data=1)
  import jaxprof

  out = {"jaxprof": jaxprof.__file__}

  def timed_steps(step_fn, batch_fn):
    state = None
    times, tokens, real, widths = [], [], [], []
    compiled = set()
    for step in range(FLAGS.steps + 1):
      batch = batch_fn(step)
      shape = tuple(v.shape for k, v in sorted(batch.items()))
      if shape not in compiled:  # steady state: a new bucket's compile is not a step's cost
        compiled.add(shape)
        jax.block_until_ready(step_fn(batch)[1])
      start = time.perf_counter()
      state, m = step_fn(batch)
      jax.block_until_ready(m)
      if step:
        times.append(time.perf_counter() - start)
        tokens.append(float(m.get("loss_tokens", 0)))
        real.append(float(sum(np.sum(v) for k, v in batch.items() if k.endswith("mask"))))
        widths.append(sum(v.shape[1] for k, v in batch.items() if k.endswith("ids")))
    del state
    return {"seconds": sum(times), "loss_tokens": sum(tokens), "real_tokens": sum(real),
            "widths": sorted(set(widths)), "shapes": len(compiled)}

  # SFT, as sft.train builds it.
  examples = task.sft_examples("train")
  cfg, params, tok = policy.load(config.model, seed=config.seed)
  spec = policy.spec_from_config(cfg, config.model)
  trainable, frozen, axes = policy.init_trainable(spec, params, config.model, jax.random.key(1))
  tx = common.make_optimizer(config.sft.optim)
  holder = {}
  holder["state"], sh = common.create_state(trainable, axes, tx, mesh, config.mesh.rules)
  update = common.jit_update(common.make_update(functools.partial(sft.sft_loss, spec), tx, 1,
                                                "sft"), sh)
  batcher = common.Batcher(len(examples), config.sft.batch_size, config.seed)

  def sft_step(batch):
    holder["state"], m = update(holder["state"], frozen, parallel.shard_batch(batch, mesh),
                                jax.random.key(0))
    return None, {"loss_tokens": m["sft/tokens"]}

  out["sft"] = timed_steps(sft_step, lambda s: sft.make_batch(tok, examples, batcher.indices(s),
                                                              config.sft))
  del holder["state"]
  # Reward model, as reward_model.train builds it (backbone from the packaged policy).
  rm = config.reward_model
  pairs = task.reward_pairs("train")
  rcfg, backbone, rtok = reward_model.build_backbone(rm.backbone, config.model.path, config.model,
                                                     config.seed)
  scorer = reward_model.Scorer(rcfg, rm.pooling, rm.max_prompt_len, rm.max_response_len)
  if hasattr(scorer, "remat"):
    scorer = reward_model.Scorer(rcfg, rm.pooling, rm.max_prompt_len, rm.max_response_len,
                                 config.model.remat)
  from jaxprof.models import heads
  rparams = {"backbone": backbone, "head": heads.init_head(jax.random.key(2), rcfg.hidden_size,
                                                            scale=rm.head_init_scale)}
  rtx = common.make_optimizer(rm.optim)
  holder["state"], rsh = common.create_state(rparams, heads.scored_model_axes(rcfg), rtx, mesh,
                                             config.mesh.rules)
  rupdate = common.jit_update(common.make_update(
      functools.partial(reward_model.pair_loss, scorer, rm), rtx, 1, "rm"), rsh)
  rbatcher = common.Batcher(len(pairs), rm.batch_size, config.seed)

  def rm_step(batch):
    holder["state"], m = rupdate(holder["state"], {}, parallel.shard_batch(batch, mesh),
                                 jax.random.key(0))
    return None, m

  out["reward_model"] = timed_steps(
      rm_step, lambda s: reward_model._pair_batch(scorer, rtok, pairs, rbatcher.indices(s)))
  return out


def _run(checkout: str) -> dict:
  from bench import workers  # the driver's own (this checkout)

  return workers.run_in_checkout(__file__, checkout, f"--steps={FLAGS.steps}")


def main(argv):
  del argv
  if FLAGS.worker:
    print(json.dumps(_worker()))
    return
  here = str(pathlib.Path(__file__).resolve().parents[1])
  systems = {"this checkout": here}
  if FLAGS.baseline:
    systems["baseline " + FLAGS.baseline] = FLAGS.baseline
  results = {name: [] for name in systems}
  for r in range(FLAGS.rounds):
    for name in (list(systems) if r % 2 == 0 else list(reversed(systems))):
      results[name].append(_run(systems[name]))
      sft_s = results[name][-1]["sft"]
      print(f"round {r}: {name}: SFT {sft_s['loss_tokens'] / sft_s['seconds']:.1f} target tok/s",
            flush=True)
  names = list(systems)
  print("\n| stage | system | target tok/s | real tok/s | step s | padded widths | "
        "speed-up vs baseline (median of rounds) |\n|---|---|---|---|---|---|---|")
  for stage in ("sft", "reward_model"):
    for name in names:
      runs = [x[stage] for x in results[name]]
      tps = [x["loss_tokens"] / x["seconds"] for x in runs]
      real = [x["real_tokens"] / x["seconds"] for x in runs]
      speedup = "-"
      if len(names) > 1 and name == names[0]:
        base = [x[stage] for x in results[names[1]]]
        ratio = statistics.median(b["seconds"] / a["seconds"]
                                  for a, b in zip(runs, base, strict=True))
        speedup = f"{ratio:.2f}x"
      print(f"| {stage} | {name} | {statistics.median(tps):.1f} | {statistics.median(real):.1f} | "
            f"{statistics.median(x['seconds'] / FLAGS.steps for x in runs):.2f} | "
            f"{runs[-1]['widths']} | {speedup} |")


if __name__ == "__main__":
  app.run(main)
