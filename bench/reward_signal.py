r"""How much signal a ranking reward leaves GRPO: the share of groups whose rewards are all equal,
and how reliably each metric tells a specific profile from a generic one.

  .venv/bin/python -m bench.reward_signal [--config=configs/langptune.py] [--users=32]
  .venv/bin/python -m bench.reward_signal --separation --users=512   # no generation, ~1 min

The start policy (the config's model) writes `rollout.group_size` profiles for each of the first
`--users` RL rows, sampled at the rollout temperature with the config's lengths, through the
eval stage's one generation path. Each group is scored by the retrieval reward under several
metrics (NDCG@10, the paper's; NDCG@100; MRR; Recall@10). A group whose rewards are all equal has
zero GRPO advantage: it teaches nothing. Prints, per metric, the share of such groups, the mean
reward and the mean within-group spread.

`--separation` writes no profile with the policy. For each of the first `--users` RL rows it
scores two hand-written texts against the row's held-out item: a generic profile (the start
policy's typical opening, the same for everyone) and a specific one (the titles of the user's
last `--titles` movies, or `--text` for everyone: e.g. a profile RL wrote, to see whether a
reward pays for its form alone). Per metric it prints the mean paired difference over its standard
deviation (a per-sample signal-to-noise ratio: what one GRPO comparison can tell), and the share
of users where the specific text scores higher, lower or the same.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from jaxprof import evaluation, systems  # noqa: E402
from jaxprof.rewards import registry  # noqa: E402
from jaxprof.rewards.base import texts_batch  # noqa: E402

METRICS = (("ndcg", 10), ("ndcg", 100), ("mrr", 10), ("recall", 10), ("log_rank", 10))
GENERIC = ("The user's movie tastes are diverse and include a wide range of genres, from drama to "
           "comedy.")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/langptune.py")
  parser.add_argument("--users", type=int, default=32)
  parser.add_argument("--separation", action="store_true")
  parser.add_argument("--titles", type=int, default=1)
  parser.add_argument("--text", default="", help="with --separation: this text for every user "
                      "instead of the last titles (e.g. a profile RL produced)")
  args = parser.parse_args()
  name, _, variant = args.config.removeprefix("configs/").partition(".py")
  config = importlib.import_module(f"configs.{name}").get_config(variant.removeprefix(":"))
  system = systems.get(config)
  rows = system.rl_rows("train")[:args.users]
  if args.separation:
    separation(system, rows, args.titles, args.text)
    return
  g = int(config.rollout.group_size)
  ctx = evaluation.Context(config, system, {"start": config.model.path}, {},
                           pathlib.Path(tempfile.mkdtemp()))
  t0 = time.time()
  groups = ctx.generate("start", [system.prompt(r) for r in rows], samples=g,
                        temperature=float(config.rollout.temperature))
  print(f"{len(rows)} users x {g} profiles at temperature {config.rollout.temperature}: "
        f"{time.time() - t0:.0f} s")
  flat_rows = [r for r in rows for _ in range(g)]
  batch = texts_batch([t for grp in groups for t in grp],
                      {k: [r[k] for r in flat_rows] for k in ("history_items", "target_items")})
  print("| metric | groups with all-equal rewards | mean reward | mean within-group std |")
  print("|---|---|---|---|")
  for metric, k in METRICS:
    reward = registry.make_reward("retrieval_ranking", encoder=system.encoder,
                                  item_texts=system.item_texts, metric=metric, k=k)
    r = np.asarray([np.nan if x is None else x for x in reward(batch)], np.float64)
    r = r.reshape(len(rows), g)
    flat = np.isclose(r.max(1), r.min(1))
    label = _label(metric, k)
    print(f"| {label} | {flat.mean():.2f} ({flat.sum()}/{len(rows)}) | {np.nanmean(r):.4f} | "
          f"{np.nanmean(r.std(1)):.4f} |")


def _label(metric: str, k: int) -> str:
  return {"mrr": "MRR", "log_rank": "log-rank"}.get(metric, f"{metric.upper()}@{k}")


def separation(system, rows, titles: int, text: str = "") -> None:
  specific = ([text] * len(rows) if text else
              ["; ".join(r["history_text"][-titles:]) for r in rows])
  cols = {k: [r[k] for r in rows] for k in system.columns}
  what = f"{text[:60]!r}..." if text else f"the last {titles} title(s)"
  print(f"{len(rows)} users: {what} vs a generic profile, validation item")
  print("| metric | mean diff / sd | specific higher | lower | equal |")
  print("|---|---|---|---|---|")
  scorers = {_label(m, k): registry.make_reward("retrieval_ranking", encoder=system.encoder,
                                                item_texts=system.item_texts, metric=m, k=k)
             for m, k in METRICS}
  config_reward = system.reward({})
  scorers["the config's reward"] = lambda batch: config_reward.evaluate(batch)[0]
  for label, reward in scorers.items():
    d = (np.asarray(reward(texts_batch(specific, cols)), np.float64)
         - np.asarray(reward(texts_batch([GENERIC] * len(rows), cols)), np.float64))
    print(f"| {label} | {d.mean() / d.std():+.3f} | {np.mean(d > 0):.2f} | "
          f"{np.mean(d < 0):.2f} | {np.mean(d == 0):.2f} |")


if __name__ == "__main__":
  main()
