"""Synthetic job market: determinism, label rate, oracle AUC, cold start, text oracle."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxprof.data import job_market, occupations

SMALL = job_market.Sizes(num_seekers=150, num_cold_seekers=40, num_postings=300, sft=60,
                         reward_model=60, rl=30, rec_train=200, rec_val=50, rec_test=300,
                         cold_start_test=100, candidates=8)


@pytest.fixture(scope="module")
def market():
  return job_market.build_market(0, SMALL)


@pytest.fixture(scope="module")
def splits(market):
  return {s: job_market.split_rows(market, s) for s in job_market.SPLITS}


def test_catalog():
  c = occupations.load_catalog()
  assert c.num_occupations == 1016
  assert c.codes[0] == "11-1011.00" and c.singular_titles[0] == "Chief Executive"
  assert c.occ_skills.shape == (1016, 25)
  assert c.soc_distance(0, 0) == 0 and c.soc_distance(0, 1) == 1  # 11-1011.00 vs 11-1011.03
  assert c.soc_distance(0, c.codes.index("15-1252.00")) == 5


def test_sizes_and_determinism(market, splits):
  for s in job_market.SPLITS:
    assert len(splits[s]) == getattr(SMALL, s)
  job_market.build_market.cache_clear()
  again = job_market.split_rows(job_market.build_market(0, SMALL), "rec_test")
  assert again == splits["rec_test"]
  other = job_market.split_rows(job_market.build_market(1, SMALL), "rec_test")
  assert [r["cv"] for r in other] != [r["cv"] for r in splits["rec_test"]]


def test_labels_and_oracle_auc(splits):
  rows = splits["rec_train"] + splits["rec_test"]
  labels = np.array([r["label"] for r in rows])
  probs = np.array([r["prob"] for r in rows])
  assert 0.1 < labels.mean() < 0.6
  auc = roc_auc_score(labels, probs)
  print(f"oracle AUC on rec_train+rec_test: {auc:.3f}, label rate {labels.mean():.3f}")
  assert auc > 0.8
  rm = splits["reward_model"]
  assert np.mean([r["prob"] > r["rejected_prob"] for r in rm]) > 0.75
  assert all(r["label"] == 1 and r["jd"] for r in splits["sft"])


def test_each_stage_sees_its_own_seekers(splits):
  """As in GIRL: SFT, reward model, RL, the recommender and the cold-start test draw on disjoint
  seekers; only the recommender's train / validation / test share theirs (warm start)."""
  seekers = {s: {r["seeker_id"] for r in rows} for s, rows in splits.items()}
  groups = {"sft": seekers["sft"], "reward_model": seekers["reward_model"], "rl": seekers["rl"],
            "rec": seekers["rec_train"] | seekers["rec_val"] | seekers["rec_test"],
            "cold": seekers["cold_start_test"]}
  for a in groups:
    for b in groups:
      if a < b:
        assert groups[a] and not groups[a] & groups[b], (a, b, sorted(groups[a] & groups[b])[:5])
  assert len(seekers["rl"]) == SMALL.rl  # one row per RL seeker
  assert seekers["rec_test"] & seekers["rec_train"]  # warm start: test seekers were trained on


def test_too_few_seekers_for_the_pools_is_one_clear_error():
  with pytest.raises(ValueError, match="Sizes.rl=149 leaves too few"):
    job_market.Sizes(num_seekers=150, rl=149)


def test_cv_templates_vary(market):
  openings = {s.cv.split()[0] for s in market.seekers}
  assert len(openings) >= 4


def test_text_oracle(market, splits):
  rows = splits["rec_test"]
  seekers = [job_market.seeker_from_record(r) for r in rows]
  scores = market.oracle.score_texts(seekers, [r["jd"] for r in rows])
  probs = np.array([r["prob"] for r in rows])
  assert np.corrcoef(scores, probs)[0, 1] > 0.8
  seeker = seekers[0]
  target = next(p for p in market.postings if p.occupation == seeker.occupation) \
      if any(p.occupation == seeker.occupation for p in market.postings) else None
  unrelated = market.oracle.score_text(seeker, "Bake bread and pastries in a small bakery.")
  if target is not None:
    assert market.oracle.score_text(seeker, target.jd) > unrelated
  assert 0.0 < unrelated < 1.0


def test_occupation_without_description_names_the_line(tmp_path):
  import pytest

  from jaxprof import assets
  from jaxprof.data import occupations

  source = assets.asset_path(assets.ONET, "src_data/Occupation Data.txt")
  lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
  code, title, _ = lines[5].split("\t")
  lines[5] = f"{code}\t{title}\t"
  broken = tmp_path / "Occupation Data.txt"
  broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"Occupation Data.txt:6:"):
    occupations.read_onet(broken)
