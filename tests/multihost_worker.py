"""One process of the two-process gloo test (run by tests/test_multihost.py)."""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxprof import parallel
from jaxprof.models import causal_lm
from tests import helpers


def main(port: str, process_id: str) -> None:
  parallel.initialize_distributed(f"127.0.0.1:{port}", 2, int(process_id))
  assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
  cfg = helpers.TINY_LLAMA
  params = helpers.tiny_params(cfg, scale=2.0)  # same seed in both processes
  tokens, mask = helpers.left_padded([[5, 6, 7, 8], [11, 12, 13], [1, 2], [40, 41, 42, 43]] * 2)
  local = jax.jit(lambda p, t, m: causal_lm.logits(p, cfg, causal_lm.forward(p, cfg, t, m)[0]))
  expected = np.asarray(local(params, tokens, mask))

  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = parallel.param_shardings(causal_lm.param_axes(cfg), params, mesh, "fsdp_tp")
  put = lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: np.asarray(x)[idx])
  global_params = jax.tree.map(put, params, shardings)
  batch_sh = parallel.batch_sharding(mesh, 2)
  got = local(global_params, put(tokens, batch_sh), put(mask, batch_sh))
  got = multihost_utils.process_allgather(got, tiled=True)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
  print(f"process {process_id}: OK", flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
