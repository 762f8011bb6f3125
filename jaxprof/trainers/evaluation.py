"""The eval stage: the policy before and after RL on held-out prompts, side by side.

For each policy (the stage's start point and the RL export) it generates one completion per
held-out prompt, scores it with every configured reward term and with the task's truth (the
job-market oracle, held-out ranking, engagement), and writes `results.json`, `report.md`,
`samples.jsonl` and `rewards.png` into the stage directory.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax
import matplotlib
import numpy as np
from absl import logging

from jaxprof import stages
from jaxprof.trainers import policy, rollout

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def _policies(config, inputs: Mapping[str, Mapping]) -> dict[str, str]:
  start = inputs.get("sft", {}).get("policy_dir") or config.model.path
  out = {"start": start}
  for algo in ("ppo", "grpo"):
    if algo in inputs:
      out["rl"] = inputs[algo]["policy_dir"]
  return out


def score_policy(config, task, model_dir: str, rows, reward, stage_dir) -> tuple[dict, list]:
  """Greedy (or config.eval.temperature) completions for `rows`, their rewards and truth."""
  cfg, params, tok = policy.load(config.model, model_dir, config.seed)
  spec = policy.spec_from_config(cfg, config.model)
  spec = policy.PolicySpec(cfg=cfg, chunk_size=spec.chunk_size)  # merged weights, no LoRA
  ev = config.eval
  rl_like = config.rl.copy_and_resolve_references()
  rl_like.group_size, rl_like.temperature = 1, ev.temperature
  texts, totals, terms_all = [], [], {}
  for start in range(0, len(rows), ev.batch_size):
    chunk = rows[start:start + ev.batch_size]
    prompts = [policy.format_prompt(tok, task.prompt(r)) for r in chunk]
    padded = prompts + [prompts[-1]] * (ev.batch_size - len(prompts))  # one compiled shape
    ids, mask = policy.encode_prompts(tok, padded, config.rl.max_prompt_len)
    ro = rollout.generate(spec, params, {}, ids, mask, jax.random.key(config.seed), rl_like,
                          tok.eos_ids, tok.pad_id)
    ro = rollout.Rollout(**{k: getattr(ro, k)[:len(chunk)] for k in
                            ("prompt_ids", "prompt_mask", "comp_ids", "comp_mask", "logprobs",
                             "row_prompt")})
    cols = {k: [r[k] for r in chunk] for k in task.columns}
    values, valid, terms = rollout.text_reward_fn(reward, tok, prompts, cols)(ro)
    texts += ro.completions
    totals += [float(v) if ok else np.nan for v, ok in zip(values, valid, strict=True)]
    for k, v in terms.items():
      terms_all.setdefault(k, []).append(v)
  result = {"reward/total": float(np.nanmean(totals)),
            **{k: float(np.nanmean(v)) for k, v in terms_all.items()},
            **task.truth(rows, texts),
            "length/tokens_mean": float(np.mean([len(tok.encode(t, add_special_tokens=False))
                                                 for t in texts]))}
  return result, texts


def run(config, stage_dir: pathlib.Path, inputs: Mapping[str, Mapping], task) -> dict:
  rows = task.rl_rows("eval")
  reward = task.reward(inputs, stage_dir)
  results, samples = {}, {}
  for name, model_dir in _policies(config, inputs).items():
    logging.info("evaluating %s policy %s on %d prompts", name, model_dir, len(rows))
    results[name], samples[name] = score_policy(config, task, model_dir, rows, reward, stage_dir)
  if config.eval.enhanced_rec_rows and config.data.name == "job_market":
    from jaxprof.trainers import enhanced_rec

    results["enhanced_rec"] = enhanced_rec.run(config, task, _policies(config, inputs))
  stages.atomic_write_json(stage_dir / "results.json", results)
  lines = []
  for i, r in enumerate(rows[:config.eval.num_samples_shown]):
    lines.append(json.dumps({"prompt": policy.plain_text(task.prompt(r)),
                             **{n: s[i] for n, s in samples.items()}}))
  stages.atomic_write_text(stage_dir / "samples.jsonl", "\n".join(lines) + "\n")
  stages.atomic_write_text(stage_dir / "report.md", report(config, results, samples))
  plot({k: v for k, v in results.items() if k != "enhanced_rec"}, stage_dir / "rewards.png")
  return {"results": results}


def report(config, results: Mapping[str, Mapping[str, float]], samples) -> str:
  enhanced = results.get("enhanced_rec")
  results = {k: v for k, v in results.items() if k != "enhanced_rec"}
  names = list(results)
  metrics = sorted({k for r in results.values() for k in r})
  out = [f"# Evaluation: {config.data.name}\n", "| metric | " + " | ".join(names) + " |",
         "|---|" + "---|" * len(names)]
  for m in metrics:
    out.append(f"| {m} | " + " | ".join(f"{results[n].get(m, float('nan')):.4f}"
                                         for n in names) + " |")
  out.append("\n`truth/*` is the task's independent measure; `reward/*` is what RL optimised.\n")
  if enhanced:
    cols = sorted({k for r in enhanced.values() for k in r})
    out += ["## Generation-enhanced recommendation (GIRL Tables III/IV)\n",
            "| matcher | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {m} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |"
            for m, r in enhanced.items()]
    out.append("")
  for n in names:
    if n not in samples:
      continue
    out.append(f"## A {n} sample\n\n```\n{samples[n][0] if samples[n] else ''}\n```\n")
  return "\n".join(out)


def plot(results: Mapping[str, Mapping[str, float]], path: pathlib.Path) -> None:
  names = list(results)
  metrics = sorted({k for r in results.values() for k in r if not k.startswith("length/")})
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics)), 4))
  width = 0.8 / max(len(names), 1)
  for j, n in enumerate(names):
    ax.bar(np.arange(len(metrics)) + j * width, [results[n].get(m, np.nan) for m in metrics],
           width, label=n)
  ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, metrics, rotation=30,
                ha="right")
  ax.legend()
  ax.set_title("before vs after RL")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
