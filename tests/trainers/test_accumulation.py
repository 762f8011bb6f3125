"""Gradient accumulation over micro-batches equals the large-batch gradient (token-weighted SFT)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from configs import common as config_common
from jaxprof import parallel
from jaxprof.models import causal_lm
from jaxprof.trainers import common, policy, sft
from tests.trainers import toy

B, P, N, MICRO = 8, 6, 10, 4
# Valid target tokens per row: micro-batches of 2 rows hold 11, 6, 16 and 9 tokens, so the mean
# of per-micro-batch means weights tokens unequally.
TARGET_LENGTHS = [10, 1, 3, 3, 8, 8, 2, 7]


def sft_batch(seed: int = 0) -> dict:
  """prompt [B, P] left-padded, target [B, N] right-padded with TARGET_LENGTHS valid tokens."""
  rng = np.random.default_rng(seed)
  prompt_lengths = rng.integers(2, P + 1, size=B)
  prompt_ids = rng.integers(2, toy.CFG.vocab_size, size=(B, P)).astype(np.int32)
  prompt_mask = np.arange(P)[None, :] >= (P - prompt_lengths)[:, None]
  prompt_ids = np.where(prompt_mask, prompt_ids, 0).astype(np.int32)
  target_ids = rng.integers(2, toy.CFG.vocab_size, size=(B, N)).astype(np.int32)
  target_mask = np.arange(N)[None, :] < np.asarray(TARGET_LENGTHS)[:, None]
  target_ids = np.where(target_mask, target_ids, 0).astype(np.int32)
  return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "target_ids": target_ids,
          "target_mask": target_mask}


def setup():
  spec = policy.PolicySpec(cfg=toy.CFG)
  params = causal_lm.init_params(toy.CFG, jax.random.key(0))
  # Larger weights than the 0.02 init so gradients are well above float32 noise.
  params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
  return spec, params, functools.partial(sft.sft_loss, spec)


def max_abs_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                              jax.tree.leaves(b), strict=True))


def max_abs(tree) -> float:
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def test_accumulated_grads_equal_large_batch_gradient():
  spec, params, raw_loss = setup()
  loss_fn = common.with_weight(raw_loss)
  batch = jax.tree.map(jnp.asarray, sft_batch())
  rng = jax.random.key(0)

  # Reference: the whole batch's NLL with a weight per row, differentiated directly. Weights
  # 1 / (all target tokens) give the token-weighted large-batch mean.
  @jax.jit
  @jax.value_and_grad
  def weighted_nll(p, row_weight):
    logp = policy.completion_logprobs(spec, p, batch["prompt_ids"], batch["prompt_mask"],
                                      batch["target_ids"], batch["target_mask"])
    return -jnp.sum(logp * batch["target_mask"] * row_weight[:, None])

  lengths = np.asarray(TARGET_LENGTHS, np.float32)
  ref_loss, ref_grads = weighted_nll(params, jnp.full(B, 1.0 / lengths.sum()))

  acc = jax.jit(common.accumulated_grads, static_argnums=(0, 5))
  loss4, grads4, metrics4 = acc(loss_fn, params, {}, batch, rng, MICRO)

  scale = max_abs(ref_grads)
  assert scale > 1e-2, scale  # gradients large enough for 1e-5 to be a real bound
  np.testing.assert_allclose(float(loss4), float(ref_loss), rtol=0, atol=1e-5)
  diff = max_abs_diff(grads4, ref_grads)
  print(f"accumulated vs large-batch grad: max |diff| {diff:.2e} (max |grad| {scale:.3f})")
  assert diff < 1e-5, diff
  assert float(metrics4["tokens"]) == lengths.sum() / MICRO  # metrics: mean over micro-batches

  # The test is meaningful: the mean of per-micro-batch means (each row weighted by
  # 1 / (MICRO * tokens of its micro-batch)) is a different gradient.
  micro_tokens = lengths.reshape(MICRO, -1).sum(1)
  naive_weight = 1.0 / (MICRO * np.repeat(micro_tokens, B // MICRO))
  _, naive = weighted_nll(params, jnp.asarray(naive_weight))
  naive_diff = max_abs_diff(naive, ref_grads)
  print(f"mean-of-micro-means grad vs large-batch: max |diff| {naive_diff:.2e}")
  assert naive_diff > 1e-3, naive_diff


def make_state_and_update(params, loss_fn, num_micro):
  optim = config_common.optim_config(lr=1e-3, warmup=0, total_steps=10, schedule="constant",
                                     clip_norm=1.0, weight_decay=0.01)
  tx = common.make_optimizer(optim)
  mesh = parallel.make_mesh(data=1)
  state, shardings = common.create_state(params, causal_lm.param_axes(toy.CFG), tx, mesh, "fsdp")
  update = common.jit_update(common.make_update(loss_fn, tx, num_micro, "sft"), shardings)
  return state, update, mesh


def test_update_with_grad_accum_equals_single_batch_update():
  _, params, loss_fn = setup()
  batch = sft_batch()
  results = {}
  for num_micro in (1, MICRO):
    state, update, mesh = make_state_and_update(params, loss_fn, num_micro)
    for step in range(2):  # two steps: the second uses Adam moments built from the first
      state, m = update(state, {}, parallel.shard_batch(batch, mesh),
                        jax.random.key(step))
    results[num_micro] = (jax.device_get(state.params), float(m["sft/loss"]), int(state.step))
  p1, loss1, step1 = results[1]
  p4, loss4, step4 = results[MICRO]
  assert step1 == step4 == 2
  np.testing.assert_allclose(loss4, loss1, rtol=0, atol=1e-5)
  moved = max_abs_diff(p1, params)
  diff = max_abs_diff(p4, p1)
  print(f"params after 2 updates: grad_accum=4 vs 1 max |diff| {diff:.2e} (moved {moved:.2e})")
  assert moved > 1e-3  # the update did something
  assert diff < 1e-5, diff
