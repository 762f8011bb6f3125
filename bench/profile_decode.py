r"""Where one decode step goes: the sampler's per-token work, timed piece by piece.

  .venv/bin/python -m bench.profile_decode --batch=32 --group=8 --prompt_len=48 --new_tokens=64

Times (best of --repeats, after a compiling call) of jitted pieces of one decode step of the
packaged SmolLM2-135M at batch B = prompts x group:
the forward of one token through all layers (prompt keys as a shared Prefix, completion keys in
the cache, per-layer arrays as `sampling.sample` holds them on CPU; and the same forward as a scan
over the stacked arrays), the LM head, the sampling of the next token
(noise over the whole vocabulary), the log-softmax at the chosen token, and the whole step as
the sampler runs it. Each piece is reported with its FLOP/s against the measured matmul peak.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import common  # noqa: E402
from jaxprof import api, perf, sampling  # noqa: E402
from jaxprof.models import causal_lm  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 32, "Rows decoded per step (prompts x group).")
flags.DEFINE_integer("group", 8, "Completions per prompt (the prompt cache is shared by a group).")
flags.DEFINE_integer("prompt_len", 48, "Prompt slots in the cache.")
flags.DEFINE_integer("new_tokens", 64, "Completion slots in the cache.")
flags.DEFINE_integer("repeats", 10, "Timed calls per piece (the best is reported).")


def main(argv):
  del argv
  lm = api.load_lm()
  cfg, params = lm.cfg, lm.params
  b = FLAGS.batch
  key = jax.random.key(0)
  # As the sampler holds it: each prompt's keys/values once (a Prefix), a cache of completion slots
  # half full.
  prompts = jnp.ones((b // FLAGS.group, FLAGS.prompt_len), jnp.int32)
  _, prefix = jax.jit(lambda p, t: causal_lm.forward(p, cfg, t, t > 0))(params, prompts)
  cache = causal_lm.init_cache(cfg, b, FLAGS.new_tokens)
  half = FLAGS.new_tokens // 2
  cache = cache.replace(mask=cache.mask.at[:, :half].set(True), index=jnp.asarray(half, jnp.int32))
  token = jnp.zeros((b,), jnp.int32)
  hidden = jax.random.normal(key, (b, cfg.hidden_size))
  logits = jax.random.normal(key, (b, cfg.vocab_size))
  choose = sampling.Sampling(temperature=1.0)

  @jax.jit
  def layers(params, cache, prefix, token):
    h, cache = causal_lm.forward(params, cfg, token[:, None], jnp.ones((b, 1), bool), cache=cache,
                                 prefix=prefix)
    return h[:, 0], cache

  # What `sampling.sample` decodes over on CPU: per-layer weights, prompt keys and cache.
  stacked = (params, cache, prefix)
  params, cache, prefix = causal_lm.per_layer(params), cache.per_layer(), prefix.per_layer()

  head = jax.jit(functools.partial(causal_lm.logits, cfg=cfg))
  pick = jax.jit(choose.choose)
  logp = jax.jit(lambda z, t: jnp.take_along_axis(jax.nn.log_softmax(z), t[:, None], -1))

  @jax.jit
  def step(params, cache, logits, key):
    t = choose.choose(logits, key)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], -1)
    h, cache = causal_lm.forward(params, cfg, t[:, None], jnp.ones((b, 1), bool), cache=cache,
                                 prefix=prefix)
    return causal_lm.logits(params, cfg, h[:, 0]), lp, cache

  peak = perf.matmul_peak()
  d, v = cfg.hidden_size, cfg.vocab_size
  layer_flops = 2 * perf.layer_weights(cfg) * b + 4 * cfg.num_layers * cfg.num_heads * \
      cfg.head_dim * b * (FLAGS.prompt_len + half)
  pieces = {
      "layers (with prefix + cache)": (lambda: layers(params, cache, prefix, token), layer_flops),
      "the same over stacked arrays (a scan)": (lambda: layers(*stacked, token), layer_flops),
      "LM head [B,D]x[D,V]": (lambda: head(params, hidden=hidden), 2 * b * d * v),
      "sample (noise over V)": (lambda: pick(logits, key), 0),
      "log-softmax at token": (lambda: logp(logits, token), 0),
      "whole step": (lambda: step(params, cache, logits, key), layer_flops + 2 * b * d * v),
  }
  print(f"peak f32 matmul {peak / 1e9:.0f} GFLOP/s; B={b} rows, {b // FLAGS.group} prompts of "
        f"{FLAGS.prompt_len} tokens, completion cache {FLAGS.new_tokens} slots ({half} used)")
  rows = []
  for name, (fn, flops) in pieces.items():
    sec = common.best_time(fn, FLAGS.repeats)
    rows.append([name, f"{sec * 1e3:.2f}", f"{flops / sec / 1e9:.0f}" if flops else "-",
                 f"{100 * flops / sec / peak:.0f}%" if flops else "-"])
  print(common.markdown_table(["piece", "ms", "GFLOP/s", "% of peak"], rows))


if __name__ == "__main__":
  app.run(main)
