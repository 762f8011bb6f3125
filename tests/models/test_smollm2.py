"""The real packaged SmolLM2-135M-Instruct: parity with `transformers` and sensible generations.

Slow: loads the converted checkpoint (converted from the GGUF once, then cached) into jaxprof and
into `transformers` on torch CPU, once per module.
"""

import re

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxprof import api, sampling

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Write one sentence about a data engineer who builds pipelines in Spark and Airflow.",
    "Hi",
]


@pytest.fixture(scope="module")
def lm() -> api.LM:
  return api.load_lm(api.PACKAGED)  # params come from hf.load_hf on the converted directory


@pytest.fixture(scope="module")
def hf_model(lm):
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(lm.path), dtype=torch.float32, local_files_only=True)
  return model.eval()


def test_logits_match_transformers_on_padded_prompts(lm, hf_model):
  tokens, mask = lm.tokenizer.encode_batch(PROMPTS, padding_side="left")
  assert not mask.all()  # the prompts differ in length, so some rows are padded
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    expected = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                        attention_mask=torch.tensor(mask, dtype=torch.long),
                        position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
  got = lm.logits(tokens, mask)  # the public api.LM.logits
  assert isinstance(got, np.ndarray) and got.dtype == np.float32
  assert got.shape == expected.shape == (*tokens.shape, lm.cfg.vocab_size)
  assert np.abs(expected[mask]).max() > 5.0  # real logits, so the tolerance is meaningful
  np.testing.assert_allclose(got[mask], expected[mask], atol=1e-3, rtol=0)
  # Without a mask every position is real: the longest (unpadded) row gives the same logits.
  full = mask.all(axis=1)
  assert full.any()
  np.testing.assert_allclose(lm.logits(tokens[full]), expected[full], atol=1e-3, rtol=0)


def test_greedy_ids_match_transformers_generate(lm, hf_model):
  text = lm.format_prompts(["Name three fruits."], chat=True)
  ids, mask = lm.tokenizer.encode_batch(text, padding_side="left", add_special_tokens=False)
  n = 12
  out = sampling.sample(lm.params, lm.cfg, ids, mask, jax.random.key(0), max_new_tokens=n,
                        eos_ids=(-1,), sampling=sampling.Sampling(temperature=0.0),
                        pad_id=lm.tokenizer.pad_id)
  gen_cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=None,
                                          pad_token_id=lm.tokenizer.pad_id)
  with torch.no_grad():
    hf_out = hf_model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                               attention_mask=torch.tensor(mask, dtype=torch.long),
                               generation_config=gen_cfg)
  np.testing.assert_array_equal(np.asarray(out.tokens), hf_out[:, ids.shape[1]:].numpy())


def test_greedy_plain_continuation_names_paris(lm):
  (text,) = lm.generate(["The capital of France is"], chat=False, max_new_tokens=10)
  assert "Paris" in text, text


def test_chat_answer_is_fluent(lm):
  (text,) = lm.generate(["What is the capital of France? Answer in one sentence."],
                        max_new_tokens=32)
  assert "Paris" in text, text
  words = text.split()
  assert len(words) >= 4, text
  plain = [w for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'\-]*[.,!?;:]?", w)]
  assert len(plain) >= 0.8 * len(words), text
  assert "\ufffd" not in text and "<|" not in text, text
