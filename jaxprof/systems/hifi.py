"""High Fidelity Textual User Representation over Heterogeneous Sources via RL (Arora et al.).

A member's heterogeneous sources (profile, professional data, search activity) -> one compact
text; a frozen engagement model scores it against new job postings (configs/hifi.py, GRPO), with
format and length rewards. The engagement model is trained here on logged engagements of the
training members' profile and professional text. Truth today is that model's pointwise score on
held-out members; the hidden future-engagement truth, the baselines and the downstream model are
not built yet (issue: job-platform member representations reproduced).
"""

from __future__ import annotations

import functools

from absl import logging

from jaxprof.data import templates
from jaxprof.models.encoder import TextEncoder
from jaxprof.rewards import engagement, registry
from jaxprof.rewards.base import texts_batch
from jaxprof.systems import base


class System(base.System):
  """Member sources in, one member text out; engagement with future postings is the truth."""

  rl_split, eval_split = "train", "test"
  columns = ("future_jds", "future_actions")

  def prompt(self, row):
    return templates.member_prompt(row, include_skipped=self.config.data.include_skipped)

  @functools.cached_property
  def engagement_model(self) -> engagement.EngagementModel:
    members, postings, labels = [], [], []
    for r in self.rows("train"):  # the logged engagements the frozen reward model learns from
      text = f"{r['profile']}\n{r['professional']}"
      for jd, action in zip(r["future_jds"], r["future_actions"], strict=True):
        members.append(text)
        postings.append(jd)
        labels.append(int(action))
    logging.info("training the engagement model on %d logged engagements", len(labels))
    encoder = TextEncoder.packaged_minilm()
    mlp = engagement.train_engagement_model(members, postings, labels, encoder=encoder)
    return engagement.EngagementModel(mlp, encoder)

  def resources(self, inputs):
    return {"engagement_model": self.engagement_model}

  def truth_rows(self, rows, texts):
    pointwise = registry.make_reward("engagement_pointwise", model=self.engagement_model)
    batch = texts_batch(texts, {k: [r[k] for r in rows] for k in self.columns})
    return {"truth/engagement_pointwise": base.per_row(pointwise(batch))}
