"""Members with heterogeneous sources (job-platform paper), derived from the job market.

Each member is a `job_market.Seeker` (ids from MEMBER_ID_OFFSET, so never a job_market seeker)
with:
* `profile`: a short headline and about text;
* `professional`: career history with years and the skill list;
* `queries`: 2-4 job searches (they reveal the member's intent, as searches do);
* an engagement log of `events` postings (half near the member's occupations, half random), each
  apply / click / skip drawn from the oracle probability p: apply with 0.6 p, click with
  0.4 p + 0.15 (1 - p), skip otherwise; timestamps increase. The last `future` events are held out
  (`future_*`) for the engagement reward and for evaluation; the rest are `past_*`.

Actions are coded APPLY=0, CLICK=1, SKIP=2. `templates.member_prompt(record, include_skipped=False)`
leaves skipped postings out of the prompt. Splits are by member: `train` and `test`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxprof.data import job_market, occupations, oracle

APPLY, CLICK, SKIP = 0, 1, 2
ACTIONS = ("apply", "click", "skip")
MEMBER_ID_OFFSET = 1_000_000
SPLITS = ("train", "test")
_START = 1_700_000_000  # seconds; engagement times are offsets from here


@dataclasses.dataclass(frozen=True)
class MemberSizes:
  num_members: int = 600
  test_members: int = 100
  num_postings: int = 1500
  events: int = 12
  future: int = 4

  def __post_init__(self):
    if not 0 < self.test_members < self.num_members:
      raise ValueError(f"MemberSizes.test_members={self.test_members} must be in "
                       f"(0, num_members={self.num_members})")
    if not 0 < self.future < self.events:
      raise ValueError(f"MemberSizes.future={self.future} must be in (0, events={self.events})")


def posting_title(p: job_market.Posting, catalog: occupations.Catalog) -> str:
  return (f"{oracle.SENIORITY[p.seniority].capitalize()} {catalog.singular_titles[p.occupation]} "
          f"({oracle.LOCATIONS[p.location]})")


def _texts(m: job_market.Seeker, catalog, rng) -> tuple[str, str, list[str]]:
  title = catalog.singular_titles[m.history[0]]
  target = catalog.singular_titles[m.occupation]
  level, city = oracle.SENIORITY[m.seniority], oracle.LOCATIONS[m.location]
  skills = [catalog.skill_labels[s] for s in m.skills]
  profile = (f"{level.capitalize()} {title} | {city}\nAbout: "
             f"{job_market.first_sentence(catalog.descriptions[m.history[0]])}")
  professional = ("Experience: " + "; ".join(catalog.singular_titles[o] for o in m.history)
                  + "\nSkills: " + ", ".join(skills))
  candidates = [f"{target} jobs in {city}", f"{level} {target}", f"{skills[0]} jobs",
                f"remote {target}", f"{title} {city}", f"{skills[-1]} {level}"]
  n = int(rng.integers(2, 5))
  queries = [candidates[i] for i in sorted(rng.choice(len(candidates), n, replace=False))]
  return profile, professional, queries


def _member_row(market: job_market.JobMarket, m: job_market.Seeker, sizes: MemberSizes) -> dict:
  rng = np.random.default_rng([market.seed, 20, m.seeker_id])
  profile, professional, queries = _texts(m, market.catalog, rng)
  posts = [job_market.sample_posting(market, m, rng) for _ in range(sizes.events)]
  probs = np.array([market.oracle.match_probability(m, p) for p in posts])
  u = rng.random(sizes.events)
  actions = np.where(u < 0.6 * probs, APPLY, np.where(u < probs + 0.15 * (1 - probs), CLICK, SKIP))
  times = _START + np.cumsum(rng.integers(3600, 72 * 3600, sizes.events))
  cut = sizes.events - sizes.future
  ids = [p.posting_id for p in posts]
  return {
      **job_market.seeker_fields(m), "member_id": m.seeker_id, "profile": profile,
      "professional": professional, "queries": queries,
      "past_posting_ids": ids[:cut], "past_actions": actions[:cut].tolist(),
      "past_times": times[:cut].tolist(),
      "past_titles": [posting_title(p, market.catalog) for p in posts[:cut]],
      "future_posting_ids": ids[cut:], "future_actions": actions[cut:].tolist(),
      "future_times": times[cut:].tolist(), "future_jds": [p.jd for p in posts[cut:]],
      "future_probs": probs[cut:].tolist()}


def build_members(seed: int, sizes: MemberSizes = MemberSizes()) -> job_market.JobMarket:
  """A market whose seekers are the members (ids MEMBER_ID_OFFSET + i) and its postings."""
  catalog = occupations.load_catalog()
  members = [job_market.make_seeker(seed, MEMBER_ID_OFFSET + i, catalog)
             for i in range(sizes.num_members)]
  postings = [job_market.make_posting(seed, i, catalog) for i in range(sizes.num_postings)]
  market_sizes = job_market.Sizes(num_seekers=sizes.num_members, num_postings=sizes.num_postings,
                                  rl=1)
  return job_market.JobMarket(seed, market_sizes, catalog, members, postings,
                              oracle.Oracle(catalog, seed))


def split_rows(seed: int, split: str, sizes: MemberSizes = MemberSizes()) -> list[dict]:
  """Member records of `train` (the first num_members - test_members) or `test`."""
  if split not in SPLITS:
    raise ValueError(f"unknown member_sources split {split!r}; expected one of {SPLITS}")
  market = build_members(seed, sizes)
  n_train = sizes.num_members - sizes.test_members
  members = market.seekers[:n_train] if split == "train" else market.seekers[n_train:]
  return [_member_row(market, m, sizes) for m in members]
