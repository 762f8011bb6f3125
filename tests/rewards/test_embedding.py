"""Embedding rewards: contrastive (BLUE), retrieval ranking (LangPTune), next-item supervision.

Fast tests use a random-init tiny BERT: a profile identical to an item's text has cosine 1 with it,
which is enough for hand-checkable ranks. Slow tests repeat the checks with the real MiniLM.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import text_recommender
from jaxprof.rewards import (
  ColumnError,
  RewardBatch,
  contrastive_loss,
  embedding_contrastive,
  next_item_supervision,
  next_item_target,
  retrieval_ranking,
)
from jaxprof.rewards.embedding import sample_negatives, tokenize_bucketed
from tests.rewards import tiny_encoder

GENRES = ["Comedy", "Drama", "Horror", "Sci-Fi", "Romance", "Western", "Animation", "Thriller"]
WORDS = ["river", "night", "king", "city", "ghost", "summer", "star", "island", "war", "dream",
         "heart", "storm", "road", "secret", "fire", "garden"]


def catalogue(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [f"The {' '.join(rng.choice(WORDS, 2, replace=False)).title()} {i} "
          f"({1950 + i % 50}) - {', '.join(rng.choice(GENRES, 2, replace=False))}"
          for i in range(n)]


def make_batch(completions, **columns):
  b = len(completions)
  return RewardBatch([f"user {i}" for i in range(b)], completions, np.zeros((b, 1), np.int32),
                     np.ones((b, 1), bool), columns)


ITEMS = catalogue(40)


def test_tokenize_bucketed_shapes():
  ids, mask, valid = tokenize_bucketed(tiny_encoder(), ["a b c", "", "x " * 40])
  assert ids.shape == (8, 64) and mask.shape == (8, 64)  # B -> 8, 42 tokens -> 64
  assert valid.tolist() == [True, False, True]
  assert mask[3:, 0].all() and not mask[3:, 1:].any()


def test_contrastive_prefers_the_positive_text():
  fn = embedding_contrastive(tiny_encoder(), ITEMS, temperature=0.05, num_negatives=8)
  got = fn(make_batch([ITEMS[3], ITEMS[20], "", "bad \ufffd"], positive_item=[3, 3, 3, 3],
                      history_items=[[1, 2], [1, 2], [], []]))
  assert got[0] > got[1]
  assert got[0] > np.log(1 / 9)  # beats an uninformative profile
  assert got[2] is None and got[3] is None
  assert all(v <= 0 for v in got[:2])


def test_contrastive_matches_numpy_reference_with_given_negatives():
  enc = tiny_encoder()
  fn = embedding_contrastive(enc, ITEMS, temperature=0.1, num_negatives=3,
                             negatives_column="negatives", history_column=None)
  got = fn(make_batch(["a profile about ghosts", ITEMS[7]], positive_item=[5, 7],
                      negatives=[[1, 2, 3], [0, 8, 9]]))
  item = enc.embed(ITEMS)
  prof = enc.embed(["a profile about ghosts", ITEMS[7]])
  for r, cands in enumerate([[5, 1, 2, 3], [7, 0, 8, 9]]):
    logits = item[cands] @ prof[r] / 0.1
    ref = logits[0] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
    assert got[r] == pytest.approx(ref, abs=1e-4)


def test_negatives_exclude_positive_and_history_and_are_seeded():
  exclude = np.arange(10, 30)
  a = sample_negatives(40, 5, exclude, 15, seed=0, key="user 1")
  assert len(set(a)) == 15 and 5 not in a and not set(a) & set(exclude)
  np.testing.assert_array_equal(a, sample_negatives(40, 5, exclude, 15, seed=0, key="user 1"))
  assert not np.array_equal(a, sample_negatives(40, 5, exclude, 15, seed=1, key="user 1"))
  with pytest.raises(ColumnError, match="row 4: only 19 items"):
    sample_negatives(40, 5, exclude, 25, seed=0, key="u", row=4)


def test_weighted_negatives_follow_the_weights():
  exclude = np.arange(10, 30)
  weights = np.zeros(40)
  weights[[0, 1, 2, 3, 5, 12, 33, 34, 35, 36]] = [8, 1, 1, 1, 9, 9, 1, 1, 1, 1]
  draws = [sample_negatives(40, 5, exclude, 4, seed=0, key=f"user {u}", weights=weights)
           for u in range(400)]
  # only allowed items with weight are drawn: 0-3 and 33-36 (5 is the positive, 12 history)
  assert set(np.concatenate(draws)) == {0, 1, 2, 3, 33, 34, 35, 36}
  share = np.mean([0 in d for d in draws])  # weight 8 of 15 among 7 weight-1 competitors
  assert share > 0.85
  few = sample_negatives(40, 5, exclude, 12, seed=0, key="u", weights=weights)
  assert {0, 1, 2, 3, 33, 34, 35, 36} <= set(few) and len(set(few)) == 12
  assert not set(few) & (set(exclude) | {5})
  np.testing.assert_array_equal(few, sample_negatives(40, 5, exclude, 12, seed=0, key="u",
                                                      weights=weights))
  with pytest.raises(ValueError, match="negative_weights"):
    embedding_contrastive(tiny_encoder(), ITEMS, negative_weights=-np.ones(len(ITEMS)))


def test_contrastive_loss_is_minus_mean_reward_and_differentiable():
  enc = tiny_encoder()
  item = jnp.asarray(enc.embed(ITEMS))
  ids, mask = enc.tokenize([ITEMS[0], "something else"])
  pos, neg = item[jnp.array([0, 1])], item[jnp.array([[2, 3], [4, 5]])]
  loss, grads = jax.value_and_grad(contrastive_loss)(enc.params, ids, mask, pos, neg, 0.1,
                                                     cfg=enc.cfg)
  fn = embedding_contrastive(enc, ITEMS, temperature=0.1, num_negatives=2,
                             negatives_column="negatives", history_column=None)
  r = fn(make_batch([ITEMS[0], "something else"], positive_item=[0, 1],
                    negatives=[[2, 3], [4, 5]]))
  assert float(loss) == pytest.approx(-np.mean(r), abs=1e-4)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_retrieval_rank_one_is_one_and_history_is_masked():
  items = ITEMS + [ITEMS[4]]  # item 40 duplicates item 4's text: a tie with the target
  ndcg = retrieval_ranking(tiny_encoder(), items, metric="ndcg", k=10)
  mrr = retrieval_ranking(tiny_encoder(), items, metric="mrr")
  masked = make_batch([ITEMS[4]], target_items=[4], history_items=[[40]])
  unmasked = make_batch([ITEMS[4]], target_items=[4], history_items=[[]])
  assert ndcg(masked) == [pytest.approx(1.0)]
  assert mrr(masked) == [pytest.approx(1.0)]
  assert mrr(unmasked) == [pytest.approx(0.5)]  # the tie counts against the target
  assert ndcg(unmasked) == [pytest.approx(1 / np.log2(3))]


def test_retrieval_matches_numpy_reference():
  enc = tiny_encoder()
  profiles = ["ghost storm drama", ITEMS[11], "war road western night", "x"]
  targets = [[2, 9], [11], [30], [0]]
  hist = [[1, 3], [12, 13, 14], [], [5]]
  got = {m: retrieval_ranking(enc, ITEMS, metric=m, k=5)(
      make_batch(profiles, target_items=targets, history_items=hist))
      for m in ("ndcg", "mrr", "recall", "log_rank")}
  scores = enc.embed(profiles) @ enc.embed(ITEMS).T
  for r in range(4):
    ranks = []
    for t in targets[r]:
      comp = np.ones(len(ITEMS), bool)
      comp[hist[r]] = False
      comp[t] = False
      ranks.append(1 + int(np.sum((scores[r] >= scores[r, t]) & comp)))
    dcg = sum(1 / np.log2(k + 1) for k in ranks if k <= 5)
    idcg = sum(1 / np.log2(i + 2) for i in range(min(len(ranks), 5)))
    assert got["ndcg"][r] == pytest.approx(dcg / idcg, abs=1e-5)
    assert got["mrr"][r] == pytest.approx(1 / min(ranks), abs=1e-5)
    assert got["recall"][r] == pytest.approx(np.mean([k <= 5 for k in ranks]))
    log_rank = np.mean([1 - np.log(k) / np.log(len(ITEMS)) for k in ranks])
    assert got["log_rank"][r] == pytest.approx(log_rank, abs=1e-5)


def test_retrieval_with_a_trained_recommender_ranks_by_its_scores():
  """An untrained recommender (A = 0, b = 0) ranks as the cosine does; one whose item prior
  favours an item ranks that item first for every profile."""
  enc = tiny_encoder()
  profiles = ["ghost storm drama", ITEMS[11], "war road western night"]
  batch = make_batch(profiles, target_items=[[2], [11], [30]], history_items=[[1], [], [3]])
  cosine = retrieval_ranking(enc, ITEMS, metric="log_rank")(batch)
  untrained = text_recommender.init(enc.dim, len(ITEMS))
  same = retrieval_ranking(enc, ITEMS, metric="log_rank", recommender=untrained)(batch)
  np.testing.assert_allclose(same, cosine, atol=1e-6)
  prior = dict(untrained, b=untrained["b"].at[30].set(1e3))
  got = retrieval_ranking(enc, ITEMS, metric="mrr", recommender=prior)(batch)
  assert got[2] == pytest.approx(1.0) and got[0] < 1 and got[1] < 1


def _numpy_ranks(scores: np.ndarray, hist: list[int]) -> np.ndarray:
  """[I] each item's 1-based rank among the items outside `hist` (no ties in these scores)."""
  rank = np.zeros(len(scores), int)
  kept = [i for i in range(len(scores)) if i not in hist]
  for pos, i in enumerate(sorted(kept, key=lambda i: -scores[i])):
    rank[i] = pos + 1
  return rank


@pytest.mark.parametrize("metric", ["log_rank", "mrr", "ndcg"])
def test_relative_retrieval_matches_numpy_reference(metric):
  enc = tiny_encoder()
  profiles = ["ghost storm drama", ITEMS[11], "war road western night"]
  targets, hist = [[2], [11], [30]], [[1, 3], [12, 13, 14], []]
  reference = np.arange(len(ITEMS), dtype=np.float32) % 3  # items 0, 3, 6, ... weigh nothing
  got = retrieval_ranking(enc, ITEMS, metric=metric, k=5, reference=reference)(
      make_batch(profiles, target_items=targets, history_items=hist))
  plain = retrieval_ranking(enc, ITEMS, metric=metric, k=5)(
      make_batch(profiles, target_items=targets, history_items=hist))
  scores = enc.embed(profiles) @ enc.embed(ITEMS).T
  m = {"log_rank": lambda k: 1 - np.log(k) / np.log(len(ITEMS)), "mrr": lambda k: 1 / k,
       "ndcg": lambda k: (k <= 5) / np.log2(k + 1)}[metric]
  for r in range(3):
    w = reference.copy()
    w[hist[r]] = 0
    ranks = _numpy_ranks(scores[r], hist[r])
    expected = plain[r] - sum(w[i] / w.sum() * m(ranks[i]) for i in np.flatnonzero(w))
    assert got[r] == pytest.approx(expected, abs=1e-5)


def test_relative_retrieval_gives_a_user_independent_text_zero_on_average():
  """With the targets' own distribution as the reference, one text for every user earns exactly
  0 on average (no history masked): only what singles out each user's item pays."""
  targets = [[2], [2], [9], [17], [30], [30], [30]]
  reference = np.bincount([t[0] for t in targets], minlength=len(ITEMS)).astype(np.float32)
  fn = retrieval_ranking(tiny_encoder(), ITEMS, metric="log_rank", reference=reference)
  for text in ("a generic profile of a movie lover", ITEMS[30]):
    got = fn(make_batch([text] * len(targets), target_items=targets,
                        history_items=[[]] * len(targets)))
    assert np.mean(got) == pytest.approx(0.0, abs=1e-5)
  with pytest.raises(ValueError, match="reference"):
    retrieval_ranking(tiny_encoder(), ITEMS, reference=np.ones(3))


def test_bad_columns_name_column_and_row():
  fn = retrieval_ranking(tiny_encoder(), ITEMS)
  with pytest.raises(ColumnError, match="no column 'target_items'"):
    fn(make_batch(["a", "b"], history_items=[[], []]))
  with pytest.raises(ColumnError, match="'history_items' has 1 rows"):
    fn(make_batch(["a", "b"], target_items=[1, 2], history_items=[[]]))
  with pytest.raises(ColumnError, match="'target_items' row 1: item index outside"):
    fn(make_batch(["a", "b"], target_items=[1, 99], history_items=[[], []]))
  with pytest.raises(ColumnError, match="'target_items' row 0: no held-out item"):
    fn(make_batch(["a"], target_items=[[]], history_items=[[]]))
  con = embedding_contrastive(tiny_encoder(), ITEMS, num_negatives=4)
  with pytest.raises(ColumnError, match="'positive_item' row 1"):
    con(make_batch(["a", "b"], positive_item=[1, "x"], history_items=[[], []]))
  with pytest.raises(ColumnError, match="'positive_item' row 0: expected one item"):
    con(make_batch(["a"], positive_item=[[1, 2]], history_items=[[]]))


def test_next_item_supervision_by_index_and_by_text():
  enc = tiny_encoder()
  by_index = next_item_supervision(enc, ITEMS)
  got = by_index(make_batch([ITEMS[6], ITEMS[20], " "], positive_item=[6, 6, 6]))
  assert got[0] == pytest.approx(1.0, abs=1e-5) and got[1] < got[0] and got[2] is None
  by_text = next_item_supervision(enc)
  got2 = by_text(make_batch([ITEMS[6], ITEMS[20]], next_item_text=[ITEMS[6], ITEMS[6]]))
  assert got2 == pytest.approx(got[:2], abs=1e-5)
  with pytest.raises(ColumnError, match="'next_item_text' row 1"):
    by_text(make_batch(["a", "b"], next_item_text=["x", ""]))
  assert next_item_target("Toy Story (1995)") == "Next item: Toy Story (1995)"


# ------------------------------------------------------------------------- real MiniLM (slow)


@pytest.fixture(scope="module")
def minilm():
  return TextEncoder.packaged_minilm()


MOVIES = ["Toy Story (1995) - Animation, Children's, Comedy",
          "Heat (1995) - Action, Crime, Thriller",
          "Sense and Sensibility (1995) - Drama, Romance",
          "Alien (1979) - Horror, Sci-Fi, Thriller",
          "Fargo (1996) - Crime, Drama, Thriller",
          "The Good, the Bad and the Ugly (1966) - Western",
          "Babe (1995) - Children's, Comedy, Drama",
          "Apollo 13 (1995) - Action, Drama"] + catalogue(200, seed=1)


@pytest.mark.slow
def test_minilm_profile_repeating_positive_scores_higher(minilm):
  profile = "Loves animated family films like Toy Story: Toy Story (1995), an animated comedy."
  unrelated = "Watches Westerns such as The Good, the Bad and the Ugly (1966)."
  batch = make_batch([profile, unrelated], positive_item=[0, 0], target_items=[0, 0],
                     history_items=[[6], [6]])
  con = embedding_contrastive(minilm, MOVIES, temperature=0.05, num_negatives=16)(batch)
  ret = retrieval_ranking(minilm, MOVIES, metric="ndcg", k=10)(batch)
  nxt = next_item_supervision(minilm, MOVIES)(batch)
  assert con[0] > con[1] and ret[0] > ret[1] and nxt[0] > nxt[1]
  assert ret[0] == pytest.approx(1.0)


def test_precomputed_items_match_texts():
  enc = tiny_encoder()
  batch = make_batch([ITEMS[2], "ghost"], target_items=[2, 3], history_items=[[], [1]])
  a = retrieval_ranking(enc, ITEMS, metric="mrr")(batch)
  b = retrieval_ranking(enc, None, metric="mrr", precomputed_items=enc.embed(ITEMS))(batch)
  assert a == b
  with pytest.raises(ValueError, match=r"expected \[I, 32\]"):
    retrieval_ranking(enc, None, precomputed_items=np.zeros((3, 5)))


def test_registry_resolves_resources():
  from jaxprof.rewards import build_rewards
  comp = build_rewards([("retrieval_ranking", 1.0, {"encoder": "@enc", "item_texts": "@items",
                                                     "metric": "mrr"}),
                        ("length_penalty", 0.0, {"target_tokens": 1})],
                       resources={"enc": tiny_encoder(), "items": ITEMS})
  total, terms = comp.evaluate(make_batch([ITEMS[9], ""], target_items=[9, 9],
                                          history_items=[[], []]))
  assert total == [pytest.approx(1.0), None] and terms["length_penalty"] == [0.0, 0.0]
