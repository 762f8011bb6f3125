"""Text templates: CV and job-description rendering, and the chat prompts of each task.

Prompts are lists of chat messages `[{"role": ..., "content": ...}]`, ready for a tokenizer's chat
template:
* `cv_to_jd_prompt(cv)`: GIRL, write the job description that suits a CV.
* `history_profile_prompt(item_texts, user_text)`: LangPTune / BLUE, write a user's taste profile.
* `member_prompt(record, include_skipped=False)`: job-platform paper, one compact representation
  of a member from profile, professional data, searches and past engagements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxprof.data import oracle

_SYSTEM = "You are a helpful assistant for a recruiting and recommendation platform."


def _years(seniority: int, n_jobs: int, rng: np.random.Generator) -> list[int]:
  lo, hi = ((0, 2), (3, 6), (7, 12), (12, 20))[seniority]
  total = max(n_jobs, int(rng.integers(lo, hi + 1)))
  cuts = np.sort(rng.choice(np.arange(1, total), size=n_jobs - 1, replace=False)) if n_jobs > 1 \
      else np.array([], int)
  return np.diff(np.concatenate([[0], cuts, [total]])).astype(int).tolist()


def _duty(description: str) -> str:
  end = description.find(". ")
  first = description if end < 0 else description[: end + 1]
  return first[0].lower() + first[1:]


def render_cv(seeker: Any, catalog: Any, rng: np.random.Generator) -> str:
  """CV text of a `job_market.Seeker` from one of five templates (chosen by `rng`)."""
  titles = [catalog.singular_titles[o] for o in seeker.history]
  duties = [_duty(catalog.descriptions[o]) for o in seeker.history]
  years = _years(seeker.seniority, len(titles), rng)
  skills = [catalog.skill_labels[s] for s in seeker.skills]
  level = oracle.SENIORITY[seeker.seniority]
  city = oracle.LOCATIONS[seeker.location]
  total = sum(years)
  style = int(rng.integers(5))
  if style == 0:
    jobs = "\n".join(f"- {t} ({y} yr): {d}" for t, y, d in zip(titles, years, duties, strict=True))
    return (f"SUMMARY\n{level.capitalize()} professional with {total} years of experience, based "
            f"in {city}.\n\nEXPERIENCE\n{jobs}\n\nSKILLS\n{', '.join(skills)}")
  if style == 1:
    past = "; before that, ".join(f"{t} for {y} years" for t, y in zip(titles[1:], years[1:],
                                                                      strict=True))
    before = f" Before this I worked as {past}." if past else ""
    return (f"I am a {level} {titles[0].lower()} living in {city} with {total} years in the field. "
            f"In my current role I {duties[0]}{before} My strengths include "
            f"{', '.join(skills[:-1])} and {skills[-1]}.")
  if style == 2:
    jobs = " | ".join(f"{t} ({y}y)" for t, y in zip(titles, years, strict=True))
    return (f"Location: {city} | Level: {level} | Experience: {total} years\nRoles: {jobs}\n"
            f"Skills: {'; '.join(skills)}")
  if style == 3:
    jobs = "\n".join(f"### {t}\n{y} years. Responsibilities: {d}"
                     for t, y, d in zip(titles, years, duties, strict=True))
    bullets = "\n".join(f"* {s}" for s in skills)
    return (f"## Profile\n{level.capitalize()}, {city}.\n\n## Work history\n{jobs}\n\n"
            f"## Skills\n{bullets}")
  jobs = ", then ".join(reversed(titles))
  return (f"Career path: {jobs}. {total} years of experience, seniority: {level}. Open to roles "
          f"in or near {city}. Key skills: {', '.join(skills)}. Most recent duties: {duties[0]}")


def render_jd(posting: Any, catalog: Any, rng: np.random.Generator) -> str:
  """Job-description text of a `job_market.Posting` from one of four templates."""
  title = catalog.singular_titles[posting.occupation]
  description = catalog.descriptions[posting.occupation]
  skills = [catalog.skill_labels[s] for s in posting.skills]
  level = oracle.SENIORITY[posting.seniority]
  where = "fully remote" if posting.location == oracle.REMOTE else \
      f"in {oracle.LOCATIONS[posting.location]}"
  style = int(rng.integers(4))
  if style == 0:
    return (f"{level.capitalize()} {title}\nLocation: {where}\n\nAbout the role\n{description}\n\n"
            f"Requirements\n" + "\n".join(f"- {s}" for s in skills))
  if style == 1:
    return (f"We are hiring a {level} {title.lower()} ({where}). {description} The ideal candidate "
            f"can {', '.join(skills[:-1])} and {skills[-1]}.")
  if style == 2:
    return (f"Job title: {title} ({level})\nWhere: {where}\nWhat you will do: {description}\n"
            f"Must have: {'; '.join(skills)}")
  return (f"Open position - {title}, {level} level, {where}.\nResponsibilities: {description}\n"
          f"Skills we look for: {', '.join(skills)}.")


def _chat(user: str, system: str = _SYSTEM) -> list[dict[str, str]]:
  return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def cv_to_jd_prompt(cv: str) -> list[dict[str, str]]:
  """GIRL: generate the job description that best suits the CV."""
  return _chat("Here is a job seeker's CV:\n\n" + cv.strip() + "\n\nWrite the job description "
               "(title, seniority, location, responsibilities, required skills) of the job that "
               "would suit this person best.")


def history_profile_prompt(item_texts: Sequence[str], user_text: str = "",
                           max_items: int = 30, newest_first: bool = False
                           ) -> list[dict[str, str]]:
  """LangPTune / BLUE: a user's taste profile from their last `max_items` items, oldest first
  after the user's description, or (`newest_first`) most recent first, the description after."""
  items = list(item_texts)[-max_items:]
  about = f"About the user: {user_text}.\n" if user_text else ""
  if newest_first:
    listed = "\n".join(f"- {t}" for t in reversed(items))
    head = f"Movies the user watched, most recent first:\n{listed}\n\n{about}"
  else:
    listed = "\n".join(f"- {t}" for t in items)
    head = f"{about}Movies the user watched, oldest first:\n{listed}\n"
  return _chat(f"{head}\nWrite a short profile of this user's movie tastes that would help "
               "recommend the next movie.")


def member_sources_text(record: dict, include_skipped: bool = False) -> str:
  """A `member_sources` record's sources as one text: profile, professional data, recent searches
  and past job activity (oldest first; skipped postings left out unless `include_skipped`). What
  the member prompt shows the policy, and the "raw sources" representation it is compared with."""
  def text(x):
    return x.decode() if isinstance(x, bytes) else str(x)

  actions = [int(a) for a in record["past_actions"]]
  titles = [text(t) for t in record["past_titles"]]
  lines = [f"- {('applied to', 'clicked', 'skipped')[a]}: {t}"
           for a, t in zip(actions, titles, strict=True) if include_skipped or a != 2]
  queries = "\n".join(f"- {text(q)}" for q in record["queries"])
  return (f"Profile:\n{text(record['profile'])}\n\nProfessional data:\n"
          f"{text(record['professional'])}\n\nRecent searches:\n{queries}\n\n"
          "Job activity (oldest first):\n" + "\n".join(lines))


def member_prompt(record: dict, include_skipped: bool = False) -> list[dict[str, str]]:
  """Job-platform paper: one representation from a `member_sources` record.

  The sources (`member_sources_text`), then the request: the sections the format reward looks
  for, and no length instruction (the length is left to the rewards, as in the paper's runs).
  """
  return _chat(member_sources_text(record, include_skipped)
               + "\n\nDescribe this member for matching them with new job postings, in three "
               "sections: Role: (title, seniority, location), Skills:, and Looking for: (the jobs "
               "they want).")
