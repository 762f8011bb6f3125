"""MiniLM encoder parity with transformers BertModel + mean pooling (real packaged weights)."""

import numpy as np
import pytest
import torch
import transformers

from jaxprof import assets
from jaxprof.models import hf
from jaxprof.models.encoder import TextEncoder

SENTENCES = [
    "A senior data engineer with ten years of Spark and Airflow experience.",
    "Registered nurse, night shifts, intensive care unit.",
    "Toy Story (1995) - Animation, Children's, Comedy",
    "short",
    "Ünïcödé text — with punctuation!? and numbers 12345.",
    "We are hiring a backend developer (Go, Kubernetes) in Berlin; remote possible. " * 6,
]


@pytest.mark.slow
def test_minilm_matches_transformers():
  path = assets.asset_path(assets.MINILM, "model")
  encoder = TextEncoder.packaged_minilm()
  got = encoder.embed(SENTENCES)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  model = transformers.BertModel.from_pretrained(path).eval()
  batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    states = model(**batch).last_hidden_state
  m = batch["attention_mask"].unsqueeze(-1).float()
  ref = ((states * m).sum(1) / m.sum(1)).numpy()
  ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
  cosine = np.sum(got * ref, axis=-1)
  assert got.shape == (len(SENTENCES), 384)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  assert cosine.min() >= 0.9999, cosine


@pytest.mark.slow
def test_batching_does_not_change_embeddings():
  encoder = TextEncoder.packaged_minilm(batch_size=4)
  together = encoder.embed(SENTENCES)
  alone = np.concatenate([encoder.embed([s]) for s in SENTENCES])
  np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.slow
def test_repeated_texts_are_embedded_once_and_returned_in_order():
  encoder = TextEncoder.packaged_minilm(batch_size=2)
  calls = []
  embed = encoder._embed
  encoder._embed = lambda params, tokens, mask: calls.append(tokens.shape) or embed(
      params, tokens=tokens, mask=mask)
  texts = [SENTENCES[i] for i in (5, 0, 3, 0, 5, 1, 3)]  # 4 distinct, lengths out of order
  got = encoder.embed(texts)
  assert len(calls) == 2  # 4 distinct texts in batches of 2, not 7 texts in 4 batches
  assert calls[0][1] < calls[1][1]  # the short texts share a batch with a short bucket
  alone = np.concatenate([encoder.embed([t]) for t in texts])
  np.testing.assert_allclose(got, alone, atol=1e-5)


def test_non_text_input_is_named():
  encoder = TextEncoder.__new__(TextEncoder)
  encoder._tokenizer = None
  with pytest.raises(TypeError, match="text 1 is int"):
    TextEncoder.tokenize(encoder, ["ok", 3])


def test_causal_lm_dir_is_not_an_encoder(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "llama"}')
  with pytest.raises(hf.CheckpointError, match="not an encoder; supported encoders: bert"):
    TextEncoder.from_dir(tmp_path)


@pytest.mark.slow
def test_catalog_embeddings_are_cached_on_disk(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXPROF_CACHE", str(tmp_path))
  encoder = TextEncoder.packaged_minilm()
  first = encoder.embed_catalog(SENTENCES)
  files = list((tmp_path / "embeddings").glob("*.npy"))
  assert len(files) == 1
  np.testing.assert_array_equal(encoder.embed_catalog(SENTENCES), first)
  encoder.embed_catalog(SENTENCES[:-1])  # a different catalogue gets its own entry
  assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 2
