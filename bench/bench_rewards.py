"""Throughput of the model-based rewards (completions/s) on batches of 64 ~100-token completions.

    .venv/bin/python bench/bench_rewards.py [--batches 3] [--batch_size 64]

Catalogue: 1,682 synthetic item texts shaped like MovieLens ("Title (year) - genres"), so the
retrieval reward ranks a full MovieLens-size catalogue. Engagement: 8 prompts x 8 completions with
4 held-out postings each; "cold" means every batch brings new postings (embedded in the call),
"warm" means the postings were seen before (cached). Timings exclude the first (compiling) call.
The encoder-only line is the floor: embedding the completions with MiniLM, nothing else.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxprof.models.encoder import TextEncoder  # noqa: E402
from jaxprof.rewards import (  # noqa: E402
    EngagementModel,
    RewardBatch,
    embedding_contrastive,
    engagement_listwise,
    engagement_pointwise,
    retrieval_ranking,
)
from jaxprof.rewards.embedding import tokenize_bucketed  # noqa: E402
from jaxprof.rewards.engagement import init_mlp  # noqa: E402

WORDS = ("love story war night city dream river king ghost summer star island heart storm road "
         "secret fire garden family friends comedy thriller drama space western music crime "
         "adventure mystery").split()
GENRES = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance", "Western", "Thriller"]


def items(n: int, rng) -> list[str]:
  return [f"{' '.join(rng.choice(WORDS, rng.integers(1, 5))).title()} ({rng.integers(1930, 1999)})"
          f" - {', '.join(rng.choice(GENRES, rng.integers(1, 4), replace=False))}"
          for _ in range(n)]


def completions(n: int, rng, words: int = 80) -> list[str]:
  """Profiles of ~100 MiniLM tokens (80 words plus punctuation)."""
  return [("The user enjoys " + " ".join(rng.choice(WORDS, words)) + ". Skills: films, music.")
          for _ in range(n)]


def encoder_flops_per_token(enc: TextEncoder) -> float:
  """Multiply-adds per token of the BERT layers (attention projections + MLP)."""
  d, f = enc.cfg.hidden_size, enc.cfg.intermediate_size
  return enc.cfg.num_layers * (4 * d * d + 2 * d * f)


def matmul_gflops() -> float:
  """Current f32 matmul rate (the machine is shared: this tells how loaded it is)."""
  x, w = jax.numpy.ones((6144, 384)), jax.numpy.ones((384, 1536))
  f = jax.jit(lambda a, c: a @ c)
  f(x, w).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(10):
    f(x, w).block_until_ready()
  return 2 * 6144 * 384 * 1536 * 10 / (time.perf_counter() - t0) / 1e9


def timed(fn, make_batch, n: int) -> float:
  fn(make_batch(0))  # compile
  times = []
  for i in range(n):
    batch = make_batch(i + 1)
    t0 = time.perf_counter()
    fn(batch)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", type=int, default=3)
  ap.add_argument("--batch_size", type=int, default=64)
  args = ap.parse_args()
  b, rng = args.batch_size, np.random.default_rng(0)
  enc = TextEncoder.packaged_minilm()
  catalogue = items(1682, rng)
  t0 = time.perf_counter()
  item_emb = enc.embed(catalogue)  # once, shared by both rewards
  print(f"item embeddings (1,682 items): {time.perf_counter() - t0:.1f}s")
  contrastive = embedding_contrastive(enc, None, num_negatives=31, precomputed_items=item_emb)
  retrieval = retrieval_ranking(enc, None, metric="ndcg", k=10, precomputed_items=item_emb)
  engage = EngagementModel(init_mlp(jax.random.key(0), enc.dim, 256), enc)
  pointwise, listwise = engagement_pointwise(engage), engagement_listwise(engage)
  texts = {i: completions(b, np.random.default_rng(i)) for i in range(args.batches + 1)}
  ids, mask, _ = tokenize_bucketed(enc, texts[0])
  print(f"batch: {b} completions, MiniLM tokens mean {mask[:b].sum(1).mean():.0f}, padded to "
        f"{ids.shape}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

  def batch(i: int, fresh_postings: bool = True) -> RewardBatch:
    r = np.random.default_rng(100 + i)
    g = 8
    hist = [r.choice(1682, 20, replace=False).tolist() for _ in range(b // g)]
    posts = [[f"Posting {i if fresh_postings else 0}-{p}-{j}: " + " ".join(r.choice(WORDS, 40))
              for j in range(4)] for p in range(b // g)]
    acts = [r.integers(0, 3, 4).tolist() for _ in range(b // g)]
    cols = {"positive_item": [h[0] for h in hist], "target_items": [h[0] for h in hist],
            "history_items": [h[1:] for h in hist], "future_jds": posts, "future_actions": acts}
    return RewardBatch.from_groups([f"prompt {i}-{p}" for p in range(b // g)], texts[i],
                                   np.zeros((b, 100), np.int32), np.ones((b, 100), bool), cols, g)

  rows = [("encoder only (MiniLM embed)", lambda bt: enc.embed(bt.completions), batch),
          ("embedding_contrastive (K=31)", contrastive, batch),
          ("retrieval_ranking (NDCG@10, 1,682 items)", retrieval, batch),
          ("engagement_pointwise (cold postings)", pointwise, batch),
          ("engagement_pointwise (warm postings)", pointwise, lambda i: batch(i, False)),
          ("engagement_listwise (warm postings)", listwise, lambda i: batch(i, False))]
  gflop = 2 * encoder_flops_per_token(enc) * float(mask[:b].sum()) / 1e9
  for name, fn, make in rows:
    dt = timed(fn, make, args.batches)
    print(f"{name:42s} {dt * 1e3:8.0f} ms/batch  {b / dt:7.1f} completions/s")
    if name.startswith("encoder"):
      rate = matmul_gflops()
      print(f"  encoder work {gflop:.0f} GFLOP/batch -> {gflop / dt:.0f} GFLOP/s achieved; a plain "
            f"f32 matmul runs at {rate:.0f} GFLOP/s right now; at the machine's 420 GFLOP/s peak "
            f"the encoder alone would allow at most {420 / gflop * b:.0f} completions/s")


if __name__ == "__main__":
  main()
