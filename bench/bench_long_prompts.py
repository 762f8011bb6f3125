r"""Long prompts (LangPTune's ~500-token histories): eval generation and a GRPO step, vs a baseline.

  git worktree add /tmp/jaxprof_base <commit>          # the commit to compare against
  .venv/bin/python -m bench.bench_long_prompts --baseline=/tmp/jaxprof_base --rounds=2
  .venv/bin/python -m bench.bench_long_prompts --compare_dtype=bfloat16 --rounds=2

Each round runs a worker process per side, alternating the order: this checkout and --baseline,
both in float32 (or --compute_dtype); or, with --compare_dtype, this checkout in float32 and in
that compute dtype (`model.compute_dtype`: float32 master weights, the forward in bf16).
A worker times, on the packaged SmolLM2-135M with LangPTune's default config:
- **eval generation**: one `sampling.sample` call as the eval stage makes it, greedy, on the
  first 64 held-out users' real prompts (left-padded to their bucket), exactly 64 new tokens per
  row (no EOS can stop a row); compiled ahead, so the call is the steady-state cost;
- **GRPO step**: `grpo.build`'s step at LangPTune's shapes (4 training users x 4 profiles of
  exactly 64 tokens, prompts of up to 512 tokens, shared prefix), after one compiling step; the
  reward is a word count (the step's cost, not LangPTune's reward, is measured).
It prints each system's seconds per round, the phases of the GRPO step and the median of
per-round time ratios. The worker imports only functions both checkouts have.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
# Defined here, not imported: a worker runs against a baseline checkout's bench package.
flags.DEFINE_string("baseline", "", "A checkout (e.g. a git worktree) to compare against.")
flags.DEFINE_integer("rounds", 2, "Alternated rounds.")
flags.DEFINE_integer("steps", 2, "Timed GRPO steps per worker (after one compiling step).")
flags.DEFINE_string("compute_dtype", "float32", "model.compute_dtype of a worker.")
flags.DEFINE_string("compare_dtype", "", "Compare this checkout in float32 with this dtype.")
flags.DEFINE_bool("worker", False, "Internal: run the timed work and print one JSON line.")


def _worker() -> dict:
  import jax
  import numpy as np

  from jaxprof import api, parallel, sampling, systems
  from jaxprof.models import causal_lm
  from jaxprof.trainers import grpo, policy, rollout

  sys.path.insert(0, str(pathlib.Path.cwd()))
  from bench import workers  # noqa: I001 (the checkout's own bench and configs)
  from configs import langptune

  config = langptune.get_config()
  config.model.compute_dtype = FLAGS.compute_dtype
  system = systems.get(config)
  lm = api.load_lm()
  tok, no_eos = lm.tokenizer, (-1,)
  spec = policy.spec_from_config(lm.cfg, config.model)
  out = {}
  rows = system.rl_rows("eval")[:config.eval.batch_size]
  prompts = [policy.format_prompt(tok, system.prompt(r)) for r in rows]
  ids, mask = policy.encode_prompts(tok, prompts, config.rollout.max_prompt_len)
  params = policy.in_compute_dtype(spec, lm.params)  # as the eval stage generates
  args = (params, lm.cfg, jax.numpy.asarray(ids), jax.numpy.asarray(mask), jax.random.key(0))
  kw = dict(max_new_tokens=config.rollout.max_new_tokens, eos_ids=no_eos,
            sampling=sampling.Sampling(temperature=0.0), pad_id=tok.pad_id)
  compiled = sampling.sample.lower(*args, **kw).compile()
  start = time.perf_counter()
  jax.block_until_ready(compiled(params, *args[2:]))
  out["generate"] = {"seconds": time.perf_counter() - start, "rows": len(prompts),
                     "width": int(ids.shape[1]), "real_tokens": int(mask.sum())}

  train = [policy.format_prompt(tok, system.prompt(r)) for r in system.rl_rows("train")]
  start_state = policy.Start(spec, lm.params, {}, lm.params, causal_lm.param_axes(lm.cfg), tok,
                             no_eos)
  n = config.rollout.prompts_per_step

  def prompt_batch(step: int):
    chunk = [train[(step * n + i) % len(train)] for i in range(n)]
    ids, mask = policy.encode_prompts(tok, chunk, config.rollout.max_prompt_len)
    reward = lambda b: [workers.word_reward(t) for t in b.completions]
    return ids, mask, rollout.text_reward_fn(reward, tok, chunk, {})

  state, one_step = grpo.build(config, start_state, prompt_batch, parallel.make_mesh(data=1))
  times, phases = [], {}
  for step in range(FLAGS.steps + 1):
    began = time.perf_counter()
    state, m = one_step(state, step)
    state = jax.block_until_ready(state)
    if step:
      times.append(time.perf_counter() - began)
      for k, v in m.items():
        if k.startswith("perf/") and k.endswith("_s"):
          phases.setdefault(k[5:-2], []).append(float(np.asarray(v)))
  out["grpo"] = {"seconds": sum(times) / len(times),
                 "phases": {k: sum(v) / len(v) for k, v in phases.items()}}
  return out


def _run(checkout: str, dtype: str) -> dict:
  from bench import workers  # the driver's own (this checkout)

  return workers.run_in_checkout(__file__, checkout, f"--steps={FLAGS.steps}",
                                 f"--compute_dtype={dtype}")


def main(argv):
  del argv
  if FLAGS.worker:
    print(json.dumps(_worker()))
    return
  here = str(pathlib.Path(__file__).resolve().parents[1])
  if FLAGS.baseline and FLAGS.compare_dtype:
    raise app.UsageError("--baseline and --compare_dtype: give one of them")
  # side -> (checkout, compute dtype); the first side is the one ratios are taken against.
  if FLAGS.compare_dtype:
    checkouts = {FLAGS.compare_dtype: (here, FLAGS.compare_dtype), "float32": (here, "float32")}
  else:
    checkouts = {"this checkout": (here, FLAGS.compute_dtype)}
    if FLAGS.baseline:
      checkouts["baseline"] = (FLAGS.baseline, FLAGS.compute_dtype)
  results = {name: [] for name in checkouts}
  for r in range(FLAGS.rounds):
    for name in (list(checkouts) if r % 2 == 0 else list(reversed(checkouts))):
      res = _run(*checkouts[name])
      results[name].append(res)
      print(f"round {r}: {name}: generate {res['generate']['seconds']:.1f} s, GRPO step "
            f"{res['grpo']['seconds']:.1f} s {json.dumps(res['grpo']['phases'])}", flush=True)
  gen = next(iter(results.values()))[-1]["generate"]
  print(f"\ngenerate: {gen['rows']} prompts, width {gen['width']} ({gen['real_tokens']} real "
        "tokens), 64 new tokens each")
  first = next(iter(checkouts))
  print("| work | " + " | ".join(checkouts) + f" | time / {first} (median of rounds) |\n"
        "|---|" + "---|" * len(checkouts) + "---|")
  for work in ("generate", "grpo"):
    secs = {name: [x[work]["seconds"] for x in runs] for name, runs in results.items()}
    ratio = "-"
    if len(secs) == 2:
      ratio = f"{statistics.median(b / a for a, b in zip(*secs.values(), strict=True)):.2f}x"
    cells = " | ".join(f"{statistics.median(s):.1f} s" for s in secs.values())
    print(f"| {work} | {cells} | {ratio} |")


if __name__ == "__main__":
  app.run(main)
