"""Two-tower matcher (GIRL eqs. 9-15) on synthetic embeddings with a known label rule."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxprof.recsys import metrics
from jaxprof.recsys import two_tower as tt

DIM = 8


def _make(n: int, rng: np.random.Generator, extra: float) -> tt.MatchData:
  """Label logit = c.j + extra * g.j; the hidden preference g leaks only through j' = g + noise."""
  c, j, g = (rng.normal(size=(n, DIM)).astype(np.float32) for _ in range(3))
  logit = 1.5 * ((c * j).sum(1) + extra * (g * j).sum(1)) / np.sqrt(DIM)
  labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
  j_gen = g[:, None, :] + 0.5 * rng.normal(size=(n, 3, DIM)).astype(np.float32)
  return tt.MatchData(c, j, labels, j_gen)


def _plain(data: tt.MatchData) -> tt.MatchData:
  return data._replace(j_gen=None)


@pytest.fixture(scope="module")
def splits():
  rng = np.random.default_rng(0)
  return _make(5000, rng, 1.0), _make(1500, rng, 1.0), _make(1500, rng, 1.0)


CONFIG = tt.MatcherConfig(
    hidden=(64,), proj_dim=16, learning_rate=3e-3, max_epochs=40, patience=5)


@pytest.mark.parametrize("predictor", ["dot", "mlp"])
def test_plain_predictor_learns_dot_product_rule(predictor):
  rng = np.random.default_rng(1)
  train, val, test = (_plain(_make(n, rng, 0.0)) for n in (5000, 1500, 1500))
  params, history = tt.train_matcher(train, val, dataclasses.replace(CONFIG, predictor=predictor))
  test_auc = metrics.auc(test.labels, tt.predict(params, test.c, test.j))
  assert test_auc > 0.7, (predictor, test_auc)
  assert history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("predictor", ["dot", "mlp"])
def test_enhanced_beats_plain_when_generated_jd_is_informative(splits, predictor):
  train, val, test = splits
  config = dataclasses.replace(CONFIG, predictor=predictor)
  plain, _ = tt.train_matcher(_plain(train), _plain(val), config)
  enhanced, _ = tt.train_matcher(train, val, config)
  auc_plain = metrics.auc(test.labels, tt.predict(plain, test.c, test.j))
  auc_enh = metrics.auc(test.labels, tt.predict(enhanced, test.c, test.j, test.j_gen))
  assert auc_enh > auc_plain + 0.03, (predictor, auc_plain, auc_enh)


def test_training_is_seeded_and_early_stops():
  rng = np.random.default_rng(2)
  train, val = (_plain(_make(n, rng, 0.0)) for n in (600, 300))
  config = tt.MatcherConfig(predictor="dot", max_epochs=200, patience=2, batch_size=64)
  p1, h1 = tt.train_matcher(train, val, config)
  p2, h2 = tt.train_matcher(train, val, config)
  assert len(h1) < 200 and h1 == h2
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  best = max(h["val_auc"] for h in h1)
  assert metrics.auc(val.labels, tt.predict(p1, val.c, val.j)) == pytest.approx(best)


@pytest.mark.parametrize("predictor", ["dot", "mlp"])
def test_pooling_and_input_checks(predictor):
  key = jax.random.PRNGKey(0)
  config = tt.MatcherConfig(predictor=predictor, hidden=(16,), proj_dim=4)
  params = tt.init_matcher(key, DIM, config, enhanced=True)
  rng = np.random.default_rng(3)
  c, j = rng.normal(size=(5, DIM)), rng.normal(size=(5, DIM))
  j_gen = rng.normal(size=(5, 4, DIM))
  probs = tt.predict(params, c, j, j_gen)
  assert probs.shape == (5,) and np.all((probs > 0) & (probs < 1))
  # S samples are mean-pooled: passing the pooled [N, D] array gives the same result.
  np.testing.assert_allclose(probs, tt.predict(params, c, j, j_gen.mean(1)), rtol=1e-5)
  with pytest.raises(ValueError, match="trained enhanced"):
    tt.predict(params, c, j)
  plain = tt.init_matcher(key, DIM, config, enhanced=False)
  with pytest.raises(ValueError, match="trained enhanced"):
    tt.predict(plain, c, j, j_gen)


def test_bad_inputs_name_the_field():
  rng = np.random.default_rng(4)
  data = _make(50, rng, 0.0)
  bad = data._replace(j=data.j[:40])
  with pytest.raises(ValueError, match=r"train\.j has 40 rows"):
    tt.train_matcher(bad, data, tt.MatcherConfig())
  with pytest.raises(ValueError, match="predictor"):
    tt.init_matcher(jax.random.PRNGKey(0), DIM, tt.MatcherConfig(predictor="cosine"), False)
