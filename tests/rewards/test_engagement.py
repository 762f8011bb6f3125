"""Engagement model (training, scoring), pointwise / listwise rewards, entropy weights."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxprof.models.encoder import TextEncoder
from jaxprof.rewards import (
  ColumnError,
  EngagementConfig,
  EngagementModel,
  RewardBatch,
  engagement_listwise,
  engagement_pointwise,
  train_engagement_head,
)
from jaxprof.rewards.engagement import APPLY, CLICK, SKIP, engagement_entropy_weight
from tests.rewards import tiny_encoder


def synthetic_pairs(n, dim=16, seed=0):
  """Unit vectors; P(engaged) = sigmoid(6 m.p): the signal lives in the m * p features."""
  rng = np.random.default_rng(seed)
  m = rng.normal(size=(n, dim))
  m /= np.linalg.norm(m, axis=1, keepdims=True)
  p = 0.7 * m * rng.choice([-1, 1], size=(n, 1)) + 0.3 * rng.normal(size=(n, dim))
  p /= np.linalg.norm(p, axis=1, keepdims=True)
  prob = 1 / (1 + np.exp(-6 * np.sum(m * p, axis=1)))
  u = rng.random(n)
  labels = np.where(u < 0.6 * prob, APPLY, np.where(u < prob, CLICK, SKIP))
  return m.astype(np.float32), p.astype(np.float32), labels, prob


def test_head_learns_synthetic_signal():
  m, p, y, _ = synthetic_pairs(2000)
  cfg = EngagementConfig(hidden=32, max_epochs=20, patience=4, batch_size=128)
  mlp, stats = train_engagement_head(m, p, y, cfg, groups=np.arange(2000) // 10)
  assert stats["val_auc"] > 0.75 and stats["best_epoch"] >= 0
  mt, pt, yt, _ = synthetic_pairs(1000, seed=1)
  enc = tiny_encoder()
  model = EngagementModel(mlp, enc)
  probs = np.asarray(model._probs(mlp, mt, pt))
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  assert roc_auc_score(yt != SKIP, 1 - probs[:, SKIP]) > 0.75
  # Seeded: the same config gives the same params.
  mlp2, _ = train_engagement_head(m, p, y, cfg, groups=np.arange(2000) // 10)
  np.testing.assert_array_equal(mlp["dense0"]["kernel"], mlp2["dense0"]["kernel"])


def test_head_rejects_bad_labels():
  m, p, y, _ = synthetic_pairs(20)
  with pytest.raises(ValueError, match="label row 3 is 5"):
    train_engagement_head(m, p, np.where(np.arange(20) == 3, 5, y))


def test_entropy_weight_by_hand():
  actions = np.array([[SKIP] * 4, [APPLY, CLICK, SKIP, SKIP], [APPLY, CLICK, SKIP, SKIP]])
  valid = np.array([[True] * 4, [True] * 4, [True, True, True, False]])
  w = engagement_entropy_weight(actions, valid, floor=0.1)
  h = -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)) / np.log(3)
  np.testing.assert_allclose(w, [0.1, 0.1 + 0.9 * h, 1.0])


def oracle_mlp(dim, k=8.0):
  """Hand-built head: logit(apply) = k * (m . p), logit(skip) = 0, click never (gelu ~ identity
  on the shifted unit), so P(engaged) = sigmoid(k m.p)."""
  w0 = np.zeros((3 * dim, 4), np.float32)
  w0[2 * dim:, 0] = 1.0  # sum of m * p = cosine
  b0 = np.array([20.0, 0, 0, 0], np.float32)
  w1 = np.zeros((4, 4), np.float32)
  w1[0, 0] = 1.0
  w2 = np.zeros((4, 3), np.float32)
  w2[0, APPLY] = k
  b2 = np.array([-20.0 * k, -100.0, 0.0], np.float32)
  layer = lambda w, b: {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
  return {"dense0": layer(w0, b0), "dense1": layer(w1, np.zeros(4, np.float32)),
          "dense2": layer(w2, b2)}


POSTS = ["Registered nurse, intensive care unit, night shifts",
         "Senior backend engineer, Go and Kubernetes",
         "Truck driver, long haul, CDL required",
         "Pastry chef for a hotel kitchen"]


def make_batch(completions, posts, actions):
  b = len(completions)
  return RewardBatch(["p"] * b, completions, np.zeros((b, 1), np.int32), np.ones((b, 1), bool),
                     {"future_jds": posts, "future_actions": actions})


@pytest.fixture(scope="module")
def oracle_model():
  enc = tiny_encoder()
  return EngagementModel(oracle_mlp(enc.dim), enc)


def test_rewards_prefer_text_matching_engaged_postings(oracle_model):
  acts = [APPLY, CLICK, SKIP, SKIP]
  texts = [POSTS[0], POSTS[2], "", "caf\ufffd"]  # matches the applied / a skipped posting
  batch = make_batch(texts, [POSTS] * 4, [acts] * 4)
  point = engagement_pointwise(oracle_model)(batch)
  kl = engagement_listwise(oracle_model, metric="kl")(batch)
  ndcg = engagement_listwise(oracle_model, metric="ndcg", entropy_weighting=False)(batch)
  assert point[0] > point[1] and kl[0] > kl[1] and ndcg[0] > ndcg[1]
  assert point[2:] == [None, None] and kl[2:] == [None, None]
  one = make_batch([POSTS[0]], [POSTS], [[APPLY, SKIP, SKIP, SKIP]])
  ndcg_one = engagement_listwise(oracle_model, metric="ndcg", entropy_weighting=False)(one)
  assert ndcg_one == [pytest.approx(1.0)]  # the applied posting scores highest (cosine 1)


def test_rewards_match_numpy_reference(oracle_model):
  acts = [[APPLY, SKIP, CLICK], [SKIP, SKIP, SKIP, SKIP]]
  posts = [POSTS[:3], POSTS]
  texts = ["ICU nurse who also drives trucks", "Backend engineer"]
  batch = make_batch(texts, posts, acts)
  point = engagement_pointwise(oracle_model)(batch)
  kl = engagement_listwise(oracle_model, metric="kl", temperature=0.5, entropy_floor=0.2)(batch)
  u, g = np.array([1.0, 0.5, -0.5]), np.array([2.0, 1.0, 0.0])
  for r in range(2):
    probs = oracle_model.score([texts[r]] * len(posts[r]), posts[r])
    pe = 1 - probs[:, SKIP]
    assert point[r] == pytest.approx(np.mean(u[acts[r]] * pe), abs=1e-5)
    q = g[acts[r]] if g[acts[r]].sum() else np.ones(len(acts[r]))
    q = q / q.sum()
    z = np.log(pe) - np.log1p(-pe)
    log_pi = z / 0.5 - np.log(np.sum(np.exp(z / 0.5)))
    agree = np.sum([qi * (lp - np.log(qi)) for qi, lp in zip(q, log_pi, strict=True) if qi > 0])
    w = engagement_entropy_weight(np.array([acts[r]]), np.ones((1, len(acts[r])), bool), 0.2)[0]
    assert kl[r] == pytest.approx(w * agree, rel=1e-4, abs=1e-5)
  assert engagement_entropy_weight(np.array([acts[1]]), np.ones((1, 4), bool), 0.2)[0] == 0.2


def test_engagement_bad_columns(oracle_model):
  fn = engagement_pointwise(oracle_model)
  with pytest.raises(ColumnError, match="row 1.*one per action"):
    fn(make_batch(["a", "b"], [POSTS[:2], POSTS[:2]], [[APPLY, SKIP], [APPLY]]))
  with pytest.raises(ColumnError, match="'future_actions' row 0"):
    fn(make_batch(["a"], [POSTS[:1]], [[7]]))
  with pytest.raises(ColumnError, match="'future_actions' row 0"):
    fn(make_batch(["a"], [POSTS[:1]], [["apply"]]))
  with pytest.raises(ColumnError, match="row 0: columns 'future_jds' and 'future_actions'"):
    fn(make_batch(["a"], [None], [[0]]))
  with pytest.raises(ColumnError, match="no column 'future_jds'"):
    fn(RewardBatch(["p"], ["a"], np.zeros((1, 1), np.int32), np.ones((1, 1), bool), {}))


# ------------------------------------------------------------------------- real MiniLM (slow)

DOMAINS = {
    "nursing": (["registered nurse", "ICU nurse", "pediatric nurse"],
                ["patient care", "triage", "medication administration", "wound care"]),
    "software": (["backend engineer", "data engineer", "frontend developer"],
                 ["Python", "Kubernetes", "SQL", "React"]),
    "trucking": (["truck driver", "delivery driver", "forklift operator"],
                 ["CDL license", "route planning", "vehicle inspection", "logistics"]),
    "cooking": (["line cook", "pastry chef", "sous chef"],
                ["food safety", "menu planning", "baking", "knife skills"]),
    "finance": (["accountant", "financial analyst", "auditor"],
                ["bookkeeping", "Excel", "tax returns", "forecasting"]),
}


def market(n_members, seed):
  rng = np.random.default_rng(seed)
  names = list(DOMAINS)
  member, posting, labels, member_dom, member_ids = [], [], [], [], []
  for i in range(n_members):
    d = names[i % len(names)]
    roles, skills = DOMAINS[d]
    text = (f"{rng.choice(roles).capitalize()} with {rng.integers(2, 15)} years of experience. "
            f"Skills: {', '.join(rng.choice(skills, 2, replace=False))}.")
    member_dom.append(d)
    for _ in range(8):
      pd = d if rng.random() < 0.5 else rng.choice(names)
      r2, s2 = DOMAINS[pd]
      post = f"Hiring a {rng.choice(r2)} in {rng.choice(['Austin', 'Leeds', 'Lyon'])}: " \
             f"{rng.choice(s2)} required."
      u = rng.random()
      label = ((APPLY if u < 0.6 else CLICK if u < 0.85 else SKIP) if pd == d
               else (CLICK if u < 0.1 else SKIP))
      member.append(text)
      posting.append(post)
      labels.append(label)
      member_ids.append(i)
  return member, posting, np.array(labels), member_dom, member_ids


@pytest.mark.slow
def test_minilm_engagement_model_and_rewards():
  enc = TextEncoder.packaged_minilm()
  member, posting, labels, _, ids = market(100, seed=0)
  mlp, _ = train_engagement_head(enc.embed(member), enc.embed(posting), labels,
                                 EngagementConfig(hidden=64, max_epochs=40, batch_size=64),
                                 groups=ids)
  model = EngagementModel(mlp, enc)
  tm, tp, tl, _, _ = market(30, seed=1)
  probs = model.score(tm, tp)
  assert roc_auc_score(tl != SKIP, 1 - probs[:, SKIP]) > 0.85
  posts = ["Hiring a ICU nurse in Leeds: triage required.",
           "Hiring a pediatric nurse in Austin: wound care required.",
           "Hiring a backend engineer in Lyon: Kubernetes required.",
           "Hiring a line cook in Austin: knife skills required."]
  acts = [APPLY, CLICK, SKIP, SKIP]
  texts = ["Registered nurse with 8 years of experience. Skills: patient care, triage.",
           "Line cook with 3 years of experience. Skills: knife skills, baking."]
  batch = make_batch(texts, [posts] * 2, [acts] * 2)
  point = engagement_pointwise(model)(batch)
  kl = engagement_listwise(model, metric="kl")(batch)
  ndcg = engagement_listwise(model, metric="ndcg")(batch)
  assert point[0] > point[1] and kl[0] > kl[1] and ndcg[0] > ndcg[1]


def test_posting_without_text_is_named():
  import numpy as np
  import pytest

  from jaxprof.rewards import engagement
  from jaxprof.rewards.base import ColumnError, RewardBatch

  reward = engagement.engagement_pointwise(model=None)
  batch = RewardBatch(prompts=["p"], completions=["a member"],
                      completion_ids=np.zeros((1, 2), np.int32),
                      completion_mask=np.ones((1, 2), bool),
                      columns={"future_jds": [["a job", "  "]], "future_actions": [[0, 2]]})
  with pytest.raises(ColumnError, match="row 0: posting 1 has no text"):
    reward(batch)
