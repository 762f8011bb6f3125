"""Member sources: held-out engagements are later, skipped postings optional in the prompt."""

import numpy as np

from jaxprof.data import job_market, member_sources, templates

SIZES = member_sources.MemberSizes(num_members=40, test_members=10, num_postings=200)


def test_members():
  rows = member_sources.split_rows(0, "train", SIZES)
  test = member_sources.split_rows(0, "test", SIZES)
  assert len(rows) == 30 and len(test) == 10
  assert not {r["member_id"] for r in rows} & {r["member_id"] for r in test}
  for r in rows:
    assert len(r["future_posting_ids"]) == SIZES.future
    assert max(r["past_times"]) < min(r["future_times"])
    assert r["member_id"] >= member_sources.MEMBER_ID_OFFSET and 2 <= len(r["queries"]) <= 4
  acts = np.concatenate([r["past_actions"] for r in rows])
  assert set(acts.tolist()) == {0, 1, 2}
  assert member_sources.split_rows(0, "test", SIZES) == test
  assert member_sources.split_rows(1, "test", SIZES) != test


def test_skipped_left_out_of_prompt():
  rows = member_sources.split_rows(0, "train", SIZES)
  r = next(r for r in rows if member_sources.SKIP in r["past_actions"])
  short = templates.member_prompt(r)[1]["content"]
  full = templates.member_prompt(r, include_skipped=True)[1]["content"]
  n_skip = r["past_actions"].count(member_sources.SKIP)
  assert "skipped" not in short and full.count("- skipped: ") == n_skip
  assert short.count("\n- applied to: ") + short.count("\n- clicked: ") == \
      len(r["past_actions"]) - n_skip


def test_prompts():
  cv = job_market.build_market(0, job_market.Sizes(num_seekers=5, num_cold_seekers=1,
                                                   num_postings=5, rl=1)).seekers[0].cv
  msgs = templates.cv_to_jd_prompt(cv)
  assert [m["role"] for m in msgs] == ["system", "user"] and cv.strip() in msgs[1]["content"]
  msgs = templates.history_profile_prompt(["A (1995) - Drama", "B (1996) - Comedy"], "a user")
  assert "B (1996) - Comedy" in msgs[1]["content"]
  old = templates.history_profile_prompt(["A", "B", "C"], "a user", max_items=2)[1]["content"]
  assert old.index("About the user") < old.index("- B\n- C\n") and "- A" not in old
  new = templates.history_profile_prompt(["A", "B", "C"], "a user", max_items=2,
                                         newest_first=True)[1]["content"]
  assert new.index("most recent first:\n- C\n- B\n") < new.index("About the user: a user.")
  assert "- A" not in new and new.endswith(old[old.index("Write"):])
