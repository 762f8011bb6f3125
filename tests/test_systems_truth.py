"""Each system's truth on texts whose answer is known: the right text scores above a wrong one."""

import math

import numpy as np
import pytest

from configs import girl, hifi, langptune
from jaxprof import systems
from jaxprof.systems import langptune as langptune_system


@pytest.mark.slow
def test_girl_oracle_prefers_the_seekers_own_jd():
  system = systems.get(girl.get_config("tiny"))
  rows = system.rl_rows("eval")
  own = system.truth(rows, [r["jd"] for r in rows])["truth/oracle_match"]
  other = system.truth(rows, [r["jd"] for r in rows[1:] + rows[:1]])["truth/oracle_match"]
  junk = system.truth(rows, ["Lorem ipsum dolor sit amet."] * len(rows))["truth/oracle_match"]
  assert 0 <= junk < own <= 1 and other < own, (own, other, junk)


@pytest.mark.slow
def test_langptune_ranking_truth_is_high_for_the_held_out_items_own_text():
  system = systems.get(langptune.get_config("tiny"))
  rows = system.rl_rows("eval")
  texts = [system.item_texts[r["target_items"][0]] for r in rows]
  right = system.truth(rows, texts)
  wrong = system.truth(rows, ["A profile about nothing in particular."] * len(rows))
  assert right["truth/recall@10"] == 1.0 and right["truth/ndcg@10"] > 0.6, right
  assert wrong["truth/ndcg@10"] < right["truth/ndcg@10"]


@pytest.mark.slow
def test_hifi_truth_is_finite_and_in_the_rewards_range():
  system = systems.get(hifi.get_config("tiny"))
  rows = system.rl_rows("eval")
  value = system.truth(rows, [f"{r['profile']}\n{r['professional']}" for r in rows])
  v = value["truth/engagement_pointwise"]
  assert math.isfinite(v) and -0.5 <= v <= 1.0
  assert math.isnan(system.truth(rows, [" "] * len(rows))["truth/engagement_pointwise"])


def test_langptune_metrics_from_ranks():
  out = langptune_system.ranking_metrics(np.array([1.0, 3.0, 10.0, 11.0, np.nan]))
  np.testing.assert_allclose(out["recall@10"][:4], [1, 1, 1, 0])
  np.testing.assert_allclose(out["ndcg@10"][:4], [1, 0.5, 1 / np.log2(11), 0])
  np.testing.assert_allclose(out["mrr"][:4], [1, 1 / 3, 0.1, 1 / 11])
  assert all(np.isnan(v[4]) for v in out.values())  # an empty text stays undefined
