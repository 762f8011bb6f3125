"""Logit parity with `transformers` (torch CPU, float32) on random-init models with padding."""

import numpy as np
import pytest
import torch
import transformers

from jaxprof.models import causal_lm, hf

TINY_LLAMA = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  initializer_range=0.2, rms_norm_eps=1e-6)
CASES = {
    "llama_untied": (transformers.LlamaConfig, dict(TINY_LLAMA, tie_word_embeddings=False)),
    "llama_tied": (transformers.LlamaConfig, dict(TINY_LLAMA, tie_word_embeddings=True,
                                                  rope_theta=1e5)),
    "llama3_rope_scaling": (transformers.LlamaConfig, dict(
        TINY_LLAMA, max_position_embeddings=256, rope_parameters={
            "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "qwen2_bias": (transformers.Qwen2Config, dict(TINY_LLAMA, tie_word_embeddings=False,
                                                  rope_theta=1e6)),
    "gpt2": (transformers.GPT2Config, dict(vocab_size=97, n_embd=64, n_layer=2, n_head=4,
                                           n_positions=64, initializer_range=0.2)),
}


def make_hf_model(case: str, tmp_path):
  cfg_cls, kwargs = CASES[case]
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(cfg_cls(**kwargs)).eval()
  with torch.no_grad():  # random biases so a dropped bias would show
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0, 0.2)
  model.save_pretrained(tmp_path)
  return model


def padded_batch(vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  lengths = [11, 7, 3]
  t = max(lengths)
  tokens = np.zeros((len(lengths), t), np.int32)
  mask = np.zeros((len(lengths), t), bool)
  for i, n in enumerate(lengths):  # left padding, pad id 0 deliberately a real token id
    tokens[i, t - n:] = rng.integers(1, vocab, n)
    mask[i, t - n:] = True
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def hf_logits(model, tokens, mask, positions):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.numpy()


def jax_logits(path, tokens, mask):
  cfg, params = hf.load_hf(path)
  hidden, _ = causal_lm.forward(params, cfg, tokens, mask)
  return np.asarray(causal_lm.logits(params, cfg, hidden))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
  model = make_hf_model(case, tmp_path)
  tokens, mask, positions = padded_batch(model.config.vocab_size)
  expected = hf_logits(model, tokens, mask, positions)
  got = jax_logits(tmp_path, tokens, mask)
  assert np.abs(expected).max() > 1.0  # logits large enough for the comparison to mean something
  np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["llama_untied", "qwen2_bias", "gpt2"])
def test_export_round_trip(case, tmp_path):
  make_hf_model(case, tmp_path / "src")
  cfg, params = hf.load_hf(tmp_path / "src")
  hf.save_hf(params, cfg, tmp_path / "exported")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
  tokens, mask, positions = padded_batch(cfg.vocab_size, seed=1)
  expected = jax_logits(tmp_path / "src", tokens, mask)
  got = hf_logits(reloaded, tokens, mask, positions)
  np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)


def test_sharded_index_checkpoint_loads(tmp_path):
  make_hf_model("llama_untied", tmp_path / "src")
  cfg, params = hf.load_hf(tmp_path / "src")
  hf.save_hf(params, cfg, tmp_path / "sharded", max_shard_bytes=60_000)
  assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
  assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
  _, reloaded = hf.load_hf(tmp_path / "sharded")
  tokens, mask, _ = padded_batch(cfg.vocab_size)
  np.testing.assert_array_equal(jax_logits(tmp_path / "sharded", tokens, mask),
                                jax_logits(tmp_path / "src", tokens, mask))
  # transformers reads our sharded layout too.
  transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
