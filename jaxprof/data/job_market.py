"""A synthetic job market on real O*NET occupation and ESCO skill texts (GIRL-style splits).

No public CV-JD-feedback data exists, so the market is simulated around a hidden recruiter oracle
(`jaxprof.data.oracle`, whose docstring gives the formula):

* Seekers: a hidden target occupation; a career history of 1-4 occupations close to it in the SOC
  tree (same broad / minor / major group, sometimes the target itself); 6-10 skills drawn from the
  target's and the history's linked ESCO skills; a seniority; a city. The CV is rendered from one of
  several templates (prose, bullets, compact), so its form varies.
* Postings: an occupation, 4-7 of its skills, a seniority, a city or remote; the JD text comes from
  templates around the O*NET description.
* Splits (mirroring GIRL Table I): `sft` (CV, matched JD), `reward_model` (CV, chosen JD, rejected
  JD), `rl` (CVs), `rec_train` / `rec_val` / `rec_test` (CV, JD, label, oracle probability), and
  `cold_start_test` (the same, for seekers that appear in no other split). As in the paper, each
  stage sees its own seekers (`seeker_pools`): the generator's SFT, reward-model and RL seekers
  are disjoint from each other and from the recommender's; the recommender's train, validation and
  test rows share one pool (the warm-start setting of Table III; Table IV's cold start is the
  cold pool), so every held-out CV the evaluation generates for is new to the generator.
  Candidate postings are half "near" the seeker (sharing a SOC group with its target or history)
  and half uniform; labels are Bernoulli draws from the oracle. A matched JD is a positively
  labelled candidate.

Everything is a deterministic function of (seed, Sizes): each seeker, posting and split row draws
from its own `numpy` generator keyed by (seed, stream, index).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxprof.data import occupations, oracle, templates

SENIORITY_YEARS = ((0, 2), (3, 6), (7, 12), (12, 20))
_SENIORITY_P = (0.3, 0.35, 0.25, 0.1)
_HISTORY_LEN = ((1, 1), (1, 2), (2, 3), (3, 4))
_STREAMS = {"seeker": 1, "posting": 2, "sft": 3, "reward_model": 4, "rl": 5, "rec_train": 6,
            "rec_val": 7, "rec_test": 8, "cold_start_test": 9}
SPLITS = ("sft", "reward_model", "rl", "rec_train", "rec_val", "rec_test", "cold_start_test")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Entity counts and rows per split (CPU-friendly defaults, a few thousand rows)."""

  num_seekers: int = 1000
  num_cold_seekers: int = 200
  num_postings: int = 1500
  sft: int = 1000
  reward_model: int = 1000
  rl: int = 300
  rec_train: int = 2000
  rec_val: int = 300
  rec_test: int = 600
  cold_start_test: int = 600
  candidates: int = 16  # postings scored per sft / reward_model row

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if getattr(self, f.name) < 1:
        raise ValueError(f"Sizes.{f.name} must be >= 1, got {getattr(self, f.name)}")
    if self.rl > self.num_seekers - 3:
      raise ValueError(f"Sizes.rl={self.rl} leaves too few of Sizes.num_seekers="
                       f"{self.num_seekers} for the sft, reward_model and rec seeker pools; "
                       "raise num_seekers or lower rl")


@dataclasses.dataclass(frozen=True)
class Seeker:
  seeker_id: int
  occupation: int  # hidden target (index into the catalog)
  history: tuple[int, ...]  # past occupations, most recent first
  skills: tuple[int, ...]
  seniority: int  # index into oracle.SENIORITY
  location: int  # index into oracle.LOCATIONS (never remote)
  cv: str = ""


@dataclasses.dataclass(frozen=True)
class Posting:
  posting_id: int
  occupation: int
  skills: tuple[int, ...]
  seniority: int
  location: int
  jd: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class JobMarket:
  """Seekers 0..num_seekers-1 are the main pool; the rest are cold-start seekers."""

  seed: int
  sizes: Sizes
  catalog: occupations.Catalog
  seekers: list[Seeker]
  postings: list[Posting]
  oracle: oracle.Oracle

  @functools.cached_property
  def _groups(self) -> list[dict[int, np.ndarray]]:
    """Per SOC level: group id -> posting indices (for drawing postings near an occupation)."""
    occ = np.array([p.occupation for p in self.postings])
    out = []
    for level in range(occupations.MAX_SOC_DISTANCE):
      ids = self.catalog.occ_levels[occ, level]
      out.append({int(g): np.flatnonzero(ids == g) for g in np.unique(ids)})
    return out


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _STREAMS[stream], index])


def _skill_draw(rng, catalog, occupation: int, n: int) -> list[int]:
  """n distinct linked skills of an occupation, favouring the most similar ones."""
  pool = catalog.occ_skills[occupation]
  p = 1.0 / (np.arange(len(pool)) + 3.0)
  return rng.choice(pool, size=min(n, len(pool)), replace=False, p=p / p.sum()).tolist()


def _related(rng, catalog, occupation: int) -> int:
  """An occupation sharing a SOC group with `occupation` (a tighter group more often)."""
  level = rng.choice([0, 1, 2, 3, 4], p=[0.15, 0.2, 0.3, 0.25, 0.1])
  for lvl in range(max(1, level), occupations.MAX_SOC_DISTANCE):
    peers = np.flatnonzero(catalog.occ_levels[:, lvl] == catalog.occ_levels[occupation, lvl])
    peers = peers[peers != occupation]
    if level > 0 and len(peers):
      return int(rng.choice(peers))
  return occupation


def first_sentence(text: str) -> str:
  end = text.find(". ")
  return text if end < 0 else text[: end + 1]


def make_seeker(seed: int, seeker_id: int, catalog: occupations.Catalog) -> Seeker:
  rng = _rng(seed, "seeker", seeker_id)
  occupation = int(rng.integers(catalog.num_occupations))
  seniority = int(rng.choice(4, p=_SENIORITY_P))
  lo, hi = _HISTORY_LEN[seniority]
  history = [occupation if rng.random() < 0.4 else _related(rng, catalog, occupation)]
  history += [_related(rng, catalog, history[-1]) for _ in range(int(rng.integers(lo, hi + 1)) - 1)]
  n_skills = int(rng.integers(6, 11))
  skills = _skill_draw(rng, catalog, occupation, n_skills - n_skills // 3)
  for extra in _skill_draw(rng, catalog, int(rng.choice(history)), n_skills):
    if len(skills) < n_skills and extra not in skills:
      skills.append(extra)
  seeker = Seeker(seeker_id, occupation, tuple(history), tuple(skills), seniority,
                  int(rng.integers(len(oracle.CITIES))))
  return dataclasses.replace(seeker, cv=templates.render_cv(seeker, catalog, rng))


def make_posting(seed: int, posting_id: int, catalog: occupations.Catalog) -> Posting:
  rng = _rng(seed, "posting", posting_id)
  occupation = int(rng.integers(catalog.num_occupations))
  posting = Posting(posting_id, occupation,
                    tuple(_skill_draw(rng, catalog, occupation, int(rng.integers(4, 8)))),
                    int(rng.choice(4, p=_SENIORITY_P)),
                    oracle.REMOTE if rng.random() < 0.1 else int(rng.integers(len(oracle.CITIES))))
  return dataclasses.replace(posting, jd=templates.render_jd(posting, catalog, rng))


@functools.lru_cache(maxsize=4)
def build_market(seed: int, sizes: Sizes = Sizes()) -> JobMarket:
  """All seekers (main then cold-start) and postings of one market (cached per process)."""
  catalog = occupations.load_catalog()
  n = sizes.num_seekers + sizes.num_cold_seekers
  return JobMarket(seed, sizes, catalog, [make_seeker(seed, i, catalog) for i in range(n)],
                   [make_posting(seed, i, catalog) for i in range(sizes.num_postings)],
                   oracle.Oracle(catalog, seed))


def sample_posting(market: JobMarket, seeker: Seeker, rng: np.random.Generator) -> Posting:
  """Half the time a posting sharing a SOC group with the seeker's target or history."""
  if rng.random() < 0.5:
    anchor = seeker.occupation if rng.random() < 0.7 else int(rng.choice(seeker.history))
    for level in range(int(rng.choice(4, p=[0.3, 0.3, 0.25, 0.15])), 5):
      group = market._groups[level].get(int(market.catalog.occ_levels[anchor, level]))
      if group is not None:
        return market.postings[int(rng.choice(group))]
  return market.postings[int(rng.integers(len(market.postings)))]


def _scored(market, seeker, rng, n):
  posts = [sample_posting(market, seeker, rng) for _ in range(n)]
  probs = np.array([market.oracle.match_probability(seeker, p) for p in posts])
  return posts, probs, rng.random(n) < probs


def seeker_fields(s: Seeker) -> dict:
  return {"seeker_id": s.seeker_id, "cv": s.cv, "occupation": s.occupation,
          "history": list(s.history), "skills": list(s.skills), "seniority": s.seniority,
          "location": s.location}


def seeker_from_record(record: dict) -> Seeker:
  """Rebuilds the `Seeker` of a split row (for `market.oracle.score_text`)."""
  text = record["cv"]
  return Seeker(int(record["seeker_id"]), int(record["occupation"]),
                tuple(int(x) for x in record["history"]), tuple(int(x) for x in record["skills"]),
                int(record["seniority"]), int(record["location"]),
                text.decode() if isinstance(text, bytes) else text)


_EMPTY = {"posting_id": -1, "jd": "", "label": -1, "prob": float("nan"),
          "rejected_posting_id": -1, "rejected_jd": "", "rejected_prob": float("nan")}


def _row(seeker: Seeker, **kw) -> dict:
  return {**seeker_fields(seeker), **_EMPTY, **kw}


POOLS = ("rl", "sft", "reward_model", "rec")


def seeker_pools(market: JobMarket) -> dict[str, list[Seeker]]:
  """Disjoint seekers per stage: `rl` gets Sizes.rl of the main pool (one row each), the rest is
  split evenly into `sft`, `reward_model` and `rec` (rec_train / rec_val / rec_test); `cold` holds
  the cold-start seekers."""
  sizes = market.sizes
  main = market.seekers[: sizes.num_seekers]
  order = np.random.default_rng([market.seed, _STREAMS["rl"]]).permutation(len(main))
  rest = order[sizes.rl:]
  thirds = np.array_split(rest, 3)
  pools = {"rl": order[: sizes.rl], "sft": thirds[0], "reward_model": thirds[1],
           "rec": thirds[2]}
  out = {k: [main[i] for i in sorted(v)] for k, v in pools.items()}
  out["cold"] = list(market.seekers[sizes.num_seekers:])
  return out


def pool_of(split: str) -> str:
  if split == "cold_start_test":
    return "cold"
  return "rec" if split.startswith("rec_") else split


def split_rows(market: JobMarket, split: str) -> list[dict]:
  """Rows of one split. Every row has the same keys; fields a split does not use are -1 / "" / nan.

  Keys: seeker_id, cv, occupation, history, skills, seniority, location (the seeker), posting_id,
  jd, label, prob (the posting; for reward_model the chosen one), rejected_posting_id, rejected_jd,
  rejected_prob (reward_model only).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown job_market split {split!r}; expected one of {SPLITS}")
  sizes, seed = market.sizes, market.seed
  pool = seeker_pools(market)[pool_of(split)]
  if split == "rl":
    return [_row(s) for s in pool]
  rows = []
  for r in range(getattr(sizes, split)):
    rng = _rng(seed, split, r)
    seeker = pool[int(rng.integers(len(pool)))]
    if split in ("sft", "reward_model"):
      posts, probs, labels = _scored(market, seeker, rng, sizes.candidates)
      pos = np.flatnonzero(labels)
      best = int(rng.choice(pos)) if len(pos) else int(np.argmax(probs))
      row = _row(seeker, posting_id=posts[best].posting_id, jd=posts[best].jd, label=1,
                 prob=probs[best])
      if split == "reward_model":
        neg = np.flatnonzero(~labels)
        worst = int(rng.choice(neg)) if len(neg) else int(np.argmin(probs))
        row.update(rejected_posting_id=posts[worst].posting_id, rejected_jd=posts[worst].jd,
                   rejected_prob=probs[worst])
    else:
      posts, probs, labels = _scored(market, seeker, rng, 1)
      row = _row(seeker, posting_id=posts[0].posting_id, jd=posts[0].jd, label=int(labels[0]),
                 prob=probs[0])
    rows.append(row)
  return rows
