"""Each prompt once per group: the shared-prefix path equals G full sequences (share_prefix).

Compared on ragged batches (left-padded prompts of different lengths, right-ragged completions,
widths from the length buckets): per-token log-probs and the gradient norm to a relative 1e-5 in
float32, for each model family (Llama, Qwen2 = Llama with q/k/v bias and an untied head, GPT-2),
each remat policy, LoRA, the critic, the reward model, and over an 8-device mesh.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common as config_common
from jaxprof import buckets, parallel
from jaxprof.models import causal_lm, heads, lora
from jaxprof.rewards.base import RewardBatch
from jaxprof.trainers import artifacts, grpo, policy, ppo, reward_model, rollout
from tests import helpers

TINY_QWEN = dataclasses.replace(helpers.TINY_LLAMA, qkv_bias=True, tie_embeddings=False,
                                model_type="qwen2")
FAMILIES = {"llama": helpers.TINY_LLAMA, "qwen2": TINY_QWEN, "gpt2": helpers.TINY_GPT2}
RTOL = 1e-5  # float reassociation only


def group_batch(prompt_lens, comp_lens, vocab=128, seed=0) -> dict:
  """Rows in groups sharing a prompt; widths padded up to the bucket ladder as rollouts are."""
  rng = np.random.default_rng(seed)
  g = len(comp_lens) // len(prompt_lens)
  p_width = buckets.width(max(prompt_lens))
  n_width = buckets.width(max(comp_lens))
  prompts = [list(rng.integers(4, vocab, n)) for n in prompt_lens]
  p_ids, p_mask = (np.repeat(np.asarray(x), g, 0) for x in helpers.left_padded(prompts, p_width))
  c_mask = np.arange(n_width)[None] < np.asarray(comp_lens)[:, None]
  c_ids = np.where(c_mask, rng.integers(4, vocab, (len(comp_lens), n_width)), 0)
  return {"prompt_ids": p_ids, "prompt_mask": p_mask, "comp_ids": c_ids.astype(np.int32),
          "comp_mask": c_mask, "advantages": rng.normal(size=len(comp_lens)).astype(np.float32),
          "ref_logprobs": (-np.log(vocab) + 0.3 * rng.normal(size=c_mask.shape)).astype(np.float32)}


BATCH = group_batch(prompt_lens=[13, 5, 9], comp_lens=[11, 3, 1, 7, 16, 2, 9, 9, 4, 12, 6, 1])
G = 4


def model_params(cfg, seed: int = 0) -> dict:
  """Random params with non-zero biases (init leaves them at 0, which would test nothing)."""
  params = helpers.tiny_params(cfg, seed=seed, scale=2.0)
  noise = lambda path, x: (x + 0.1 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
                           if "bias" in jax.tree_util.keystr(path) else x)
  return jax.tree_util.tree_map_with_path(noise, params)


def max_rel(a, b, mask=None) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if mask is not None:
    a, b = a[np.asarray(mask)], b[np.asarray(mask)]
  return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6)))


def scaled_err(a, b, mask) -> float:
  """max |a - b| over max |b|: for quantities (values, scores) that cross zero."""
  a, b = np.asarray(a, np.float64)[np.asarray(mask)], np.asarray(b, np.float64)[np.asarray(mask)]
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def grad_norm(tree) -> float:
  return float(jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(tree))))


def rl_config(share: bool, algo: str = "grpo"):
  """A run config's RL sections: rollout (group_size G, share_prefix), rl and the algorithm's."""
  config = ml_collections.ConfigDict()
  config_common.rl_sections(config, algo, steps=1, lr=1e-3, kl_coef=0.04, prompts_per_step=3,
                            group_size=G, max_new_tokens=16, max_prompt_len=64)
  config.rollout.share_prefix = share
  return config


def grpo_logprobs_and_grad(spec, trainable, frozen, share: bool, batch=BATCH):
  rl = rl_config(share)
  def logprobs_and_grad(trainable, frozen, batch):
    loss = lambda t: grpo.grpo_loss(spec, rl, True, t, frozen, batch, None)[0]
    lp, _ = rollout.policy_logprobs(spec, rollout.prompt_group(rl.rollout), trainable, frozen,
                                  batch)
    return lp, jax.grad(loss)(trainable)
  return jax.jit(logprobs_and_grad)(trainable, frozen, batch)


def assert_same(spec, trainable, frozen):
  lp1, g1 = grpo_logprobs_and_grad(spec, trainable, frozen, share=False)
  lpg, gg = grpo_logprobs_and_grad(spec, trainable, frozen, share=True)
  assert max_rel(lpg, lp1, BATCH["comp_mask"]) <= RTOL
  assert abs(grad_norm(gg) / grad_norm(g1) - 1) <= RTOL
  scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(g1))
  for a, b in zip(jax.tree.leaves(gg), jax.tree.leaves(g1), strict=True):  # and every entry
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * scale)


@pytest.mark.parametrize("family,remat", [("llama", "none"), ("llama", "dots"), ("llama", "full"),
                                           ("qwen2", "full"), ("gpt2", "dots"), ("gpt2", "none")])
def test_policy_logprobs_and_gradients_match(family, remat):
  cfg = FAMILIES[family]
  spec = policy.PolicySpec(cfg=cfg, chunk_size=16, remat=remat)
  assert_same(spec, model_params(cfg), {})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_adapters_get_the_same_gradient(family):
  cfg = FAMILIES[family]
  base = model_params(cfg)
  targets = tuple(t for t in ("q", "v", "up", "qkv", "fc") if t in base["layers"])
  adapters = lora.init_lora(base, targets, 4, jax.random.key(1))
  adapters = jax.tree.map(lambda x: x + 0.05, adapters)  # B != 0: the adapter changes the model
  spec = policy.PolicySpec(cfg=cfg, chunk_size=16, remat="full", lora_rank=4, lora_alpha=8.0)
  assert_same(spec, adapters, {"base": base})


def test_switch_off_is_the_per_row_path():
  rl = rl_config(share=False)
  assert rollout.prompt_group(rl.rollout) == 1
  assert rollout.prompt_group(rl_config(True).rollout) == G
  spec = policy.PolicySpec(cfg=helpers.TINY_LLAMA, chunk_size=16)
  params = model_params(helpers.TINY_LLAMA)
  b = BATCH
  full = causal_lm.sequence_logprobs(
      params, spec.cfg, np.concatenate([b["prompt_ids"], b["comp_ids"]], 1),
      np.concatenate([b["prompt_mask"], b["comp_mask"]], 1))[:, b["prompt_ids"].shape[1] - 1:]
  lp, _ = rollout.policy_logprobs(spec, rollout.prompt_group(rl.rollout), params, {}, b)
  assert max_rel(lp, full, b["comp_mask"]) <= RTOL


def test_critic_values_and_gradient_match():
  cfg = helpers.TINY_LLAMA
  params = {"backbone": model_params(cfg),
            "head": heads.init_head(jax.random.key(3), cfg.hidden_size)}
  batch = dict(BATCH, old_values=np.zeros(BATCH["comp_mask"].shape, np.float32),
               returns=np.linspace(-1, 1, BATCH["comp_mask"].size, dtype=np.float32
                                   ).reshape(BATCH["comp_mask"].shape))
  out = {}
  for share in (False, True):
    config = rl_config(share, "ppo")
    values = jax.jit(functools.partial(ppo.critic_values, cfg, rollout.prompt_group(
        config.rollout), "full"))(params, batch)
    loss = lambda p, c=config: ppo.critic_loss_fn(cfg, c, "full", p, {}, batch, None)[0]
    out[share] = values, jax.jit(jax.grad(loss))(params)
  assert scaled_err(out[True][0], out[False][0], batch["comp_mask"]) <= RTOL
  assert abs(grad_norm(out[True][1]) / grad_norm(out[False][1]) - 1) <= RTOL


def test_prompt_tokens_are_read_once_per_group():
  """The shared path never looks at rows 2..G of a group's prompt: it cannot repeat work there."""
  spec = policy.PolicySpec(cfg=helpers.TINY_LLAMA, chunk_size=16)
  params = model_params(helpers.TINY_LLAMA)
  scrambled = dict(BATCH, prompt_ids=BATCH["prompt_ids"].copy())
  scrambled["prompt_ids"][np.arange(len(scrambled["prompt_ids"])) % G != 0] = 7
  a, _ = rollout.policy_logprobs(spec, G, params, {}, BATCH)
  b, _ = rollout.policy_logprobs(spec, G, params, {}, scrambled)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_mesh_matches_one_device():
  """Rows in group order, batch dim over the data axes: every device holds whole groups."""
  cfg = helpers.TINY_LLAMA
  spec = policy.PolicySpec(cfg=cfg, chunk_size=16, remat="full")
  params = model_params(cfg)
  batch = group_batch(prompt_lens=[13, 5, 9, 2], comp_lens=[11, 3, 1, 7, 16, 2, 9, 9],
                      seed=1)  # 4 groups of 2 over data=2 x fsdp=2
  rl = rl_config(True)
  rl.rollout.group_size = 2
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  shardings = parallel.param_shardings(causal_lm.param_axes(cfg), params, mesh, "fsdp_tp")
  loss = lambda t, b: grpo.grpo_loss(spec, rl, True, t, {}, b, None)[0]
  step = jax.jit(jax.value_and_grad(loss))
  one_loss, one_grad = step(params, batch)
  mesh_loss, mesh_grad = step(jax.device_put(params, shardings), parallel.shard_batch(batch, mesh))
  assert mesh_grad["layers"]["q"].sharding.num_devices == 8
  assert abs(float(mesh_loss) / float(one_loss) - 1) <= RTOL
  assert abs(grad_norm(mesh_grad) / grad_norm(one_grad) - 1) <= RTOL
  rl.rollout.share_prefix = False
  unshared_loss, unshared_grad = jax.jit(jax.value_and_grad(loss))(params, batch)
  assert abs(float(mesh_loss) / float(unshared_loss) - 1) <= RTOL
  assert abs(grad_norm(mesh_grad) / grad_norm(unshared_grad) - 1) <= RTOL


def test_reward_model_scores_each_prompt_once_with_the_same_scores(tmp_path):
  model_config = config_common.model_config("tiny")
  cfg, backbone, tok = reward_model.build_backbone("policy:1", "tiny", model_config, seed=0)
  params = {"backbone": backbone, "head": heads.init_head(jax.random.key(5), cfg.hidden_size)}
  artifacts.save_pytree(tmp_path, params, {
      "backbone": "policy:1", "policy_dir": "tiny", "pooling": "last", "max_prompt_len": 64,
      "max_response_len": 32})
  model = reward_model.RewardModel(tmp_path, model_config, batch_size=4)
  prompts = ["Senior nurse, 10 years in intensive care.", "Welder", "Data analyst with SQL"]
  responses = ["Job: ICU nurse.", "Night shift nurse, ward lead, hospital.", "Welder, pipes.",
               "Fabrication", "Analyst: dashboards and SQL reports for finance.", "BI analyst"]
  rows = [p for p in prompts for _ in range(2)]
  per_row = model.score(rows, responses)
  shared = model.score(rows, responses, group_size=2)
  assert per_row.shape == (6,) and np.ptp(per_row) > 0  # scores differ: the check has teeth
  assert scaled_err(shared, per_row, np.ones(6, bool)) <= RTOL
  # The reward the trainer calls passes the batch's groups through.
  batch = RewardBatch.from_groups(prompts, responses, np.zeros((6, 1), np.int32),
                                  np.ones((6, 1), bool), {}, group_size=2)
  np.testing.assert_allclose(reward_model.as_reward(model)(batch), shared, rtol=1e-6)
  with pytest.raises(ValueError, match="whole groups of 2"):
    model.score(rows[:5], responses[:5], group_size=2)


def test_continuation_scores_fall_back_to_the_prompt_for_an_empty_response():
  cfg = helpers.TINY_LLAMA
  params = {"backbone": model_params(cfg),
            "head": heads.init_head(jax.random.key(3), cfg.hidden_size)}
  p_ids, p_mask = (np.repeat(np.asarray(x), 2, 0) for x in helpers.left_padded([[5, 6, 7]]))
  ids = np.array([[9, 10, 0], [0, 0, 0]], np.int32)
  mask = ids > 0
  shared = heads.continuation_scores(params, cfg, p_ids, p_mask, ids, mask, group_size=2)
  full = heads.sequence_scores(params, cfg, np.concatenate([p_ids, ids], 1),
                               np.concatenate([p_mask, mask], 1))
  assert scaled_err(shared, full, np.ones(2, bool)) <= RTOL
