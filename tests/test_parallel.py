"""Sharded forward and sampling on 8 simulated CPU devices match the single-device results."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxprof import parallel, sampling
from jaxprof.models import causal_lm
from tests import helpers


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
  return parallel.make_mesh(data=2, fsdp=2, tensor=2)


def shard(params, cfg, mesh, rules="fsdp_tp"):
  shardings = parallel.param_shardings(causal_lm.param_axes(cfg), params, mesh, rules)
  return jax.device_put(params, shardings)


def test_params_are_really_sharded(mesh):
  cfg = helpers.TINY_LLAMA
  sharded = shard(helpers.tiny_params(cfg), cfg, mesh)
  assert sharded["embed"].sharding.spec == P("tensor", "fsdp")
  assert sharded["layers"]["q"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert sharded["layers"]["k"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert sharded["layers"]["down"].sharding.spec == P(None, "tensor", "fsdp")
  assert sharded["layers"]["attn_norm"].sharding.is_fully_replicated
  assert parallel.sharded_fraction(sharded) > 0.95
  # Each device holds 1/4 of a fsdp x tensor sharded matrix.
  q = sharded["layers"]["q"]
  assert q.addressable_shards[0].data.size == q.size // 4


def test_indivisible_dims_fall_back_to_replication(mesh):
  spec = parallel.logical_to_spec(("kv_heads", "embed"), (3, 64), mesh,
                                  parallel.resolve_rules("fsdp_tp"))
  assert spec == P(None, "fsdp")


@pytest.mark.parametrize("cfg", [helpers.TINY_LLAMA, helpers.TINY_GPT2], ids=["llama", "gpt2"])
def test_sharded_logits_equal_single_device(mesh, cfg):
  params = helpers.tiny_params(cfg, scale=2.0)
  tokens, mask = helpers.left_padded([[5, 6, 7, 8, 9, 10], [11, 12, 13], [1, 2], [40, 41, 42, 43]])
  forward = jax.jit(lambda p, t, m: causal_lm.logits(p, cfg, causal_lm.forward(p, cfg, t, m)[0]))
  expected = np.asarray(forward(params, tokens, mask))
  sharded = shard(params, cfg, mesh)
  batch = parallel.shard_batch({"tokens": tokens, "mask": mask}, mesh)
  got = forward(sharded, batch["tokens"], batch["mask"])
  assert not got.sharding.is_fully_replicated
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_sharded_sampler_equals_single_device(mesh):
  cfg = helpers.TINY_LLAMA
  params = helpers.tiny_params(cfg)
  tokens, mask = helpers.left_padded([[5, 6, 7], [11, 12, 13, 14], [1, 2], [40, 41]])
  kw = dict(max_new_tokens=8, eos_ids=(3,), sampling=sampling.Sampling(temperature=0.0))
  expected = sampling.sample(params, cfg, tokens, mask, jax.random.key(0), **kw)
  batch = parallel.shard_batch({"tokens": tokens, "mask": mask}, mesh)
  got = sampling.sample(shard(params, cfg, mesh), cfg, batch["tokens"], batch["mask"],
                        jax.random.key(0), **kw)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(expected.tokens))
  np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(expected.logprobs), atol=1e-5)


def test_mesh_errors_name_the_sizes():
  with pytest.raises(ValueError, match="needs 12 devices; 8 available"):
    parallel.make_mesh(data=3, fsdp=2, tensor=2)
  with pytest.raises(ValueError, match="unknown sharding rules preset 'zero'"):
    parallel.resolve_rules("zero")
