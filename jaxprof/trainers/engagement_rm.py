"""An engagement reward model: P(apply, click, skip | member text, item text) on frozen embeddings.

`reward_model.backbone = "engagement"`, trained in the reward_model stage like the other reward
models. The system labels items for texts (`System.label_items(rows, texts)`: each row's logged
items and the actions taken on them); the texts are the rows' raw sources (texts=None) and, with
reward_model.sampled.prompts > 0, the start policy's own samples for that many rows (and as many
held-out rows), the kind of text the model will score during RL. A model fitted on raw sources
alone reads summaries out of its training distribution.

The model (`rewards.engagement`: the frozen MiniLM's embeddings of text and item, an MLP on
[m; p; m * p]) is fitted on the examples of the system's "train" reward rows, with early stopping
on a slice of those members held out whole, and its accuracy is reported on the "eval" reward
rows (other members): AUC of P(engaged) = 1 - P(skip) against the logged action (engaged vs
skipped) and argmax accuracy over the three actions, per kind of text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from etils import epath

from jaxprof import stages
from jaxprof.models.encoder import TextEncoder
from jaxprof.recsys import metrics
from jaxprof.rewards import engagement
from jaxprof.trainers import artifacts, policy, sampled_pairs

BACKBONE = "engagement"
RAW, SAMPLED = "raw", "sampled"

Example = Mapping[str, object]  # {"text", "item", "label", "group"}


def run(config, system, start_dir: str, stage_dir: epath.Path) -> dict:
  """Fits the engagement model on the system's labelled items, saves it to stage_dir/model and
  returns {"reward_model_dir", "eval_auc_<kind>", "eval_accuracy_<kind>", "train_examples"}."""
  rm = config.reward_model
  rows = {part: system.reward_rows(part) for part in ("train", "eval")}
  examples = {part: {RAW: system.label_items(r, None)} for part, r in rows.items()}
  samples = _sampled_texts(config, system, rows, start_dir, stage_dir)
  for part, texts in samples.items():
    if texts:
      examples[part][SAMPLED] = system.label_items(rows[part][:len(texts)], texts)
  encoder = TextEncoder.packaged_minilm()
  train = [e for kind in examples["train"].values() for e in kind]
  member, item = embed_examples(encoder, train)
  head_config = engagement.EngagementConfig(
      learning_rate=rm.optim.lr, weight_decay=rm.optim.weight_decay, batch_size=rm.batch_size,
      seed=config.seed)
  mlp, stats = engagement.train_engagement_head(member, item, [e["label"] for e in train],
                                                head_config, [e["group"] for e in train])
  model = engagement.EngagementModel(mlp, encoder)
  out = {"train_examples": len(train), "best_epoch": stats["best_epoch"]}
  for kind, ex in examples["eval"].items():
    out |= held_out_accuracy(model, ex, kind)
  logging.info("engagement reward model: %s", out)
  card = {"backbone": BACKBONE, "encoder": "packaged_minilm", "hidden": head_config.hidden, **out}
  saved = artifacts.save_pytree(stage_dir / "model", {"mlp": jax.device_get(mlp)}, card)
  return {"reward_model_dir": str(saved), **out}


def embed_examples(encoder: TextEncoder, examples: Sequence[Example]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """([N, D] text embeddings, [N, D] item embeddings) of N examples, each distinct text once."""
  return (encoder.embed([str(e["text"]) for e in examples]),
          encoder.embed([str(e["item"]) for e in examples]))


def held_out_accuracy(model: engagement.EngagementModel, examples: Sequence[Example], kind: str
                      ) -> dict[str, float]:
  """{"eval_auc_<kind>": AUC of P(engaged) vs engaged (apply or click) against skipped,
  "eval_accuracy_<kind>": argmax accuracy over the three actions} on held-out examples."""
  if not examples:
    return {}
  probs = model.score([str(e["text"]) for e in examples], [str(e["item"]) for e in examples])
  labels = np.array([int(e["label"]) for e in examples])
  engaged = labels != engagement.SKIP
  auc = (metrics.auc(engaged, 1.0 - probs[:, engagement.SKIP])
         if engaged.any() and not engaged.all() else float("nan"))
  return {f"eval_auc_{kind}": float(auc),
          f"eval_accuracy_{kind}": float(np.mean(probs.argmax(-1) == labels))}


def _sampled_texts(config, system, rows: Mapping[str, Sequence], start_dir: str,
                   stage_dir: epath.Path) -> dict[str, list[str]]:
  """{"train": texts, "eval": texts}: one start-policy sample for each of the first
  reward_model.sampled.prompts train rows and as many eval rows, drawn together (one sampler
  call when both fit in config.eval.batch_size rows); saved to stage_dir/sampled_texts.json once
  (a resumed stage reads them back)."""
  n = int((config.reward_model.get("sampled") or {}).get("prompts", 0))
  if not n:
    return {}
  path = stage_dir / "sampled_texts.json"
  if path.exists():
    return json.loads(path.read_text())
  parts = {"train": rows["train"][:n], "eval": rows["eval"][:n]}
  prompts = [system.prompt(r) for part_rows in parts.values() for r in part_rows]
  texts = [g[0] for g in sampled_pairs.sample(policy.start(config, start_dir), prompts, 1,
                                              config.rollout, config.eval.batch_size,
                                              config.seed)]
  out = {"train": texts[:len(parts["train"])], "eval": texts[len(parts["train"]):]}
  if jax.process_index() == 0:
    stages.atomic_write_json(path, out)
  return out


def load(directory: str | os.PathLike) -> engagement.EngagementModel:
  """The engagement model saved by `run`, with the packaged MiniLM."""
  params, card = artifacts.load_pytree(directory)
  if card.get("backbone") != BACKBONE:
    raise ValueError(f"{directory} holds a {card.get('backbone')!r} reward model, not an "
                     f"{BACKBONE!r} one")
  return engagement.EngagementModel(params["mlp"], TextEncoder.packaged_minilm())
