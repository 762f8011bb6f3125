r"""jaxprof side of the side-by-side RL step benchmark: a subprocess driven over stdin/stdout.

  .venv/bin/python -m bench.jaxprof_worker --algo=grpo --prompts=4 --group=8 --new_tokens=64

Runs the real training step (`grpo.build` / `ppo.build`, the code `jaxprof.train` runs) on the
packaged SmolLM2-135M in float32: `prompts` chat prompts x `group` completions of exactly
`new_tokens` tokens (no EOS can stop a row), temperature 1, KL to a frozen reference (beta 0.04,
k3 in the loss for GRPO; k1 in the reward for PPO), AdamW lr 1e-6, reward -|words - 40|. PPO adds
GIRL's critic: the first --critic_layers layers of the policy with a scalar head.

Protocol (bench/workers.py): {"event": "info", ...} once, then after every step, the first
(compiling) one included, {"event": "step", "seconds", "rss_bytes", "peak_rss_bytes",
"completion_tokens", "phases": {rollout, reward, reference, update seconds}, "mfu", "mfu_train"};
then one stdin line: "step" runs the next step, anything else exits.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import workers  # noqa: E402
from configs import common as config_lib  # noqa: E402
from jaxprof import api, parallel  # noqa: E402
from jaxprof.models import causal_lm, heads  # noqa: E402
from jaxprof.trainers import grpo, policy, ppo, rollout  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("algo", "grpo", ["grpo", "ppo"], "Which jaxprof RL step.")
workers.define_workload_flags()
flags.DEFINE_integer("critic_layers", 6, "PPO: layers of the policy the critic keeps (GIRL).")
flags.DEFINE_enum("remat", "full", ["none", "dots", "full"], "model.remat (jaxprof's default).")
flags.DEFINE_string("compute_dtype", "float32", "Policy compute dtype (params stay float32).")


class _Reward:
  def __call__(self, batch) -> list[float]:
    return [workers.word_reward(t) for t in batch.completions]


def main(_: list[str]) -> None:
  proto = workers.Protocol()
  config = config_lib.run_config("none", seed=0)
  config_lib.rl_sections(config, FLAGS.algo, steps=10_000, lr=1e-6, kl_coef=0.04,
                         prompts_per_step=FLAGS.prompts, group_size=FLAGS.group,
                         max_new_tokens=FLAGS.new_tokens, max_prompt_len=256)
  config.mesh.data = 1
  lm = api.load_lm()
  tok = lm.tokenizer
  model = config_lib.model_config(compute_dtype=FLAGS.compute_dtype, remat=FLAGS.remat)
  spec = policy.spec_from_config(lm.cfg, model)
  mesh = parallel.make_mesh(data=1)
  prompts = [policy.format_prompt(tok, [{"role": "user", "content": r}])
             for r in workers.REQUESTS]
  reward = _Reward()

  def prompt_batch(step: int):
    idx = [(step * FLAGS.prompts + i) % len(prompts) for i in range(FLAGS.prompts)]
    ids, mask = policy.encode_prompts(tok, [prompts[i] for i in idx], 256)
    return ids, mask, rollout.text_reward_fn(reward, tok, [prompts[i] for i in idx], {})

  no_eos = (-1,)  # every completion runs to --new_tokens
  start = policy.Start(spec, lm.params, {}, lm.params, causal_lm.param_axes(lm.cfg), tok, no_eos)
  if FLAGS.algo == "grpo":
    state, one_step = grpo.build(config, start, prompt_batch, mesh)
  else:
    critic_params, critic_cfg = heads.truncate_layers(lm.params, lm.cfg, FLAGS.critic_layers)
    critic = {"backbone": critic_params,
              "head": heads.init_head(jax.random.key(3), critic_cfg.hidden_size)}
    state, one_step = ppo.build(config, start, ppo.Critic(critic_cfg, critic), prompt_batch, mesh)
  proto.emit({"event": "info", "jax": jax.__version__, "devices": len(jax.devices()),
              "algo": FLAGS.algo, "remat": FLAGS.remat, "compute_dtype": FLAGS.compute_dtype,
              "prompt_tokens": [int(len(tok.encode(p, add_special_tokens=False)))
                                for p in prompts]})
  step = 0
  while True:
    start = time.perf_counter()
    state, m = one_step(state, step)
    state = jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    m = {k: float(np.asarray(v)) for k, v in m.items()}
    proto.emit({"event": "step", "step": step + 1, "seconds": seconds, **workers.memory(),
                "completion_tokens": {"mean": m["rollout/length_mean"],
                                      "max": m["rollout/length_max"]},
                "phases": {k[5:-2]: v for k, v in m.items()
                           if k.startswith("perf/") and k.endswith("_s")},
                "mfu": m.get("perf/mfu"), "mfu_train": m.get("perf/mfu_train"),
                "peak_gflops": m.get("perf/peak_gflops")})
    step += 1
    if proto.next_command() != "step":
      proto.finish()


if __name__ == "__main__":
  app.run(main)
