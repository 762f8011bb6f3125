"""Slow: MiniLM cosine between CV and JD is a weak but real signal of the oracle's match."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxprof.data import job_market
from jaxprof.models.encoder import TextEncoder


@pytest.mark.slow
def test_minilm_cosine_auc_between_chance_and_oracle():
  sizes = job_market.Sizes(num_seekers=300, num_cold_seekers=10, num_postings=400, sft=1,
                           reward_model=1, rl=1, rec_train=1, rec_val=1, rec_test=300,
                           cold_start_test=1)
  rows = job_market.split_rows(job_market.build_market(0, sizes), "rec_test")
  labels = np.array([r["label"] for r in rows])
  encoder = TextEncoder.packaged_minilm(max_length=128)  # the start of a CV says who it is
  cv, jd = encoder.embed([r["cv"] for r in rows]), encoder.embed([r["jd"] for r in rows])
  cos_auc = roc_auc_score(labels, np.sum(cv * jd, -1))
  oracle_auc = roc_auc_score(labels, [r["prob"] for r in rows])
  print(f"AUC chance 0.500, MiniLM cosine {cos_auc:.3f}, oracle {oracle_auc:.3f}")
  assert 0.6 < cos_auc < oracle_auc - 0.05
