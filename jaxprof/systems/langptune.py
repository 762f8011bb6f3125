"""LangPTune: End-to-end Training for Recommendation with Language-based User Profiles (Gao et al.).

MovieLens-100K item history -> a language profile of the user's taste; a retrieval recommender
(frozen MiniLM, cosine over the whole catalogue) ranks the held-out item against the profile, and
that ranking is the RL reward (configs/langptune.py, GRPO). Truth: NDCG@10, Recall@10 and MRR of
the held-out test item of held-out users, the history (and the validation item RL was rewarded on)
masked.

Reproduces the paper's headline comparison as the `recommenders` evaluator: the RL profile vs the
zero-shot profile (the start policy) vs SASRec vs popularity vs the raw history text embedded
directly, Recall@10 / NDCG@10 / MRR with bootstrap 95% intervals, and RL's relative Recall@10 gain
over the zero-shot profile (the paper reports +17.5%) with its paired-bootstrap interval. Profiles
are also scored by a second encoder that gives no reward (paraphrase-MiniLM-L3), so a gain seen
only by the reward's encoder shows up as such.

The paper's trainable-recommender variant: `System.trained_recommender` learns a map from a text
embedding to the next item (recsys/text_recommender.py, trained on the training split's next-item
pairs, not on generated profiles, which would cost a generate call per user). The evaluator ranks
the same profiles with it ("+trained recommender" rows); `configs/langptune.py:recommender=trained`
also gives the GRPO reward its ranking, so the policy is trained for that recommender.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from jaxprof import evaluation, paths
from jaxprof.data import movielens, templates
from jaxprof.evaluation import held_out
from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import baselines, metrics, sasrec, text_recommender
from jaxprof.rewards.base import valid_texts
from jaxprof.systems import base

K = 10
INDEPENDENT = "paraphrase-L3"  # the second encoder's label in tables
TRAINED = " +trained recommender"  # the label suffix of rows ranked by a trained recommender


class System(base.System):
  """Users' rated-item histories in, taste profiles out; held-out ranking is the truth."""

  rl_split, eval_split = "train", "test"
  columns = ("history_items", "target_items", "positive_item", "target_text")

  def prompt(self, row):
    data = self.config.data
    return templates.history_profile_prompt(row["history_text"], row["user_text"],
                                            max_items=data.max_history,
                                            newest_first=data.get("newest_first", False))

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
    """The reward's encoder (all-MiniLM-L6-v2)."""
    return TextEncoder.packaged_minilm()

  @functools.cached_property
  def independent_encoder(self) -> TextEncoder:
    """An encoder no reward uses (paraphrase-MiniLM-L3-v2), for evaluation only."""
    return TextEncoder.packaged_paraphrase_minilm()

  @functools.cached_property
  def target_counts(self) -> np.ndarray:
    """[I] float32: how often each item is an RL row's held-out target (training split): the
    distribution of an average user's held-out item, a relative reward's `reference`."""
    rows = self.rl_rows("train")
    return baselines.item_counts([r["target_items"] for r in rows], len(self.item_texts))

  def resources(self, inputs):
    out = {"encoder": self.encoder, "item_texts": self.item_texts,
           "target_counts": self.target_counts}
    if any(v == "@text_recommender" for term in self.config.rewards.values()
           for v in dict(term.kwargs).values()):  # trained only when a reward ranks with it
      out["text_recommender"] = self.trained_recommender(
          self.config.eval.evaluators.recommenders.trained_epochs, self.config.seed)
    return out

  def ranks(self, rows: Sequence[base.Row], texts: Sequence[str],
            encoder: TextEncoder | None = None,
            recommender: text_recommender.Params | None = None) -> np.ndarray:
    """[N] float64: the 1-based rank of each row's `target` among the whole catalogue by cosine
    with the embedding of its text (`encoder`, default the reward's), or by a trained
    `recommender` over that embedding, the row's `history_items` masked; nan for an empty
    text."""
    encoder = encoder or self.encoder
    clean, ok = valid_texts(texts)  # an invalid text is embedded as " ", then set to nan
    return self.ranks_of_embeddings(rows, encoder.embed(clean), ok, encoder, recommender)

  def ranks_of_embeddings(self, rows: Sequence[base.Row], x: np.ndarray, ok: np.ndarray,
                          encoder: TextEncoder,
                          recommender: text_recommender.Params | None = None) -> np.ndarray:
    """`ranks` of texts already embedded by `encoder` (x: [N, D]; ok: [N] bool, False -> nan)."""
    items = encoder.embed_catalog(self.item_texts)
    if recommender is None:
      scores = x @ items.T
    else:
      scores = text_recommender.score_all(recommender, x, items)
    return np.where(ok, rank_rows(scores, rows), np.nan)

  def trained_recommender(self, epochs: int, seed: int) -> text_recommender.Params:
    """A recommender trained on the reward encoder's embeddings (recsys/text_recommender.py):
    every training-split history's (item t-1 text -> item t) pairs, InfoNCE over the catalogue;
    the best epoch by the MRR of each user's validation item given their last training item
    (history masked). Never sees a validation or test item as an input or a test item at all.
    Trained once per (epochs, seed): a reward that ranks with it and the evaluation share it."""
    cache = self.__dict__.setdefault("_recommenders", {})
    if (epochs, seed) not in cache:
      start = time.perf_counter()
      splits = movielens.leave_last_out(movielens.read_ml100k())
      items = self.encoder.embed_catalog(self.item_texts)
      valid = text_recommender.Pairs(
          items[[h[-1] for h in splits.train_items]], splits.val_item,
          metrics.history_mask(splits.train_items, len(self.item_texts)))
      config = text_recommender.TextRecConfig(epochs=epochs, seed=seed)
      cache[epochs, seed] = text_recommender.train(
          text_recommender.next_item_pairs(splits.train_items, items), items, config, valid)
      logging.info("text recommender trained in %.0f s", time.perf_counter() - start)
    return cache[epochs, seed]

  def truth_rows(self, rows, texts):
    return {f"truth/{m}": v for m, v in ranking_metrics(self.ranks(rows, texts)).items()}

  def truth_views(self, rows: Sequence[base.Row], texts: Sequence[str],
                  independent: bool | None = None, trained_epochs: int | None = None
                  ) -> dict[str, dict[str, np.ndarray]]:
    """{view suffix: ranking_metrics} of `texts` for `rows`: ranked by the reward's cosine (""),
    by the second encoder's (" @paraphrase-L3", with `independent`) and by the trained
    recommender over the reward encoder's embeddings (" +trained recommender", with
    `trained_epochs` > 0). Both default to the config's `recommenders` evaluator, so that texts
    re-scored later (`jaxprof.seeds`) get that evaluator's rankings."""
    kwargs = self.config.eval.evaluators.get("recommenders", {})
    if independent is None:
      independent = kwargs.get("independent", True)
    if trained_epochs is None:
      trained_epochs = kwargs.get("trained_epochs", 0)
    encoders = {"": self.encoder}
    if independent:
      encoders[f" @{INDEPENDENT}"] = self.independent_encoder
    clean, ok = valid_texts(texts)
    views, embedded = {}, {}
    for suffix, encoder in encoders.items():
      embedded[suffix] = x = encoder.embed(clean)  # once per text and encoder
      views[suffix] = ranking_metrics(self.ranks_of_embeddings(rows, x, ok, encoder))
    if trained_epochs:  # the recommender reads the reward encoder's embeddings
      recommender = self.trained_recommender(trained_epochs, self.config.seed)
      views[TRAINED] = ranking_metrics(
          self.ranks_of_embeddings(rows, embedded[""], ok, self.encoder, recommender))
    return views


def rank_rows(scores: np.ndarray, rows: Sequence[base.Row]) -> np.ndarray:
  """[N] float64 1-based rank of each row's `target` under `scores` [N, I], history masked."""
  exclude = metrics.history_mask([r["history_items"] for r in rows], scores.shape[1])
  targets = np.array([int(r["target"]) for r in rows], np.int32)
  return np.asarray(metrics.rank_of_targets(scores, targets, exclude), np.float64)


def ranking_metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
  """{"ndcg@10", "recall@10", "mrr"}: [N] float64 per row from 1-based ranks [N] (nan stays
  nan). One held-out item per row: NDCG@10 = 1 / log2(rank + 1) within the top 10."""
  ranks = np.asarray(ranks, np.float64)
  top = ranks <= K
  out = {f"ndcg@{K}": np.where(top, 1.0 / np.log2(ranks + 1.0), 0.0),
         f"recall@{K}": top.astype(np.float64), "mrr": 1.0 / ranks}
  return {m: np.where(np.isnan(ranks), np.nan, v) for m, v in out.items()}


def _sasrec_ranks(rows: Sequence[base.Row], num_items: int, epochs: int, seed: int
                  ) -> np.ndarray:
  """SASRec trained on the same split: next-item prediction over every user's training items,
  the validation item for early stopping; it then reads each row's history (train items +
  validation item) and ranks the test item."""
  splits = movielens.leave_last_out(movielens.read_ml100k())
  config = sasrec.SASRecConfig(epochs=epochs, seed=seed)
  params = sasrec.train_sasrec(splits.train_items, num_items, config,
                               valid_targets=splits.val_item)
  histories = [list(r["history_items"]) for r in rows]
  return rank_rows(sasrec.score_all(params, histories, config), rows)


def _popularity_ranks(rows: Sequence[base.Row], system: System) -> np.ndarray:
  """Items ranked by how often they occur in every user's history before the test item."""
  every = [r["history_items"] for r in system.rows(system.eval_split)]
  scores = baselines.popularity_scores(every, len(system.item_texts), num_users=len(rows))
  return rank_rows(scores, rows)


def _raw_history_text(system: System, row: base.Row) -> str:
  """The history the profile is written from, as one text (the prompt's items, newest last)."""
  return "; ".join(row["history_text"][-system.config.data.max_history:])


@evaluation.register("recommenders")
def recommenders(ev: evaluation.Context, sasrec_epochs: int = 20, independent: bool = True,
                 baseline_rows: Sequence[str] = ("raw history", "SASRec", "popularity"),
                 trained_epochs: int = 0) -> evaluation.Result:
  """LangPTune's headline table: the held-out test item of config.eval.num_examples users ranked
  over the whole catalogue (history and validation item masked) by each policy's profile (one per
  user, at config.eval.temperature; "start" is the zero-shot profile when no SFT stage ran), by
  the raw history text embedded directly, by SASRec trained on the same split, and by popularity.
  Means with bootstrap 95% intervals over users. "X @paraphrase-L3" rows score the same texts
  with an encoder no reward used. "rl vs start" rows: the paired-bootstrap difference (`diff/`)
  and relative gain (`gain/`, mean(rl) / mean(start) - 1, left out where start's mean is 0) of
  each metric, with 95% intervals. With `trained_epochs`, "X +trained recommender" rows rank the
  same texts' reward-encoder embeddings with `System.trained_recommender` (the paper's trainable
  recommender variant, trained for at most that many epochs) instead of the bare cosine. Every
  policy's profiles are written to `profiles.jsonl`."""
  system = ev.system
  rows = system.rl_rows("eval")
  texts = {name: [g[0] for g in ev.generate(name, [system.prompt(r) for r in rows])]
           for name in ev.policies}
  if "raw history" in baseline_rows:
    texts["raw history"] = [_raw_history_text(system, r) for r in rows]
  views = {name: system.truth_views(rows, t, independent, trained_epochs)
           for name, t in texts.items()}
  suffixes = list(dict.fromkeys(s for v in views.values() for s in v))  # cosine rows first
  per_row = {name + s: views[name][s] for s in suffixes for name in texts}
  if "SASRec" in baseline_rows:
    start = time.perf_counter()
    per_row["SASRec"] = ranking_metrics(
        _sasrec_ranks(rows, len(system.item_texts), sasrec_epochs, ev.config.seed))
    logging.info("recommenders: SASRec trained and scored in %.0f s", time.perf_counter() - start)
  if "popularity" in baseline_rows:
    per_row["popularity"] = ranking_metrics(_popularity_ranks(rows, system))
  table = {label: {k: v for m, x in values.items() for k, v in held_out.with_ci(m, x).items()}
           for label, values in per_row.items()}
  for suffix in suffixes:
    if "rl" + suffix in per_row and "start" + suffix in per_row:
      table["rl vs start" + suffix] = _compare(per_row["rl" + suffix], per_row["start" + suffix])
  if jax.process_index() == 0:  # every profile, for reading or re-scoring without a generate
    paths.atomic_write_text(ev.stage_dir / "profiles.jsonl", "".join(
        json.dumps({"user_index": int(r["user_index"]), "target": int(r["target"]),
                    **{n: texts[n][i] for n in ev.policies}}) + "\n"
        for i, r in enumerate(rows)))
  shown = [{"history": _raw_history_text(system, r), "target": r["target_text"],
            **{n: texts[n][i] for n in ev.policies}} for i, r in enumerate(rows[:4])]
  return evaluation.Result(table, shown)


def _compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
  out = {}
  for m in a:
    diff, low, high = metrics.paired_bootstrap_ci(a[m], b[m])
    out |= {f"diff/{m}": diff, f"diff/{m}/ci_low": low, f"diff/{m}/ci_high": high}
    gain, g_low, g_high = metrics.paired_relative_gain_ci(a[m], b[m])
    if np.isfinite([gain, g_low, g_high]).all():  # undefined when the reference's mean is 0
      out |= {f"gain/{m}": gain, f"gain/{m}/ci_low": g_low, f"gain/{m}/ci_high": g_high}
  return out
