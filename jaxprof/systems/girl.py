"""GIRL: Generative Job Recommendations with Large Language Model (Zheng et al.).

CV -> job description, trained SFT -> reward model -> PPO (configs/girl.py) on the job_market data
set, whose hidden recruiter oracle is the truth. Reproduces, on this data: the recruiter match of
base vs SFT vs PPO JDs on CVs no stage trained on, and Table II's pairwise comparison with the
oracle as the judge (the generic `held_out` evaluator's "rl vs X" rows: win / tie / lose and a
paired-bootstrap difference), and Tables III/IV with Fig. 5's mean-pooling of N generated JDs (the
`enhanced_rec` evaluator: a two-tower CV-JD matcher with and without the generated JD's embedding,
AUC and LogLoss on all seekers and on cold-start seekers).
"""

from __future__ import annotations

import functools

import numpy as np
from absl import logging

from jaxprof import evaluation
from jaxprof.data import job_market, templates
from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import metrics, two_tower
from jaxprof.systems import base
from jaxprof.trainers import reward_model


class System(base.System):
  """CVs in, JDs out; the reward model's pairs are matched vs mismatched JDs for one CV."""

  rl_split, eval_split = "rl", "rec_test"
  columns = ("seeker_id", "occupation", "history", "skills", "seniority", "location", "cv")

  def prompt(self, row):
    return templates.cv_to_jd_prompt(row["cv"])

  def sft_examples(self, part):
    rows = _held_out(self.rows("sft"), part)
    return [{"prompt": self.prompt(r), "target": r["jd"]} for r in rows]

  def reward_pairs(self, part):
    rows = _held_out(self.rows("reward_model"), part)
    return [{"prompt": self.prompt(r), "chosen": r["jd"], "rejected": r["rejected_jd"]}
            for r in rows]

  @functools.cached_property
  def market(self) -> job_market.JobMarket:
    data = self.config.data
    return job_market.build_market(data.seed, job_market.Sizes(**dict(data.sizes)))

  def rl_rows(self, part):
    """Training: the RL seekers' CVs. Held out: one row per distinct seeker of rec_test, then of
    cold_start_test (seekers no generator stage saw), config.eval.num_examples of them: CVs, not
    rows, are the unit the policies are compared on."""
    if part == "train":
      return super().rl_rows(part)
    distinct = {}
    for split in ("rec_test", "cold_start_test"):
      for r in self.rows(split):
        distinct.setdefault(r["seeker_id"], r)
    return list(distinct.values())[:self.config.eval.num_examples]

  def reward_rows(self, part):
    """One row per distinct seeker of the reward-model split: the first fifth of them "eval", the
    rest "train"."""
    distinct = list({r["seeker_id"]: r for r in self.rows("reward_model")}.values())
    n_eval = max(len(distinct) // 5, 1)
    return distinct[:n_eval] if part == "eval" else distinct[n_eval:]

  def label_texts(self, rows, texts):
    """The recruiter oracle's match probability (as annotators, GIRL's recruiters label pairs)."""
    return self.truth_rows(rows, texts)["truth/oracle_match"]

  def resources(self, inputs):
    rm_dir = inputs.get("reward_model", {}).get("reward_model_dir")
    if rm_dir is None:
      return {}
    return {"reward_model": reward_model.load(rm_dir, self.config.model)}

  def truth_rows(self, rows, texts):
    """The hidden recruiter oracle's match probability of each CV's seeker with the text."""
    seekers = [job_market.seeker_from_record(r) for r in rows]
    scores = self.market.oracle.score_texts(seekers, list(texts))
    return {"truth/oracle_match": np.asarray(scores, np.float64)}


def _held_out(rows: list, part: str) -> list:
  """The first tenth of a split is held out ("eval"); the rest trains."""
  n_eval = max(len(rows) // 10, 1)
  return rows[n_eval:] if part == "train" else rows[:n_eval]


REC_SPLITS = ("rec_train", "rec_val", "rec_test", "cold_start_test")


def _auc_logloss(params, data: two_tower.MatchData) -> dict[str, float]:
  """AUC and LogLoss with bootstrap 95% intervals over the split's rows."""
  if len(np.unique(data.labels)) < 2:  # a tiny split with one class: AUC is undefined
    return {"auc": float("nan"), "logloss": float("nan")}
  probs = np.asarray(two_tower.predict(params, data.c, data.j, data.j_gen))
  out = {}
  for name, fn in (("auc", metrics.auc), ("logloss", metrics.log_loss)):
    value, low, high = metrics.bootstrap_metric_ci(fn, data.labels, probs)
    out |= {name: value, f"{name}/ci_low": low, f"{name}/ci_high": high}
  return out


def _matchers(data: dict[str, two_tower.MatchData], seed: int) -> dict[str, dict[str, float]]:
  out = {}
  for predictor in ("mlp", "dot"):
    mc = two_tower.MatcherConfig(predictor=predictor, seed=seed)
    params, _ = two_tower.train_matcher(data["rec_train"], data["rec_val"], mc)
    out[predictor] = {f"{s}/{k}": v for s in ("rec_test", "cold_start_test")
                      for k, v in _auc_logloss(params, data[s]).items()}
  return out


@evaluation.register("enhanced_rec")
def enhanced_rec(ev: evaluation.Context, rows: int = 32, samples: tuple[int, ...] = (1, 2, 4),
                 policies: tuple[str, ...] = ()) -> evaluation.Result:
  """Tables III/IV and Fig. 5: does the generated JD help a CV-JD matcher, and with how many?

  Embeds CVs and posting JDs of the rec splits (`rows` of each) with the frozen MiniLM; trains the
  two-tower matcher (MLP and dot) on [c; j] ("plain"); then for each policy generates max(samples)
  JDs once per distinct CV (at the eval temperature, see `Context.rollouts`), and for each N in
  `samples` mean-pools the first N JDs' embeddings and trains on [c; j; j'] (rows
  "<policy>/N<N>/<model>"). AUC and LogLoss come with bootstrap 95% intervals over the test rows.
  `policies`: which of the run's policies generate (default all).
  """
  system = ev.system
  samples = tuple(sorted({int(n) for n in ([samples] if isinstance(samples, int) else samples)}))
  data_rows = {s: system.rows(s, rows) for s in REC_SPLITS}
  encoder = TextEncoder.packaged_minilm()
  plain = {s: two_tower.MatchData(encoder.embed([r["cv"] for r in rs]),
                                  encoder.embed([r["jd"] for r in rs]),
                                  np.asarray([r["label"] for r in rs], np.float32))
           for s, rs in data_rows.items()}
  table = {f"plain/{p}": m for p, m in _matchers(plain, ev.config.seed).items()}
  # Rows repeat seekers: each distinct CV is generated for once per policy, for every N.
  distinct = {r["cv"]: r for rs in data_rows.values() for r in rs}
  where = {cv: i for i, cv in enumerate(distinct)}
  for name in policies or ev.policies:
    if name not in ev.policies:
      raise ValueError(f"config.eval.evaluators.enhanced_rec.policies names {name!r}; this run "
                       f"has {sorted(ev.policies)}")
    logging.info("enhanced rec: %d JDs for each of %d CVs with the %s policy", samples[-1],
                 len(distinct), name)
    jds = ev.generate(name, [system.prompt(r) for r in distinct.values()], samples=samples[-1])
    emb = encoder.embed([t for group in jds for t in group]).reshape(len(distinct), samples[-1],
                                                                     -1)
    for n in samples:
      data = {s: plain[s]._replace(j_gen=emb[[where[r["cv"]] for r in rs], :n])
              for s, rs in data_rows.items()}
      table |= {f"{name}/N{n}/{p}": m for p, m in _matchers(data, ev.config.seed).items()}
  return evaluation.Result(table)
