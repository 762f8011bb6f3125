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
def test_langptune_trains_a_recommender_for_its_reward_only_when_asked():
  assert "text_recommender" not in systems.get(langptune.get_config("tiny")).resources({})
  config = langptune.get_config("tiny,recommender=trained")
  system = systems.get(config)
  recommender = system.resources({})["text_recommender"]
  epochs = config.eval.evaluators.recommenders.trained_epochs
  assert recommender is system.trained_recommender(epochs, config.seed)  # shared with the eval
  assert float(abs(recommender["A"]).sum()) > 0  # trained, not the frozen cosine


@pytest.mark.slow
def test_hifi_truth_ranks_postings_by_the_hidden_probabilities():
  system = systems.get(hifi.get_config("tiny"))
  rows = system.rl_rows("eval")
  gains = system.oracle_gains(rows)  # [N, every posting]
  for r, g in zip(rows, gains, strict=True):  # the rows' held-out probabilities are the oracle's
    np.testing.assert_allclose(g[r["future_posting_ids"]], r["future_probs"], rtol=1e-6)  # f32
  perfect = system.ranking_truth(rows, gains)
  np.testing.assert_allclose(perfect["future_ndcg"], 1.0)
  np.testing.assert_allclose(perfect["retrieval_ndcg@10"], 1.0)
  reverse = system.ranking_truth(rows, -gains)
  assert (reverse["retrieval_ndcg@10"] < 0.9).all() and (reverse["future_ndcg"] < 1).all()
  value = system.truth(rows, [system.sources_text(r) for r in rows])
  assert all(0 < v <= 1 for v in value.values()), value
  assert all(math.isnan(v) for v in system.truth(rows, [" "] * len(rows)).values())
  assert all(0.1 <= r["entropy_weight"] <= 1 for r in rows)


@pytest.mark.slow
def test_hifi_reward_model_learns_from_other_members_one_example_per_posting():
  system = systems.get(hifi.get_config("tiny"))
  train, held = system.reward_rows("train"), system.reward_rows("eval")
  ids = lambda rows: {r["member_id"] for r in rows}
  assert ids(train) and ids(held) and not ids(train) & ids(held)
  assert not (ids(train) | ids(held)) & ids(system.rl_rows("eval"))  # test members unseen
  ex = system.label_items(held[:2], ["summary a", "summary b"])
  assert len(ex) == len(held[0]["future_jds"]) + len(held[1]["future_jds"])
  assert (ex[0]["text"], ex[0]["item"], ex[0]["label"]) == (
      "summary a", held[0]["future_jds"][0], held[0]["future_actions"][0])
  assert system.label_items(held[:1], None)[0]["text"] == system.sources_text(held[0])
  assert "skipped" not in system.sources_text(held[0])  # what the prompt shows


def test_langptune_metrics_from_ranks():
  out = langptune_system.ranking_metrics(np.array([1.0, 3.0, 10.0, 11.0, np.nan]))
  np.testing.assert_allclose(out["recall@10"][:4], [1, 1, 1, 0])
  np.testing.assert_allclose(out["ndcg@10"][:4], [1, 0.5, 1 / np.log2(11), 0])
  np.testing.assert_allclose(out["mrr"][:4], [1, 1 / 3, 0.1, 1 / 11])
  assert all(np.isnan(v[4]) for v in out.values())  # an empty text stays undefined
