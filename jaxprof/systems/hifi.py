"""High Fidelity Textual User Representation over Heterogeneous Sources via RL (Arora et al.).

A member's heterogeneous sources (profile, professional data, searches, job activity with skipped
postings left out) -> one textual representation (configs/hifi.py, GRPO). A frozen engagement
model (`reward_model.backbone="engagement"`: MiniLM embeddings + MLP, trained on logged actions
for the members' raw sources and for the start policy's own summaries) scores the text against
the member's held-out postings, pointwise or listwise; format and length rewards shape it.

Reproduces, on held-out members and against the hidden truth (the oracle's engagement probability
of every member-posting pair, which no reward and no model sees):
* the headline comparison (`member_engagement` evaluator): the RL representation vs the
  prompt-only summary (the start policy) vs the raw concatenated sources, each read by (a) a
  downstream engagement predictor trained on that kind of text (an MLP on frozen MiniLM features,
  cross-fitted over the held-out members on their logged actions) and (b) plain cosine retrieval
  with an encoder no reward uses (paraphrase-MiniLM-L3); metrics: NDCG of the member's future
  postings and NDCG@10 over the whole posting catalogue, gains = hidden probabilities, with
  bootstrap intervals and paired differences;
* Figure 2 (length under no length term, the format reward, the quadratic penalty): the
  `length=` variants of configs/hifi.py and their `rollout/length_mean` curves;
* entropy weighting: a member's weight (the entropy of its held-out actions) scales its group's
  advantages (`grpo.prompt_weight`), where group normalisation does not cancel it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import numpy as np
from absl import logging

from jaxprof import config as config_lib
from jaxprof import evaluation
from jaxprof.data import job_market, member_sources, templates
from jaxprof.evaluation import held_out
from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import metrics
from jaxprof.rewards import engagement
from jaxprof.rewards.base import valid_texts
from jaxprof.systems import base
from jaxprof.trainers import engagement_rm

ENTROPY_WEIGHT = "entropy_weight"  # the RL rows' column grpo.prompt_weight may name
ENTROPY_FLOOR = 0.1  # the weight of a member whose held-out actions are all alike
REWARD_EVAL_FRACTION = 1 / 6  # training members only testing the reward model (64 of 384)
K = 10


class System(base.System):
  """Member sources in, one member text out; the oracle's engagement probabilities are truth."""

  rl_split, eval_split = "train", "test"
  columns = ("future_jds", "future_actions")

  def __init__(self, config):
    super().__init__(config)
    self._gains: dict[int, np.ndarray] = {}  # member id -> [P] oracle probabilities

  def prompt(self, row):
    return templates.member_prompt(row, include_skipped=self.config.data.include_skipped)

  def sources_text(self, row: base.Row) -> str:
    """The "raw sources" representation: what the prompt shows, as one text."""
    return templates.member_sources_text(row, include_skipped=self.config.data.include_skipped)

  def rl_rows(self, part):
    rows = super().rl_rows(part)
    for r in rows:  # how much a member's held-out actions say about order (grpo.prompt_weight)
      actions = np.asarray([r["future_actions"]], np.int32)
      r[ENTROPY_WEIGHT] = float(engagement.engagement_entropy_weight(
          actions, np.ones(actions.shape, bool), ENTROPY_FLOOR)[0])
    return rows

  # ------------------------------------------------------------------ the engagement reward model

  def reward_rows(self, part):
    """Training members split by member: "train" fits the engagement model, "eval" (the last
    REWARD_EVAL_FRACTION of them) measures it. Test members are never seen."""
    rows = self.rows(self.rl_split)
    cut = int(round(len(rows) * (1.0 - REWARD_EVAL_FRACTION)))
    return rows[:cut] if part == "train" else rows[cut:]

  def label_items(self, rows, texts):
    """One example per held-out posting of each row: its text (the raw sources when `texts` is
    None), the posting, the member's action on it, the member id as the group."""
    texts = [self.sources_text(r) for r in rows] if texts is None else texts
    return [{"text": t, "item": jd, "label": int(a), "group": int(r["member_id"])}
            for r, t in zip(rows, texts, strict=True)
            for jd, a in zip(r["future_jds"], r["future_actions"], strict=True)]

  def resources(self, inputs):
    if "reward_model" not in inputs:
      raise config_lib.ConfigError(
          "hifi's engagement reward reads the reward_model stage's model: list 'reward_model' "
          "(backbone='engagement') before the RL stage in config.stages")
    return {"engagement_model": _load_model(inputs["reward_model"]["reward_model_dir"])}

  # ------------------------------------------------------------------ hidden truth

  @functools.cached_property
  def market(self) -> job_market.JobMarket:
    """The members' market: every posting and the oracle (the data set's hidden truth)."""
    sizes = member_sources.MemberSizes(**dict(self.config.data.sizes))
    return member_sources.build_members(self.config.data.seed, sizes)

  @functools.cached_property
  def posting_texts(self) -> list[str]:
    return [p.jd for p in self.market.postings]

  @functools.cached_property
  def independent_encoder(self) -> TextEncoder:
    """An encoder no reward uses (paraphrase-MiniLM-L3-v2), for evaluation only."""
    return TextEncoder.packaged_paraphrase_minilm()

  def oracle_gains(self, rows: Sequence[base.Row]) -> np.ndarray:
    """[N, P] the oracle's engagement probability of each row's member for every posting."""
    for r in rows:
      mid = int(r["member_id"])
      if mid not in self._gains:
        seeker = job_market.seeker_from_record(r)
        self._gains[mid] = np.array([self.market.oracle.match_probability(seeker, p)
                                     for p in self.market.postings])
    return np.stack([self._gains[int(r["member_id"])] for r in rows])

  def ranking_truth(self, rows: Sequence[base.Row], scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per row, from scores [N, P] of every posting for each row's member:
    "future_ndcg": NDCG of the member's held-out postings, gains their hidden probabilities;
    "retrieval_ndcg@10": NDCG@10 over the whole catalogue, gains the oracle's probabilities."""
    future = [np.asarray(r["future_posting_ids"], np.int64) for r in rows]
    own = np.stack([s[f] for s, f in zip(scores, future, strict=True)])
    probs = np.stack([np.asarray(r["future_probs"], np.float64) for r in rows])
    return {"future_ndcg": metrics.graded_ndcg(own, probs),
            f"retrieval_ndcg@{K}": metrics.graded_ndcg(scores, self.oracle_gains(rows), K)}

  def truth_rows(self, rows, texts):
    """Cosine retrieval by an encoder no reward uses: each text against every posting."""
    clean, ok = valid_texts(texts)
    enc = self.independent_encoder
    scores = enc.embed(clean) @ enc.embed_catalog(self.posting_texts).T
    return {f"truth/{m}": np.where(ok, v, np.nan)
            for m, v in self.ranking_truth(rows, scores).items()}


@functools.lru_cache(maxsize=2)
def _load_model(directory: str) -> engagement.EngagementModel:
  return engagement_rm.load(directory)


# ---------------------------------------------------------------------- the headline evaluator


def downstream_truth(system: System, rows: Sequence[base.Row], texts: Sequence[str],
                     encoder: TextEncoder, folds: int, seed: int) -> dict[str, np.ndarray]:
  """`ranking_truth` of an engagement predictor trained on this kind of text: an MLP on frozen
  `encoder` features fitted on the logged actions of the other folds' members (cross-fitting),
  each member's postings scored by P(engaged) = 1 - P(skip)."""
  order = np.random.default_rng(seed).permutation(len(rows))
  fold_of = np.empty(len(rows), np.int64)
  fold_of[order] = np.arange(len(rows)) % folds
  catalog = encoder.embed_catalog(system.posting_texts)
  member = encoder.embed(list(texts))
  scores = np.zeros((len(rows), len(catalog)))
  for k in range(folds):
    train = np.flatnonzero(fold_of != k)
    ex = system.label_items([rows[i] for i in train], [texts[i] for i in train])
    m, p = engagement_rm.embed_examples(encoder, ex)
    mlp, _ = engagement.train_engagement_head(
        m, p, [e["label"] for e in ex], engagement.EngagementConfig(seed=seed + k),
        [e["group"] for e in ex])
    test = np.flatnonzero(fold_of == k)
    scores[test] = np.asarray(engagement.p_engaged(mlp, member[test][:, None], catalog[None]))
  return system.ranking_truth(rows, scores)


@evaluation.register("member_engagement")
def member_engagement(ev: evaluation.Context, folds: int = 2, show: int = 4
                      ) -> evaluation.Result:
  """The paper's comparison on config.eval.num_examples held-out members: each policy's
  representation (one per member, at config.eval.temperature) and the raw concatenated sources,
  read by a downstream engagement predictor trained on that kind of text (`downstream/`,
  cross-fitted over `folds` folds of members, MiniLM features) and by cosine retrieval with an
  encoder no reward uses (`text/`). Truth: the hidden probabilities (future postings, and the
  whole catalogue for NDCG@10). Means with bootstrap 95% intervals over members; "rl vs X" rows:
  paired-bootstrap differences."""
  system = ev.system
  rows = system.rl_rows("eval")
  texts = {"raw sources": [system.sources_text(r) for r in rows]}
  texts |= {name: [g[0] for g in ev.generate(name, [system.prompt(r) for r in rows])]
            for name in ev.policies}
  encoder = TextEncoder.packaged_minilm()
  per_row = {}
  for name, t in texts.items():
    began = time.perf_counter()
    clean, ok = valid_texts(t)
    down = downstream_truth(system, rows, clean, encoder, folds, ev.config.seed)
    text = system.truth_rows(rows, t)
    per_row[name] = {**{f"downstream/{m}": np.where(ok, v, np.nan) for m, v in down.items()},
                     **{f"text/{m.removeprefix('truth/')}": v for m, v in text.items()}}
    logging.info("member_engagement: %s scored in %.0f s", name, time.perf_counter() - began)
  table = {name: {k: v for m, x in values.items() for k, v in held_out.with_ci(m, x).items()}
           for name, values in per_row.items()}
  if "rl" in per_row:
    for other in (n for n in per_row if n != "rl"):
      table[f"rl vs {other}"] = _paired(per_row["rl"], per_row[other])
  shown = [{"sources": texts["raw sources"][i], **{n: texts[n][i] for n in ev.policies}}
           for i in range(min(show, len(rows)))]
  return evaluation.Result(table, shown)


def _paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
  out = {}
  for m in a:
    if not (np.isfinite(a[m]) & np.isfinite(b[m])).any():
      continue
    diff, low, high = metrics.paired_bootstrap_ci(a[m], b[m])
    out |= {f"diff/{m}": diff, f"diff/{m}/ci_low": low, f"diff/{m}/ci_high": high}
  return out
