"""LangPTune: End-to-end Training for Recommendation with Language-based User Profiles (Gao et al.).

MovieLens-100K item history -> a language profile of the user's taste; a retrieval recommender
(frozen MiniLM, cosine over the whole catalogue) ranks the held-out item against the profile, and
that ranking is the RL reward (configs/langptune.py, GRPO). Truth: NDCG@10, Recall@10 and MRR of
the held-out items of held-out users. The paper's headline table (RL profile vs zero-shot profile
vs SASRec vs popularity, Recall@10) is not built yet (issue: LangPTune and BLUE reproduced).
"""

from __future__ import annotations

import functools

from jaxprof.data import movielens, templates
from jaxprof.models.encoder import TextEncoder
from jaxprof.rewards import registry
from jaxprof.rewards.base import texts_batch
from jaxprof.systems import base


class System(base.System):
  """Users' rated-item histories in, taste profiles out; held-out ranking is the truth."""

  rl_split, eval_split = "train", "test"
  columns = ("history_items", "target_items", "positive_item", "target_text")

  def prompt(self, row):
    return templates.history_profile_prompt(row["history_text"], row["user_text"],
                                            max_items=self.config.data.max_history)

  def rl_rows(self, part):
    rows = super().rl_rows(part)
    for r in rows:  # reward columns: a list of held-out targets per row
      r["target_items"] = [int(r["target"])]
      r["positive_item"] = int(r["target"])
    return rows

  @functools.cached_property
  def item_texts(self) -> list[str]:
    return movielens.read_ml100k().item_text

  @functools.cached_property
  def encoder(self) -> TextEncoder:
    return TextEncoder.packaged_minilm()

  def resources(self, inputs):
    return {"encoder": self.encoder, "item_texts": self.item_texts}

  def truth_rows(self, rows, texts):
    batch = texts_batch(texts, {k: [r[k] for r in rows]
                                for k in ("history_items", "target_items")})
    out = {}
    for metric, name in (("ndcg", "truth/ndcg@10"), ("recall", "truth/recall@10"),
                         ("mrr", "truth/mrr")):
      ranking = registry.make_reward("retrieval_ranking", encoder=self.encoder,
                                     item_texts=self.item_texts, metric=metric, k=10)
      out[name] = base.per_row(ranking(batch))
    return out
