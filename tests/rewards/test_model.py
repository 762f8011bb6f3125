"""Reward-model score: batched + bucketed equals unbatched scoring; invalid text skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.models import heads
from jaxprof.rewards import RewardBatch, reward_model_score
from tests.helpers import TINY_LLAMA
from tests.rewards import TINY_BERT, tiny_encoder

_ref = jax.jit(heads.sequence_scores, static_argnums=(1, 4))


def make_batch(prompts, completions):
  b = len(completions)
  return RewardBatch(prompts, completions, np.zeros((b, 1), np.int32), np.ones((b, 1), bool))


def char_tokenize(texts):
  """Toy tokenizer for the tiny Llama: one id per byte (mod vocab), right-padded."""
  rows = [[1 + b % 120 for b in t.encode()] for t in texts]
  n = max(len(r) for r in rows)
  ids = np.zeros((len(rows), n), np.int32)
  mask = np.zeros((len(rows), n), bool)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, True
  return ids, mask


def test_bert_reward_model_matches_direct_scores():
  enc = tiny_encoder()
  params = heads.init_scored_model(TINY_BERT, jax.random.key(1))
  fn = reward_model_score(params, TINY_BERT, enc.tokenize, pooling="mean")
  prompts = ["CV: nurse", "CV: engineer", "CV: chef"]
  completions = ["Registered nurse, ICU.", "", "Head chef\nSkills: knives"]
  got = fn(make_batch(prompts, completions))
  assert got[1] is None  # empty completion
  for i in (0, 2):
    ids, mask = enc.tokenize([f"{prompts[i]}\n\n{completions[i]}"])
    ref = _ref(params, TINY_BERT, jnp.asarray(ids), jnp.asarray(mask), "mean")
    assert got[i] == pytest.approx(float(ref[0]), abs=1e-5)


def test_causal_reward_model_completion_only():
  params = heads.init_scored_model(TINY_LLAMA, jax.random.key(2))
  fn = reward_model_score(params, TINY_LLAMA, char_tokenize, include_prompt=False,
                          on_invalid=-1.0)
  got = fn(make_batch(["a", "b"], ["short", "bad \ufffd"]))
  ids, mask = char_tokenize(["short"])
  ref = _ref(params, TINY_LLAMA, jnp.asarray(ids), jnp.asarray(mask), "last")
  assert got[0] == pytest.approx(float(ref[0]), abs=1e-4)
  assert got[1] == -1.0
