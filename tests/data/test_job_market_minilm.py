"""Slow: MiniLM cosine between CV and JD is a weak but real signal of the oracle's match."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxprof import assets
from jaxprof.data import job_market


def _embed_fn():
  """jaxprof's MiniLM if it loads, else `transformers` on torch with mean pooling."""
  try:
    from jaxprof.models.encoder import TextEncoder

    return TextEncoder.packaged_minilm().embed
  except (ImportError, AttributeError, NotImplementedError):
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = assets.asset_path(assets.MINILM, "model")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(texts):
      out = []
      for i in range(0, len(texts), 64):
        enc = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256,
                  return_tensors="pt")
        with torch.no_grad():
          h = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        e = (h * m).sum(1) / m.sum(1)
        out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
      return np.concatenate(out)

    return embed


@pytest.mark.slow
def test_minilm_cosine_auc_between_chance_and_oracle():
  sizes = job_market.Sizes(num_seekers=300, num_cold_seekers=10, num_postings=400, sft=1,
                           reward_model=1, rl=1, rec_train=1, rec_val=1, rec_test=400,
                           cold_start_test=1)
  rows = job_market.split_rows(job_market.build_market(0, sizes), "rec_test")
  labels = np.array([r["label"] for r in rows])
  embed = _embed_fn()
  cv, jd = embed([r["cv"] for r in rows]), embed([r["jd"] for r in rows])
  cos_auc = roc_auc_score(labels, np.sum(cv * jd, -1))
  oracle_auc = roc_auc_score(labels, [r["prob"] for r in rows])
  print(f"AUC chance 0.500, MiniLM cosine {cos_auc:.3f}, oracle {oracle_auc:.3f}")
  assert 0.6 < cos_auc < oracle_auc - 0.05
