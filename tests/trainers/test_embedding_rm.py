"""The embedding reward model (reward_model.backbone="embedding"): from frozen sentence features
it learns which directions of prompt-response agreement matter, and scores the same after loading.
"""

import numpy as np
import pytest

from configs import girl
from jaxprof import config as config_lib
from jaxprof import parallel
from jaxprof.trainers import embedding_rm, ppo, reward_model

D, SIGNAL, TOPICS = 64, 4, 6


class FakeEncoder:
  """Unit vectors where a prompt and its matching responses share a topic code in the first
  SIGNAL dimensions and everything else is loud noise, so the plain cosine is unreliable and a
  head that weighs the signal dimensions separates the pairs."""

  def __init__(self):
    rng = np.random.default_rng(0)
    self.codes = rng.normal(size=(TOPICS, SIGNAL))
    self.rng, self.cache = rng, {}

  def embed(self, texts):
    out = []
    for t in texts:
      if t not in self.cache:
        topic = int(t.split("topic ")[1].split()[0])
        v = np.concatenate([self.codes[topic], 0.5 * self.rng.normal(size=D - SIGNAL)])
        self.cache[t] = v / np.linalg.norm(v)
      out.append(self.cache[t])
    return np.asarray(out, np.float32)


def pairs(n: int, offset: int = 0) -> list[dict]:
  return [{"prompt": f"CV {i} about topic {i % TOPICS} here",
           "chosen": f"JD {i} on topic {i % TOPICS} here",
           "rejected": f"JD {i} on topic {(i + 1 + i // TOPICS) % TOPICS} here"}
          for i in range(offset, offset + n)]


@pytest.fixture
def fake_encoder(monkeypatch):
  enc = FakeEncoder()
  monkeypatch.setattr(embedding_rm.TextEncoder, "packaged_minilm", staticmethod(lambda: enc))
  return enc


def accuracy(enc, head, ps):
  prompts = [p["prompt"] for p in ps]
  c = embedding_rm.features(enc, prompts, [p["chosen"] for p in ps])
  r = embedding_rm.features(enc, prompts, [p["rejected"] for p in ps])
  return float(np.mean(embedding_rm.score(head, c) > embedding_rm.score(head, r)))


def test_learns_which_agreement_matters_and_scores_the_same_after_loading(tmp_path,
                                                                          fake_encoder):
  config = girl.get_config("tiny")
  rm = config.reward_model
  rm.backbone, rm.batch_size = "embedding", 16
  rm.optim.total_steps, rm.optim.lr, rm.optim.warmup = 150, 0.1, 5
  config.checkpoint.every = 1000
  held = pairs(120, offset=400)
  cosine = accuracy(fake_encoder, {"kernel": np.ones(D), "bias": 0.0}, held)  # the start
  out = embedding_rm.train(config, tmp_path, pairs(400), {"eval_pairwise_accuracy": held},
                           parallel.make_mesh(data=1))
  assert out["eval_pairwise_accuracy_init"] == pytest.approx(cosine)
  print(f"held-out accuracy: cosine {cosine:.3f}, trained {out['eval_pairwise_accuracy']}")
  assert cosine < 0.8 and out["eval_pairwise_accuracy"] > cosine + 0.1, out
  model = reward_model.load(out["reward_model_dir"], config.model)
  assert isinstance(model, embedding_rm.EmbeddingRewardModel)
  prompts = [p["prompt"] for p in held]
  won = model.score(prompts, [p["chosen"] for p in held]) > model.score(
      prompts, [p["rejected"] for p in held])
  assert np.mean(won) == pytest.approx(out["eval_pairwise_accuracy"])
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 150
  # It scores whole texts: a per-token critic cannot start from it.
  config.ppo.critic_init = "reward_model"
  with pytest.raises(config_lib.ConfigError, match="critic_init='policy:N'"):
    ppo.build_critic(config, {"reward_model": out}, "tiny")


def test_distinct_texts_are_embedded_once():
  class Counting:
    calls: list = []

    def embed(self, texts):
      self.calls.append(list(texts))
      return np.eye(4, dtype=np.float32)[[ord(t) % 4 for t in texts]]

  enc = Counting()
  got = embedding_rm.embed_distinct(enc, ["a", "b", "a", "a", "c"])
  assert enc.calls == [["a", "b", "c"]]
  np.testing.assert_array_equal(got[0], got[2])
