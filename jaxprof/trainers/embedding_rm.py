"""A reward model on frozen sentence embeddings: r(prompt, response) = w . (e(p) * e(r)) + b.

`reward_model.backbone = "embedding"`. The encoder (the packaged MiniLM) stays frozen, so every
distinct prompt and response is embedded once and the head trains on cached features: thousands
of labelled pairs cost seconds per epoch on a CPU, where a transformer backbone pays a forward
and a backward pass per pair. The elementwise product of the two unit embeddings is the cosine's
terms, reweighted: the head starts as the plain cosine (kernel 1, bias 0; reward_model.
head_init_scale is not used) and learns which directions of agreement matter. It scores whole texts,
so it cannot initialise a per-token critic (use `ppo.critic_init="policy:N"`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxprof import parallel
from jaxprof.models import heads
from jaxprof.models.encoder import TextEncoder
from jaxprof.rl import losses
from jaxprof.trainers import artifacts, common, loop, policy

BACKBONE = "embedding"


def embed_distinct(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
  """[len(texts), D] unit embeddings, each distinct text encoded once."""
  distinct = list(dict.fromkeys(texts))
  emb = encoder.embed(distinct)
  where = {t: i for i, t in enumerate(distinct)}
  return emb[[where[t] for t in texts]]


def features(encoder: TextEncoder, prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
  """[N, D] e(prompt) * e(response); prompts may be chat messages (their plain text is read)."""
  p = embed_distinct(encoder, [policy.plain_text(x) for x in prompts])
  return p * embed_distinct(encoder, list(responses))


def score(head: Mapping, feats: jax.Array) -> jax.Array:
  """[N] scores of [N, D] features."""
  return feats @ head["kernel"] + head["bias"]


def pair_loss(rm_config, params, frozen, batch, rng):
  del frozen, rng
  b = batch["chosen"].shape[0]
  loss, m = losses.pairwise_reward_loss(
      score(params["head"], batch["chosen"]), score(params["head"], batch["rejected"]),
      margin=rm_config.margin, center_coef=rm_config.center_coef)
  return loss * b, jnp.asarray(b, jnp.float32), m


def train(config, stage_dir: epath.Path, pairs: Sequence[Mapping[str, str]],
          eval_pairs: Mapping[str, Sequence[Mapping[str, str]]], mesh) -> dict:
  """Embeds the pairs once, trains the head (config.reward_model's optimizer, steps and batch
  size), reports held-out pairwise accuracy on each set of `eval_pairs` (output key -> pairs;
  "<key>_init": the plain cosine it started from), and saves the head to stage_dir/model."""
  rm = config.reward_model
  encoder = TextEncoder.packaged_minilm()

  def feats(ps):
    prompts = [p["prompt"] for p in ps]
    return (features(encoder, prompts, [p["chosen"] for p in ps]),
            features(encoder, prompts, [p["rejected"] for p in ps]))

  chosen, rejected = feats(pairs)
  params = {"head": {"kernel": jnp.ones(chosen.shape[1], jnp.float32),
                     "bias": jnp.zeros((), jnp.float32)}}
  tx = common.make_optimizer(rm.optim)
  state, shardings = common.create_state(params, {"head": heads.head_axes()}, tx, mesh,
                                         config.mesh.rules)
  update = common.jit_update(common.make_update(functools.partial(pair_loss, rm), tx,
                                                rm.optim.grad_accum, "rm"),
                             shardings, config.mesh.rules)
  batcher = common.Batcher(len(pairs), rm.batch_size, config.seed)

  def one_step(state, step):
    idx = batcher.indices(step)
    batch = {"chosen": chosen[idx], "rejected": rejected[idx]}
    return update(state, {}, parallel.shard_batch(batch, mesh), jax.random.key(0))

  state, _ = loop.run(stage_dir, state, one_step, rm.optim.total_steps, config,
                      show=("rm/loss", "rm/accuracy"))
  head = jax.device_get(state.params["head"])
  accuracy = {}  # the trained head, and the plain cosine it started from ("..._init")
  for key, ps in eval_pairs.items():
    if ps:
      c, r = feats(ps)
      for suffix, h in (("", head), ("_init", jax.device_get(params["head"]))):
        accuracy[key + suffix] = float(np.mean(np.asarray(score(h, c)) > np.asarray(score(h, r))))
  card = {"backbone": BACKBONE, "encoder": "packaged_minilm", "train_pairs": len(pairs),
          **accuracy}
  out = artifacts.save_pytree(stage_dir / "model", {"head": head}, card)
  return {"reward_model_dir": str(out), **accuracy}


class EmbeddingRewardModel:
  """A saved embedding reward model: `score(prompts, responses) -> [B]` (group_size ignored:
  each distinct prompt is embedded once anyway)."""

  def __init__(self, head: Mapping):
    self.head = jax.tree.map(np.asarray, dict(head))
    self.encoder = TextEncoder.packaged_minilm()

  def score(self, prompts: Sequence, responses: Sequence[str], group_size: int = 1
            ) -> np.ndarray:
    del group_size
    return np.asarray(score(self.head, features(self.encoder, prompts, responses)), np.float32)
