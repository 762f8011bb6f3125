"""SASRec vs popularity on movielens100k, leave-last-out, full catalogue with history masked."""

import time

import numpy as np
import pytest

from jaxprof.data import movielens
from jaxprof.recsys import baselines, metrics, sasrec


@pytest.mark.slow
def test_sasrec_beats_popularity_on_movielens100k():
  ml = movielens.read_ml100k()
  split = movielens.leave_last_out(ml)
  num_items = ml.num_items
  train = [list(items) for items in split.train_items]
  # Test time: the history is train + the validation item; both are masked from the ranking.
  test_histories = [h + [int(v)] for h, v in zip(train, split.val_item, strict=True)]
  test_mask = movielens.seen_mask(split, num_items, include_val=True)

  pop = baselines.popularity_scores(train, num_items)
  pop_means, _ = metrics.ranking_metrics(pop, split.test_item, test_mask)

  config = sasrec.SASRecConfig()
  start = time.perf_counter()
  params = sasrec.train_sasrec(train, num_items, config, valid_targets=split.val_item)
  train_seconds = time.perf_counter() - start
  scores = sasrec.score_all(params, test_histories, config)
  means, per_user = metrics.ranking_metrics(scores, split.test_item, test_mask)
  _, low, high = metrics.bootstrap_ci(per_user["ndcg@10"], n_boot=500)

  print(f"\npopularity: NDCG@10 {pop_means['ndcg@10']:.4f} Recall@10 {pop_means['recall@10']:.4f}"
        f" MRR {pop_means['mrr']:.4f}")
  print(f"SASRec:     NDCG@10 {means['ndcg@10']:.4f} (95% CI {low:.4f}-{high:.4f}) Recall@10 "
        f"{means['recall@10']:.4f} MRR {means['mrr']:.4f}; trained in {train_seconds:.0f}s")
  assert np.isfinite(scores).all()
  assert means["ndcg@10"] > 1.8 * pop_means["ndcg@10"]
  assert low > pop_means["ndcg@10"]
