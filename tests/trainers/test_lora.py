"""LoRA: identity at init, only adapters train, and the merged export loads in transformers."""

import functools
import types

import jax
import numpy as np
import pytest
import torch
import transformers

from configs import common as config_common
from jaxprof import parallel
from jaxprof.models import causal_lm, lora
from jaxprof.trainers import common, policy, sft
from tests import helpers

CFG = helpers.TINY_LLAMA
RANK = 4
B, P, N = 4, 5, 6


def setup():
  model_config = config_common.model_config(path="tiny", lora_rank=RANK)
  spec = policy.PolicySpec(cfg=CFG, lora_rank=RANK, lora_alpha=model_config.lora.alpha)
  params = helpers.tiny_params(CFG, scale=4.0)  # peaked logits: a parity check that means much
  adapters, frozen, axes = policy.init_trainable(spec, params, model_config, jax.random.key(1))
  return spec, params, adapters, frozen, axes


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def sft_batch(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  prompt_mask = np.arange(P)[None, :] >= (P - rng.integers(2, P + 1, size=B))[:, None]
  target_mask = np.arange(N)[None, :] < rng.integers(1, N + 1, size=B)[:, None]
  return {"prompt_ids": np.where(prompt_mask, rng.integers(2, CFG.vocab_size, (B, P)), 0
                                 ).astype(np.int32),
          "prompt_mask": prompt_mask,
          "target_ids": np.where(target_mask, rng.integers(2, CFG.vocab_size, (B, N)), 0
                                 ).astype(np.int32),
          "target_mask": target_mask}


def test_merge_is_identity_at_init():
  _, params, adapters, frozen, _ = setup()
  assert frozen["base"] is params
  assert sorted(adapters["layers"]) == sorted(lora.LLAMA_TARGETS)
  for name, ab in adapters["layers"].items():
    assert ab["a"].shape[-1] == RANK and ab["b"].shape[1] == RANK, name
    assert not np.any(np.asarray(ab["b"])), name  # B = 0
    assert np.any(np.asarray(ab["a"])), name
  merged = lora.merge(params, adapters, 16.0, RANK)
  for path, m in jax.tree_util.tree_leaves_with_path(merged):
    base = functools.reduce(lambda t, k: t[k.key], path, params)
    np.testing.assert_array_equal(np.asarray(m), np.asarray(base),
                                  err_msg=jax.tree_util.keystr(path))


def test_unknown_target_names_the_available_ones():
  _, params, _, _, _ = setup()
  with pytest.raises(ValueError, match=r"\['q_proj'\].*available.*'gate'.*'up'"):
    lora.init_lora(params, ("q", "q_proj"), RANK, jax.random.key(0))
  model_config = config_common.model_config(path="tiny", lora_rank=RANK)
  model_config.lora.targets = "q, attn"
  spec = policy.PolicySpec(cfg=CFG, lora_rank=RANK)
  with pytest.raises(ValueError, match=r"\['attn'\].*available"):
    policy.init_trainable(spec, params, model_config, jax.random.key(0))


def test_lora_update_trains_only_adapters_and_export_matches_transformers(tmp_path):
  spec, params, adapters, frozen, axes = setup()
  base_before = host(params)
  mesh = parallel.make_mesh(data=1)
  tx = common.make_optimizer(config_common.optim_config(
      lr=1e-2, warmup=0, total_steps=10, schedule="constant", weight_decay=0.0))
  state, shardings = common.create_state(adapters, axes, tx, mesh, "fsdp")
  assert jax.tree.structure(state.params) == jax.tree.structure(adapters)  # only adapters train
  update = common.jit_update(
      common.make_update(functools.partial(sft.sft_loss, spec), tx, 1, "sft"), shardings)
  before = host(state.params)
  losses = []
  for step in range(2):
    state, m = update(state, frozen, parallel.shard_batch(sft_batch(), mesh),
                      jax.random.key(step))
    assert bool(m["sft/finite"])
    losses.append(float(m["sft/loss"]))
  print(f"LoRA SFT loss {losses[0]:.4f} -> {losses[1]:.4f}")
  assert losses[1] < losses[0]
  after = host(state.params)
  for name in adapters["layers"]:
    # Step 1 moves B (A's gradient is 0 while B = 0); step 2 moves A too.
    for part in ("a", "b"):
      assert not np.array_equal(after["layers"][name][part], before["layers"][name][part]), \
          (name, part)
  # The frozen base is bitwise what it was (and was not donated away).
  for x, y in zip(jax.tree.leaves(host(frozen["base"])), jax.tree.leaves(base_before),
                  strict=True):
    np.testing.assert_array_equal(x, y)

  # Export: transformers loads the merged policy with the same logits as jaxprof's merge.
  out = policy.export(spec, state.params, frozen, types.SimpleNamespace(path=None),
                      tmp_path / "export")
  model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
  tokens, mask = helpers.left_padded([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [3, 90, 100, 127]])
  positions = np.maximum(np.cumsum(np.asarray(mask), axis=1) - 1, 0)
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long),
                     attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
                     position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()

  def jax_logits(p):
    hidden, _ = causal_lm.forward(p, CFG, tokens, mask)
    return np.asarray(causal_lm.logits(p, CFG, hidden))

  merged = lora.merge(frozen["base"], state.params, spec.lora_alpha, spec.lora_rank)
  got, base_logits = jax_logits(merged), jax_logits(params)
  valid = np.asarray(mask)
  err = np.abs(got[valid] - expected[valid]).max()
  lora_effect = np.abs(base_logits[valid] - expected[valid]).max()
  print(f"export parity: max |jaxprof - transformers| {err:.2e}; LoRA moved logits by "
        f"{lora_effect:.3f}; max |logit| {np.abs(expected).max():.2f}")
  assert np.abs(expected).max() > 1.0
  assert lora_effect > 1e-2  # the export really contains the adapters
  assert err <= 1e-4, err
