"""Bucketed padding: widths follow the ladder, and a bucketed batch gives the unbucketed loss."""

import jax
import numpy as np
import pytest

from jaxprof import api, buckets
from jaxprof.tokenizer import Tokenizer
from jaxprof.trainers import policy, sft
from tests import helpers


def test_width_is_the_smallest_bucket_capped_at_the_limit():
  assert [buckets.width(n) for n in (1, 16, 17, 33, 65, 129, 200)] == [16, 16, 24, 48, 96, 192,
                                                                       256]
  assert buckets.width(171, limit=224) == 192
  assert buckets.width(200, limit=224) == 224  # the limit is always an allowed width
  assert buckets.width(500, limit=224) == 224


def test_shape_log_counts_distinct_shapes():
  log = buckets.ShapeLog("test")
  log(prompt=48, completion=64)
  log(prompt=48, completion=64)
  log(prompt=96, completion=64)
  assert log.count == 2


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.from_dir(api.resolve_model_dir(api.PACKAGED))


def test_encode_pads_to_the_longest_row_bucket(tok):
  ids, mask = policy.encode_prompts(tok, ["a b c", "one two three four five six"], 224)
  longest = int(mask.sum(-1).max())
  assert ids.shape[1] == buckets.width(longest) < 224
  assert mask[:, -1].all()  # left padded: every prompt ends at the last column
  ids, mask = policy.encode_targets(tok, ["short", "a somewhat longer target text"], 128)
  assert ids.shape[1] == buckets.width(int(mask.sum(-1).max())) < 128
  full, _ = policy.encode_prompts(tok, ["a b c"], 224, bucketed=False)
  assert full.shape[1] == 224


def test_bucketed_sft_batch_gives_the_unbucketed_loss(tok):
  cfg = helpers.TINY_LLAMA.__class__(**{**helpers.TINY_LLAMA.__dict__,
                                        "vocab_size": tok.vocab_size})
  params = helpers.tiny_params(cfg, scale=2.0)
  spec = policy.PolicySpec(cfg=cfg, chunk_size=8)
  examples = [{"prompt": "Write a job description for a nurse.", "target": "Cardiac ward, nights."},
              {"prompt": "Summarise: ten years of teaching maths and running a robotics club.",
               "target": "An experienced maths teacher who also coaches robotics."}]
  conf = type("C", (), {"max_prompt_len": 224, "max_target_len": 128})
  bucketed = sft.make_batch(tok, examples, [0, 1], conf)
  full = {}
  full["prompt_ids"], full["prompt_mask"] = policy.encode_prompts(
      tok, [policy.format_prompt(tok, e["prompt"]) for e in examples], 224, bucketed=False)
  full["target_ids"], full["target_mask"] = policy.encode_targets(
      tok, [e["target"] for e in examples], 128, bucketed=False)
  assert bucketed["prompt_ids"].shape[1] + bucketed["target_ids"].shape[1] < 224 + 128
  loss = jax.jit(lambda b: sft.sft_loss(spec, params, {}, b, None)[:2])
  (s_b, n_b), (s_f, n_f) = loss(bucketed), loss(full)
  assert float(n_b) == float(n_f) > 0
  np.testing.assert_allclose(float(s_b), float(s_f), rtol=1e-5)
