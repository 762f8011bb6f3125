r"""What reading a layer's slice of a stacked array costs inside a scan, on this backend.

  .venv/bin/python -m bench.probe_layer_slices --layers=30 --rows=64 --prompt_len=512

The read a decode step makes of the prompts' keys and values (LangPTune's eval shape by default:
30 layers x 64 prompts x 3 KV heads x 512 positions x 64 dims, keys and values), summed over the
positions, three ways:
- a `lax.scan` over the stacked [L, ...] arrays (what a layer scan does);
- a Python loop over L separate arrays (what `sampling.sample` decodes over on CPU);
- one reduction over the whole stacked arrays (the memory system's rate for the same bytes).
Best of --repeats after a compiling call, with the bytes read per second.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("layers", 30, "Stacked layers.")
flags.DEFINE_integer("rows", 64, "Prompts (batch rows).")
flags.DEFINE_integer("kv_heads", 3, "Key/value heads.")
flags.DEFINE_integer("prompt_len", 512, "Positions per prompt.")
flags.DEFINE_integer("head_dim", 64, "Dimensions per head.")
flags.DEFINE_integer("repeats", 5, "Timed calls per way (the best is reported).")


def main(argv):
  del argv
  shape = (FLAGS.layers, FLAGS.rows, FLAGS.kv_heads, FLAGS.prompt_len, FLAGS.head_dim)
  k = jax.random.normal(jax.random.key(0), shape)
  v = jax.random.normal(jax.random.key(1), shape)
  ks, vs = tuple(k[i] for i in range(shape[0])), tuple(v[i] for i in range(shape[0]))
  x = jnp.zeros(shape[1:3] + shape[4:])

  @jax.jit
  def scan(x, k, v):
    def body(x, kv):
      return x + jnp.sum(kv[0], 2) + jnp.sum(kv[1], 2), None
    return jax.lax.scan(body, x, (k, v))[0]

  @jax.jit
  def loop(x, ks, vs):
    for k_i, v_i in zip(ks, vs, strict=True):
      x = x + jnp.sum(k_i, 2) + jnp.sum(v_i, 2)
    return x

  @jax.jit
  def whole(x, k, v):
    return x + jnp.sum(k, (0, 3)) + jnp.sum(v, (0, 3))

  gigabytes = 2 * k.nbytes / 1e9
  ways = {"scan over the stacked arrays": lambda: scan(x, k, v),
          "loop over per-layer arrays": lambda: loop(x, ks, vs),
          "one reduction over the stacked arrays": lambda: whole(x, k, v)}
  print(f"keys and values {shape} each, {gigabytes:.2f} GB read per call")
  rows = []
  for name, fn in ways.items():
    sec = common.best_time(fn, FLAGS.repeats)
    rows.append([name, f"{sec * 1e3:.1f}", f"{gigabytes / sec:.1f}"])
  print(common.markdown_table(["way", "ms", "GB/s"], rows))


if __name__ == "__main__":
  app.run(main)
