"""The KV-cache sampler against cache-free decoding, alone vs batched, and its log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof import sampling
from jaxprof.models import causal_lm
from tests import helpers

EOS = (3,)


def greedy_without_cache(params, cfg, prompt: list[int], n: int) -> list[int]:
  tokens = list(prompt)
  out = []
  for _ in range(n):
    ids = jnp.asarray([tokens])
    hidden, _ = causal_lm.forward(params, cfg, ids, jnp.ones_like(ids, bool))
    nxt = int(jnp.argmax(causal_lm.logits(params, cfg, hidden[0, -1])))
    out.append(nxt)
    tokens.append(nxt)
    if nxt in EOS:
      break
  return out


def run(params, cfg, prompts, n=12, key=0, **kw):
  tokens, mask = helpers.left_padded(prompts)
  kw.setdefault("sampling", sampling.Sampling(temperature=0.0))
  return sampling.sample(params, cfg, tokens, mask, jax.random.key(key), max_new_tokens=n,
                         eos_ids=EOS, **kw)


def completion(out, row) -> list[int]:
  return [int(t) for t, m in zip(out.tokens[row], out.mask[row], strict=True) if m]


@pytest.mark.parametrize("cfg", [helpers.TINY_LLAMA, helpers.TINY_GPT2], ids=["llama", "gpt2"])
def test_greedy_cache_equals_full_forward(cfg):
  params = helpers.tiny_params(cfg)
  prompt = [5, 17, 9, 44, 2]
  out = run(params, cfg, [prompt])
  assert completion(out, 0) == greedy_without_cache(params, cfg, prompt, 12)


@pytest.mark.parametrize("cfg", [helpers.TINY_LLAMA, helpers.TINY_GPT2], ids=["llama", "gpt2"])
def test_per_layer_decode_equals_the_layer_scan(cfg):
  # The decode loop over per-layer weights, prompt keys and cache (the CPU default) against the
  # scan over the stacked ones: the same tokens and log-probs, groups and sampling included.
  params = helpers.tiny_params(cfg, scale=3.0)
  prompts = [[5, 17, 9, 44, 2, 7, 8], [11, 12]]
  kw = dict(sampling=sampling.Sampling(temperature=1.0), num_samples=3, key=4)
  loop, scan = (run(params, cfg, prompts, per_layer=flag, **kw) for flag in (True, False))
  np.testing.assert_array_equal(loop.tokens, scan.tokens)
  np.testing.assert_array_equal(loop.mask, scan.mask)
  np.testing.assert_allclose(loop.logprobs, scan.logprobs, atol=1e-5)
  assert len(set(map(tuple, np.asarray(loop.tokens)))) > 1  # the rows really were sampled
  # The loop's cache-free path (a prompt's own keys, causally) equals the scan's as well.
  tokens, mask = helpers.left_padded(prompts)
  (h_loop, kv_loop), (h_scan, kv_scan) = (
      causal_lm.forward(p, cfg, tokens, mask) for p in (causal_lm.per_layer(params), params))
  np.testing.assert_allclose(h_loop, h_scan, atol=1e-5)
  np.testing.assert_allclose(jnp.stack(kv_loop.k), kv_scan.k, atol=1e-5)


def test_mixed_length_batch_rows_equal_alone():
  cfg, params = helpers.TINY_LLAMA, helpers.tiny_params()
  prompts = [[5, 17, 9, 44, 2, 7, 8], [11, 12], [100, 101, 102, 103]]
  batched = run(params, cfg, prompts)
  for i, prompt in enumerate(prompts):
    alone = run(params, cfg, [prompt])
    assert completion(batched, i) == completion(alone, 0)
    np.testing.assert_allclose(batched.logprobs[i], alone.logprobs[0], atol=1e-5)


def test_logprobs_equal_full_forward_log_softmax():
  cfg, params = helpers.TINY_LLAMA, helpers.tiny_params(scale=3.0)
  prompts = [[5, 17, 9, 44], [11, 12]]
  out = run(params, cfg, prompts, n=10, sampling=sampling.Sampling(temperature=1.0))
  for i, prompt in enumerate(prompts):
    gen = completion(out, i)
    seq = jnp.asarray([prompt + gen])
    hidden, _ = causal_lm.forward(params, cfg, seq, jnp.ones_like(seq, bool))
    logp = jax.nn.log_softmax(causal_lm.logits(params, cfg, hidden[0]))
    expected = [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(gen)]
    np.testing.assert_allclose(np.asarray(out.logprobs[i, :len(gen)]), expected, atol=1e-4)
    assert not np.any(np.asarray(out.logprobs[i, len(gen):]))


def test_sampling_is_reproducible_and_key_dependent():
  cfg, params = helpers.TINY_LLAMA, helpers.tiny_params(scale=1.0)
  s = sampling.Sampling(temperature=1.0, top_k=50, top_p=0.95)
  a = run(params, cfg, [[5, 6, 7]] * 4, n=16, key=1, sampling=s)
  b = run(params, cfg, [[5, 6, 7]] * 4, n=16, key=1, sampling=s)
  c = run(params, cfg, [[5, 6, 7]] * 4, n=16, key=2, sampling=s)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_group_shares_prompt_cache():
  cfg, params = helpers.TINY_LLAMA, helpers.tiny_params()
  prompts = [[5, 17, 9], [11, 12, 13, 14]]
  grouped = run(params, cfg, prompts, num_samples=3)
  single = run(params, cfg, prompts)
  assert grouped.tokens.shape == (6, 12)
  for row in range(6):  # greedy: every member of a group equals the single completion
    assert completion(grouped, row) == completion(single, row // 3)


def test_top_k_one_is_greedy_and_eos_stops():
  cfg, params = helpers.TINY_LLAMA, helpers.tiny_params()
  greedy = run(params, cfg, [[5, 17, 9]], n=20)
  topk = run(params, cfg, [[5, 17, 9]], n=20, sampling=sampling.Sampling(top_k=1))
  np.testing.assert_array_equal(greedy.tokens, topk.tokens)
  toks = completion(greedy, 0)
  if any(t in EOS for t in toks):  # everything after EOS is masked out and padded
    assert toks[-1] in EOS
    assert np.all(np.asarray(greedy.tokens[0, len(toks):]) == 0)


def test_invalid_sampling_options_are_named():
  with pytest.raises(ValueError, match="top_p"):
    sampling.Sampling(top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    sampling.Sampling(temperature=-1)


def test_categorical_draws_follow_the_distribution():
  # Mass in several 256-token blocks (and at block edges); -inf logits must never be drawn.
  v = 700
  probs = np.zeros(v)
  probs[[0, 255, 256, 511, 699]] = [0.1, 0.2, 0.3, 0.15, 0.25]
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(500, 0)
  draw = jax.jit(sampling.categorical)
  draws = np.concatenate([np.asarray(draw(jax.random.key(i), logits)) for i in range(40)])
  counts = np.bincount(draws, minlength=v)
  assert counts[probs == 0].sum() == 0
  n = draws.size
  sigma = np.sqrt(n * probs * (1 - probs))
  assert np.all(np.abs(counts - n * probs) <= 5 * sigma + 1e-9), counts[probs > 0] / n


def test_eos_stops_at_a_token_the_greedy_run_emits():
  """Take the 4th token an unstopped greedy run emits as EOS: the stopped run must end there."""
  cfg, params = helpers.TINY_LLAMA, helpers.tiny_params()
  tokens, mask = helpers.left_padded([[5, 17, 9]])
  free = sampling.sample(params, cfg, tokens, mask, jax.random.key(0), max_new_tokens=10,
                         eos_ids=(-1,), sampling=sampling.Sampling(temperature=0.0))
  free_toks = [int(t) for t in free.tokens[0]]
  stop = free_toks[3]
  first = free_toks.index(stop)  # the first time the greedy run emits it
  out = sampling.sample(params, cfg, tokens, mask, jax.random.key(0), max_new_tokens=10,
                        eos_ids=(stop,), sampling=sampling.Sampling(temperature=0.0))
  assert completion(out, 0) == free_toks[:first + 1]  # EOS kept, nothing after it
  assert int(out.lengths[0]) == first + 1 < 10
  np.testing.assert_array_equal(np.asarray(out.tokens[0, first + 1:]), 0)  # padding after EOS


def _reference_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float):
  """numpy: softmax(logits / T), keep the top_k, then the smallest top-p prefix, renormalise."""
  z = logits / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p, kind="stable")
  keep = np.zeros_like(p, bool)
  keep[order[:top_k or len(p)]] = True
  q = np.where(keep, p, 0.0)
  q /= q.sum()
  cum = np.cumsum(q[order]) - q[order]  # mass before each token, in descending order
  keep_p = np.zeros_like(p, bool)
  keep_p[order[cum < top_p]] = True
  q = np.where(keep & keep_p, q, 0.0)
  return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 3, 1.0),
                                                     (1.0, 0, 0.6), (1.5, 4, 0.8)])
def test_filters_draw_from_the_reference_distribution(temperature, top_k, top_p):
  logits = np.log(np.array([0.30, 0.22, 0.16, 0.12, 0.09, 0.06, 0.03, 0.02]))
  want = _reference_probs(logits, temperature, top_k, top_p)
  rule = sampling.Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
  batch = jnp.asarray(logits, jnp.float32)[None].repeat(1000, 0)
  choose = jax.jit(rule.choose)
  draws = np.concatenate([np.asarray(choose(batch, jax.random.key(i))) for i in range(20)])
  counts = np.bincount(draws, minlength=len(logits))
  n = draws.size
  assert counts[want == 0].sum() == 0, (counts, want)
  sigma = np.sqrt(n * want * (1 - want))
  assert np.all(np.abs(counts - n * want) <= 5 * sigma + 1e-9), (counts / n, want)
