"""What each data set means to the trainer: prompts, targets, pairs, reward resources, truth.

A task reads its TFDS build (array_record, built once from the config's seed and sizes) and hands
the stages plain Python rows. Prompts are chat messages; the stage formats them with the policy's
own chat template. `truth` is the task's independent measure of a generated text (the job-market
oracle, held-out ranking), so RL gains can be told apart from reward-model gains.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from jaxprof.data import job_market, loader, movielens, templates
from jaxprof.models.encoder import TextEncoder
from jaxprof.rewards import registry
from jaxprof.trainers import common, grpo, policy, reward_model, rollout

registry.register("trained_reward_model", reward_model.as_reward)

Row = dict[str, Any]


def _rows(config, split: str, limit: int | None = None) -> list[Row]:
  data = config.data
  source = loader.load(data.name, split, data_dir=data.data_dir or None, seed=data.seed,
                       **dict(data.sizes))
  n = len(source) if not limit else min(limit, len(source))
  return [loader.decode(source[i]) for i in range(n)]


class Task:
  """Base task: subclasses say which splits and columns mean what."""

  columns: tuple[str, ...] = ()
  rl_split, eval_split = "train", "test"

  def __init__(self, config):
    self.config = config

  def sft_examples(self, part: str) -> list[Row]:
    raise NotImplementedError(f"data set {self.config.data.name!r} has no SFT examples")

  def reward_pairs(self, part: str) -> list[Row]:
    raise NotImplementedError(f"data set {self.config.data.name!r} has no reward-model pairs")

  def prompt(self, row: Row) -> list[dict[str, str]]:
    raise NotImplementedError

  def resources(self, inputs: Mapping[str, Mapping], stage_dir: pathlib.Path) -> dict:
    return {}

  def truth(self, rows: Sequence[Row], texts: Sequence[str]) -> dict[str, float]:
    return {}

  def rl_rows(self, part: str) -> list[Row]:
    split = self.rl_split if part == "train" else self.eval_split
    limit = None if part == "train" else self.config.eval.num_examples
    return _rows(self.config, split, limit)

  def reward(self, inputs, stage_dir):
    spec = [(term.name, term.weight, dict(term.kwargs), log_name)
            for log_name, term in self.config.rewards.items()]
    return registry.build_rewards(spec, self.resources(inputs, stage_dir))

  def prompt_batches(self, tok, inputs, stage_dir) -> grpo.PromptBatchFn:
    """step -> (prompt ids, mask, reward fn) over the RL rows, deterministic in the step."""
    rl = self.config.rl
    rows = self.rl_rows("train")
    prompts = [policy.format_prompt(tok, self.prompt(r)) for r in rows]
    columns = {k: [r[k] for r in rows] for k in self.columns}
    reward = self.reward(inputs, stage_dir)
    batcher = common.Batcher(len(rows), rl.prompts_per_step, self.config.seed)

    def batch(step: int):
      idx = batcher.indices(step)
      ids, mask = policy.encode_prompts(tok, [prompts[i] for i in idx], rl.max_prompt_len)
      cols = {k: [v[i] for i in idx] for k, v in columns.items()}
      return ids, mask, rollout.text_reward_fn(reward, tok, [prompts[i] for i in idx], cols)

    return batch


class JobMarketTask(Task):
  """GIRL: CV -> job description; the recruiter oracle is the truth."""

  rl_split, eval_split = "rl", "rec_test"
  columns = ("seeker_id", "occupation", "history", "skills", "seniority", "location", "cv")

  def prompt(self, row):
    return templates.cv_to_jd_prompt(row["cv"])

  def sft_examples(self, part):
    rows = _rows(self.config, "sft")
    n_eval = max(len(rows) // 10, 1)
    rows = rows[n_eval:] if part == "train" else rows[:n_eval]
    return [{"prompt": self.prompt(r), "target": r["jd"]} for r in rows]

  def reward_pairs(self, part):
    rows = _rows(self.config, "reward_model")
    n_eval = max(len(rows) // 10, 1)
    rows = rows[n_eval:] if part == "train" else rows[:n_eval]
    return [{"prompt": self.prompt(r), "chosen": r["jd"], "rejected": r["rejected_jd"]}
            for r in rows]

  @functools.cached_property
  def market(self) -> job_market.JobMarket:
    data = self.config.data
    return job_market.build_market(data.seed, job_market.Sizes(**dict(data.sizes)))

  def resources(self, inputs, stage_dir):
    rm_dir = inputs.get("reward_model", {}).get("reward_model_dir")
    if rm_dir is None:
      return {}
    return {"reward_model": reward_model.RewardModel(rm_dir, self.config.model)}

  def truth(self, rows, texts):
    seekers = [job_market.seeker_from_record(r) for r in rows]
    scores = self.market.oracle.score_texts(seekers, list(texts))
    return {"truth/oracle_match": float(np.mean(scores))}


class MovieLensTask(Task):
  """LangPTune / BLUE: item history -> taste profile; held-out ranking is the truth."""

  rl_split, eval_split = "train", "test"
  columns = ("history_items", "target_items", "positive_item", "target_text")

  def prompt(self, row):
    return templates.history_profile_prompt(row["history_text"], row["user_text"],
                                            max_items=self.config.data.max_history)

  def rl_rows(self, part):
    rows = super().rl_rows(part)
    for r in rows:  # reward columns: a list of held-out targets per row
      r["target_items"] = [int(r["target"])]
      r["positive_item"] = int(r["target"])
    return rows

  @functools.cached_property
  def item_texts(self) -> list[str]:
    return movielens.read_ml100k().item_text

  @functools.cached_property
  def encoder(self) -> TextEncoder:
    return TextEncoder.packaged_minilm()

  def resources(self, inputs, stage_dir):
    return {"encoder": self.encoder, "item_texts": self.item_texts}

  def truth(self, rows, texts):
    ranking = registry.make_reward("retrieval_ranking", encoder=self.encoder,
                                   item_texts=self.item_texts, metric="ndcg", k=10)
    recall = registry.make_reward("retrieval_ranking", encoder=self.encoder,
                                  item_texts=self.item_texts, metric="recall", k=10)
    from jaxprof.rewards.base import RewardBatch

    cols = {k: [r[k] for r in rows] for k in ("history_items", "target_items")}
    batch = RewardBatch(prompts=[""] * len(rows), completions=list(texts),
                        completion_ids=np.zeros((len(rows), 1), np.int32),
                        completion_mask=np.ones((len(rows), 1), bool), columns=cols)
    mean = lambda v: float(np.nanmean(np.asarray([np.nan if x is None else x for x in v], float)))
    return {"truth/ndcg@10": mean(ranking(batch)), "truth/recall@10": mean(recall(batch))}


class MemberSourcesTask(Task):
  """Job-platform paper: heterogeneous sources -> one member text; engagement is the truth."""

  rl_split, eval_split = "train", "test"
  columns = ("future_jds", "future_actions")

  def prompt(self, row):
    return templates.member_prompt(row, include_skipped=self.config.data.include_skipped)

  @functools.cached_property
  def engagement_model(self):
    from jaxprof.rewards import engagement

    rows = _rows(self.config, "train")
    members, postings, labels = [], [], []
    for r in rows:  # the logged engagements the frozen reward model learns from
      text = f"{r['profile']}\n{r['professional']}"
      for jd, action in zip(r["future_jds"], r["future_actions"], strict=True):
        members.append(text)
        postings.append(jd)
        labels.append(int(action))
    logging.info("training the engagement model on %d logged engagements", len(labels))
    encoder = TextEncoder.packaged_minilm()
    mlp = engagement.train_engagement_model(members, postings, labels, encoder=encoder)
    return engagement.EngagementModel(mlp, encoder)

  def resources(self, inputs, stage_dir):
    return {"engagement_model": self.engagement_model}

  def truth(self, rows, texts):
    pointwise = registry.make_reward("engagement_pointwise", model=self.engagement_model)
    from jaxprof.rewards.base import RewardBatch

    cols = {k: [r[k] for r in rows] for k in self.columns}
    batch = RewardBatch(prompts=[""] * len(rows), completions=list(texts),
                        completion_ids=np.zeros((len(rows), 1), np.int32),
                        completion_mask=np.ones((len(rows), 1), bool), columns=cols)
    values = [np.nan if v is None else v for v in pointwise(batch)]
    return {"truth/engagement_pointwise": float(np.nanmean(values))}


TASKS = {"job_market": JobMarketTask, "movielens100k": MovieLensTask,
         "member_sources": MemberSourcesTask}


def get(config) -> Task:
  name = config.data.name
  if name not in TASKS:
    raise ValueError(f"config.data.name={name!r}; known data sets: {sorted(TASKS)}")
  return TASKS[name](config)
