"""Reward-model pairs from the start policy's own samples, ordered by the system's labeller.

`reward_model.sampled = {"prompts": N, "samples": K, "margin": m}` (N = 0: off). A reward model
trained only on reference texts (e.g. real postings matched vs not matched to a CV) learns what
separates those texts; RL then asks it to rank the policy's samples for one prompt, which differ
in subtler ways. Here the start policy (the SFT export) samples K completions for each of N of the
system's reward-model prompts and for each of its held-out ones (`System.reward_rows`), the
system labels each completion (`System.label_texts`: the annotator, e.g. a recruiter's
judgement), and every two completions of one prompt whose labels differ by more than m become a
(chosen, rejected) pair. The held-out accuracy on sampled pairs reads exactly what RL needs: does
the reward model rank the policy's own outputs for a new prompt the way the labeller would?
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging

from jaxprof.trainers import policy, rollout

Pair = dict[str, object]


def sample(start: policy.Start, prompts: Sequence, samples: int, rollout_config,
           rows_per_call: int, seed: int) -> list[list[str]]:
  """[len(prompts)][samples] completion texts of chat `prompts` at the rollouts' temperature (the
  distribution RL will ask the reward model to rank), `rows_per_call` rows per sampler call (the
  last call padded, so one compiled shape)."""
  per_call = max(1, rows_per_call // samples)
  out = []
  for i in range(0, len(prompts), per_call):
    chunk = [policy.format_prompt(start.tok, p) for p in prompts[i:i + per_call]]
    _, texts = rollout.generate_texts(
        start.spec, start.trainable, start.frozen, start.tok, chunk, per_call, samples,
        rollout_config.temperature, rollout_config, jax.random.key(seed + i), start.eos_ids)
    out += [texts[j * samples:(j + 1) * samples] for j in range(len(chunk))]
    logging.info("sampled pairs: %d/%d prompts sampled", len(out), len(prompts))
  return out


def pairs_from_labels(prompts: Sequence, groups: Sequence[Sequence[str]], labels: np.ndarray,
                      margin: float) -> list[Pair]:
  """Every two completions of one prompt whose labels differ by more than `margin`, the higher
  one chosen. labels: [len(prompts), samples]."""
  out = []
  for prompt, texts, y in zip(prompts, groups, np.asarray(labels), strict=True):
    for a, b in itertools.combinations(range(len(texts)), 2):
      if abs(y[a] - y[b]) > margin and texts[a] != texts[b]:
        hi, lo = (a, b) if y[a] > y[b] else (b, a)
        out.append({"prompt": prompt, "chosen": texts[hi], "rejected": texts[lo]})
  return out


def build(config, system, start: policy.Start) -> dict[str, list[Pair]]:
  """{"train": pairs, "eval": pairs} from reward_model.sampled's settings: the first `prompts` of
  the system's train rows (`reward_rows`), and all its eval rows."""
  cfg = config.reward_model.sampled
  out = {}
  rows = {"train": system.reward_rows("train")[:int(cfg["prompts"])],
          "eval": system.reward_rows("eval")}
  for part, part_rows in rows.items():
    prompts = [system.prompt(r) for r in part_rows]
    groups = sample(start, prompts, int(cfg["samples"]), config.rollout, config.eval.batch_size,
                    config.seed + (0 if part == "train" else 10_000))
    flat_rows = [r for r in part_rows for _ in range(int(cfg["samples"]))]
    labels = system.label_texts(flat_rows, [t for g in groups for t in g])
    out[part] = pairs_from_labels(prompts, groups, labels.reshape(len(part_rows), -1),
                                  float(cfg["margin"]))
    logging.info("sampled pairs (%s): %d prompts x %d samples -> %d pairs", part,
                 len(part_rows), cfg["samples"], len(out[part]))
  return out


def describe(pairs: Mapping[str, Sequence[Pair]]) -> dict[str, int]:
  return {f"sampled_pairs_{k}": len(v) for k, v in pairs.items()}
