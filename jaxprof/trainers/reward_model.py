"""Reward model: a scalar head trained with a pairwise loss on chosen vs rejected responses.

Backbones: "policy:N" (the first N layers of the policy checkpoint, sharing its tokenizer, so a
critic can later start from it), "encoder" (the packaged MiniLM, fine-tuned, scoring whole texts)
"embedding" (the frozen MiniLM's prompt and response embeddings and a trained head:
`embedding_rm`) or "engagement" (a classifier of logged actions on items, not a pair scorer:
`engagement_rm`). `load` reads any of them back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxprof import buckets, parallel, stages
from jaxprof.models import bert, heads, hf
from jaxprof.models.encoder import TextEncoder
from jaxprof.rewards import registry
from jaxprof.rewards.base import to_rewards, valid_texts
from jaxprof.rl import losses
from jaxprof.tokenizer import Tokenizer
from jaxprof.trainers import (
    artifacts,
    common,
    embedding_rm,
    engagement_rm,
    loop,
    policy,
    sampled_pairs,
)


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Turns (prompt, response) texts into token batches for one backbone kind."""

  cfg: heads.BackboneConfig
  pooling: str
  max_prompt_len: int
  max_response_len: int
  remat: bool | str = False  # for training (layers.remat_policy)

  def tokenize(self, tok, prompts: Sequence, responses: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(self.cfg, bert.BertConfig):  # response first: truncation drops prompt tail
      return tok.tokenize([f"{r} [SEP] {policy.plain_text(p)}"
                           for p, r in zip(prompts, responses, strict=True)])
    (p_ids, p_mask), (r_ids, r_mask) = self.tokenize_parts(tok, prompts, responses)
    return np.concatenate([p_ids, r_ids], 1), np.concatenate([p_mask, r_mask], 1)

  def tokenize_parts(self, tok, prompts: Sequence, responses: Sequence[str]):
    """((prompt ids, mask) [len(prompts), P] left-padded, (response ids, mask) [B, T]
    right-padded), for a causal backbone: `tokenize` is their concatenation."""
    prompts = [policy.format_prompt(tok, p) for p in prompts]
    return (policy.encode_prompts(tok, prompts, self.max_prompt_len),
            policy.encode_targets(tok, list(responses), self.max_response_len))

  @property
  def shares_prompts(self) -> bool:
    """Whether a prompt's states can be computed once for many responses (causal, last token)."""
    return not isinstance(self.cfg, bert.BertConfig) and self.pooling == "last"


def build_backbone(backbone: str, policy_dir: str, model_config, seed: int):
  """(cfg, backbone params, tokenizer-like) for "encoder" or "policy:N"."""
  if backbone == "encoder":
    enc = TextEncoder.packaged_minilm()
    return enc.cfg, enc.params, enc
  kind, _, n = backbone.partition(":")
  if kind != "policy" or not n.isdigit():
    raise ValueError(f"reward_model.backbone={backbone!r}; expected 'policy:N', 'encoder', "
                     f"'{embedding_rm.BACKBONE}' or '{engagement_rm.BACKBONE}'")
  cfg, params, tok = policy.load(model_config, policy_dir, seed=seed)
  params, cfg = heads.truncate_layers(params, cfg, int(n))
  return cfg, params, tok


def pair_loss(scorer: Scorer, rm_config, params, frozen, batch, rng):
  del frozen, rng
  score = functools.partial(heads.sequence_scores, params, scorer.cfg, pooling=scorer.pooling,
                            remat=scorer.remat)
  both_ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
  both_mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
  r = score(both_ids, both_mask)
  b = batch["chosen_ids"].shape[0]
  loss, m = losses.pairwise_reward_loss(r[:b], r[b:], margin=rm_config.margin,
                                        center_coef=rm_config.center_coef)
  return loss * b, jnp.asarray(b, jnp.float32), m


def _pair_batch(scorer, tok, pairs, idx) -> dict:
  prompts = [pairs[i]["prompt"] for i in idx]
  c_ids, c_mask = scorer.tokenize(tok, prompts, [pairs[i]["chosen"] for i in idx])
  r_ids, r_mask = scorer.tokenize(tok, prompts, [pairs[i]["rejected"] for i in idx])
  width = max(c_ids.shape[1], r_ids.shape[1])
  pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
  return {"chosen_ids": pad(c_ids), "chosen_mask": pad(c_mask), "rejected_ids": pad(r_ids),
          "rejected_mask": pad(r_mask)}


def run(ctx, stage_dir: epath.Path, inputs) -> dict:
  """The reward_model stage: the system's pairs (plus, with reward_model.sampled, pairs of the
  start policy's own samples: `sampled_pairs`), backbone from the SFT export (or model.path).
  Reports held-out pairwise accuracy on each kind of pair."""
  system, config = ctx.system, ctx.config
  start_dir = policy.start_dir(config, inputs)
  if config.reward_model.backbone == engagement_rm.BACKBONE:  # labelled items, not pairs
    return engagement_rm.run(config, system, start_dir, stage_dir)
  sampled = _sampled_pairs(config, system, start_dir, stage_dir)
  pairs = system.reward_pairs("train") + sampled["train"]
  evals = {accuracy_key(""): system.reward_pairs("eval"),
           accuracy_key("sampled"): sampled["eval"]}
  if config.reward_model.backbone == embedding_rm.BACKBONE:
    out = embedding_rm.train(config, stage_dir, pairs, evals, ctx.mesh)
  else:
    out = train(config, stage_dir, pairs, evals, start_dir, ctx.mesh)
  return {**out, **sampled_pairs.describe(sampled)}


def _sampled_pairs(config, system, start_dir: str, stage_dir: epath.Path) -> dict:
  """sampled_pairs.build, saved to stage_dir/sampled_pairs.json once (a resumed stage reads them
  back instead of sampling again)."""
  if not (config.reward_model.get("sampled") or {}).get("prompts"):
    return {"train": [], "eval": []}
  path = stage_dir / "sampled_pairs.json"
  if path.exists():
    return json.loads(path.read_text())
  pairs = sampled_pairs.build(config, system, policy.start(config, start_dir))
  if jax.process_index() == 0:
    stages.atomic_write_json(path, pairs)
  return pairs


def train(config, stage_dir: epath.Path, pairs: Sequence[Mapping[str, str]],
          eval_pairs: Mapping[str, Sequence[Mapping[str, str]]], policy_dir: str, mesh) -> dict:
  """Trains a scalar-head model on (chosen, rejected) pairs; saves it to stage_dir/model.
  eval_pairs: output key (`accuracy_key`) -> held-out pairs."""
  rm = config.reward_model
  cfg, backbone, tok = build_backbone(rm.backbone, policy_dir, config.model, config.seed)
  scorer = Scorer(cfg, rm.pooling, rm.max_prompt_len, rm.max_response_len, config.model.remat)
  params = {"backbone": backbone,
            "head": heads.init_head(jax.random.key(config.seed + 2), cfg.hidden_size,
                                    scale=rm.head_init_scale)}
  tx = common.make_optimizer(rm.optim)
  state, shardings = common.create_state(params, heads.scored_model_axes(cfg), tx, mesh,
                                         config.mesh.rules)
  loss_fn = functools.partial(pair_loss, scorer, rm)
  update = common.jit_update(common.make_update(loss_fn, tx, rm.optim.grad_accum, "rm"),
                             shardings, config.mesh.rules)
  batcher = common.Batcher(len(pairs), rm.batch_size, config.seed)
  shapes = buckets.ShapeLog("reward_model")

  def one_step(state, step):
    batch = _pair_batch(scorer, tok, pairs, batcher.indices(step))
    shapes(width=batch["chosen_ids"].shape[1])
    state, m = update(state, {}, parallel.shard_batch(batch, mesh), jax.random.key(0))
    real = batch["chosen_mask"].sum() + batch["rejected_mask"].sum()
    return state, {**m, "perf/tokens": real, "perf/shapes": shapes.count}

  state, _ = loop.run(stage_dir, state, one_step, rm.optim.total_steps, config,
                      show=("rm/loss", "rm/accuracy"))
  accuracy = {key: pairwise_accuracy(scorer, state.params, tok, ps, rm.batch_size, mesh)
              for key, ps in eval_pairs.items() if ps}
  card = {"backbone": rm.backbone, "policy_dir": policy_dir, "pooling": rm.pooling,
          "max_prompt_len": rm.max_prompt_len, "max_response_len": rm.max_response_len,
          "config": hf.config_to_hf(cfg) if not isinstance(cfg, bert.BertConfig) else "bert",
          **accuracy}
  out = artifacts.save_pytree(stage_dir / "model", jax.device_get(state.params), card)
  return {"reward_model_dir": str(out), **accuracy}


def accuracy_key(eval_set: str) -> str:
  """"eval_pairwise_accuracy" for the system's own held-out pairs (eval set ""), else
  "eval_pairwise_accuracy_<name>"."""
  return "eval_pairwise_accuracy" + (f"_{eval_set}" if eval_set else "")


def pairwise_accuracy(scorer, params, tok, pairs, batch_size, mesh) -> float | None:
  """Fraction of held-out pairs where the chosen response outscores the rejected one."""
  if not pairs:
    return None
  score = jax.jit(functools.partial(heads.sequence_scores, cfg=scorer.cfg,
                                    pooling=scorer.pooling))
  wins = []
  for start in range(0, len(pairs), batch_size):
    idx = list(range(start, min(start + batch_size, len(pairs))))
    n = len(idx)
    idx += [idx[-1]] * (batch_size - n)
    b = _pair_batch(scorer, tok, pairs, idx)
    rc = score(params, tokens=b["chosen_ids"], mask=b["chosen_mask"])
    rr = score(params, tokens=b["rejected_ids"], mask=b["rejected_mask"])
    wins += list(np.asarray(rc > rr)[:n])
  return float(np.mean(wins))


def card_backbone(card: dict, model_config):
  """(backbone config, tokenizer) a saved reward model was trained with; loads no weights."""
  if card["backbone"] == "encoder":
    encoder = TextEncoder.packaged_minilm()
    return encoder.cfg, encoder
  n = int(card["backbone"].split(":")[1])
  if card["policy_dir"] == "tiny":
    cfg, _, tok = policy.load(model_config, "tiny")
  else:
    policy_dir = hf.resolve_model_dir(card["policy_dir"], weights=False)  # gs://: a local copy
    cfg = hf.config_from_hf(hf.read_hf_config(policy_dir))
    tok = Tokenizer.from_dir(policy_dir)
  return dataclasses.replace(cfg, num_layers=n), tok


def load(directory: str | os.PathLike, model_config, batch_size: int = 32):
  """The reward model saved in `directory`, whatever its backbone: `.score(prompts, responses,
  group_size) -> [B]`."""
  params, card = artifacts.load_pytree(directory)
  if card["backbone"] == embedding_rm.BACKBONE:
    return embedding_rm.EmbeddingRewardModel(params["head"])
  if card["backbone"] == engagement_rm.BACKBONE:
    return engagement_rm.load(directory)
  return RewardModel(directory, model_config, batch_size)


class RewardModel:
  """A trained reward model loaded from its directory: `score(prompts, responses) -> [B]`."""

  def __init__(self, directory: str | os.PathLike, model_config, batch_size: int = 32):
    params, card = artifacts.load_pytree(directory)
    cfg, self.tok = card_backbone(card, model_config)
    self.scorer = Scorer(cfg, card["pooling"], card["max_prompt_len"], card["max_response_len"])
    self.params = jax.tree.map(jnp.asarray, params)
    self.batch_size = batch_size
    self._score = jax.jit(functools.partial(heads.sequence_scores, cfg=cfg,
                                            pooling=card["pooling"]))
    self._score_groups = jax.jit(functools.partial(heads.continuation_scores, cfg=cfg),
                                 static_argnames="group_size")

  def score(self, prompts: Sequence[str], responses: Sequence[str],
            group_size: int = 1) -> np.ndarray:
    """[B] float32 scores; batches are padded to batch_size rows so one program serves every call.

    group_size=G > 1 says the rows come in groups of G responses to one prompt (a rollout): a
    causal backbone then reads each prompt once per group (`heads.continuation_scores`), with the
    same scores as G separate passes.
    """
    g = group_size if self.scorer.shares_prompts else 1
    if len(prompts) % g:
      raise ValueError(f"RewardModel.score: {len(prompts)} rows are not whole groups of {g}")
    rows = max(g, self.batch_size // g * g)
    out = []
    for start in range(0, len(prompts), rows):
      p = list(prompts[start:start + rows])
      r = list(responses[start:start + rows])
      n = len(p)
      p, r = p + [p[-1]] * (rows - n), r + [r[-1]] * (rows - n)  # whole groups stay whole
      if g == 1:
        ids, mask = self.scorer.tokenize(self.tok, p, r)
        scores = self._score(self.params, tokens=ids, mask=mask)
      else:
        (p_ids, p_mask), (r_ids, r_mask) = self.scorer.tokenize_parts(self.tok, p[::g], r)
        scores = self._score_groups(self.params, prompt_ids=np.repeat(p_ids, g, 0),
                                    prompt_mask=np.repeat(p_mask, g, 0), ids=r_ids, mask=r_mask,
                                    group_size=g)
      out.append(np.asarray(scores)[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


@registry.register("trained_reward_model")
def as_reward(model: RewardModel, on_invalid: float | None = None):
  """The catalogue reward of a trained reward model: r = model.score(prompt, completion).

  Completions that are empty or not valid text get `on_invalid` (default None: ignored).
  """
  def reward(batch):
    completions, valid = valid_texts(batch.completions)
    scores = model.score(batch.prompts, completions, group_size=batch.group_size)
    return to_rewards(scores, valid, on_invalid)
  return reward
