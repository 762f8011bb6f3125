"""The generic evaluator: each policy's completions of held-out prompts, rewards and truth.

Truth (the system's independent measure) is kept per row, so every mean comes with a bootstrap
95% interval and the RL policy is compared with each other policy on the same rows: the paired
bootstrap of the difference, and win / tie / lose counts (a judge that reads one text at a time
cannot favour a position).
"""

from __future__ import annotations

import numpy as np

from jaxprof import evaluation
from jaxprof.recsys import metrics
from jaxprof.trainers import policy, rollout


@evaluation.register("held_out")
def held_out(ev: evaluation.Context, samples_shown: int = 8, tie_margin: float = 0.02,
             samples: int = 1) -> evaluation.Result:
  """`samples` completions per held-out prompt (config.eval.num_examples of them) per policy
  (at config.eval.temperature; several at config.rollout.temperature if that is 0), scored by
  every configured reward term (what RL optimised) and by the system's truth (what it did not see;
  a prompt's truth is the mean over its completions, with bootstrap 95% intervals over prompts),
  with the mean completion length in tokens. Rows "rl vs X" compare the RL policy with policy X on
  the same prompts: `diff/` is the paired-bootstrap mean difference of each truth metric, `win/`,
  `tie/`, `lose/` the share of prompts where RL's truth is higher by more than `tie_margin`,
  within it, or lower."""
  system = ev.system
  rows = system.rl_rows("eval")
  reward = system.reward(ev.inputs)
  table, texts, truth = {}, {}, {}
  for name in ev.policies:
    totals, terms, texts[name], lengths = [], {}, [], []
    tok = ev.tokenizer(name)
    done = 0
    for prompts, ro in ev.rollouts(name, [system.prompt(r) for r in rows], samples):
      chunk = rows[done:done + len(prompts)]  # rewards per batch, as RL computes them
      done += len(prompts)
      cols = {k: [r[k] for r in chunk] for k in system.columns}
      values, valid, means = rollout.text_reward_fn(reward, tok, prompts, cols)(ro)
      texts[name] += ro.completions
      lengths += ro.comp_mask.sum(-1).tolist()
      totals += [float(v) if ok else np.nan for v, ok in zip(values, valid, strict=True)]
      for k, v in means.items():
        terms.setdefault(k, []).append(v)
    per_row = system.truth_rows([r for r in rows for _ in range(samples)], texts[name])
    truth[name] = {m: _row_means(x, samples) for m, x in per_row.items()}
    table[name] = {"reward/total": float(np.nanmean(totals)),
                   **{k: float(np.nanmean(v)) for k, v in terms.items()},
                   **{k: v for m, x in truth[name].items() for k, v in with_ci(m, x).items()},
                   "length/tokens_mean": float(np.mean(lengths))}
  if "rl" in truth:
    for other in (n for n in ev.policies if n != "rl"):
      table[f"rl vs {other}"] = _paired(truth["rl"], truth[other], tie_margin)
  shown = [{"prompt": policy.plain_text(system.prompt(r)),
            **{n: t[i * samples] for n, t in texts.items()}}
           for i, r in enumerate(rows[:samples_shown])]
  return evaluation.Result(table, shown)


def _row_means(values: np.ndarray, samples: int) -> np.ndarray:
  """[N * samples] -> [N]: each prompt's mean over its defined values (nan if none is)."""
  x = np.asarray(values, np.float64).reshape(-1, samples)
  ok = np.isfinite(x)
  sums = np.where(ok, x, 0.0).sum(1)
  return np.where(ok.any(1), sums / np.maximum(ok.sum(1), 1), np.nan)


def with_ci(metric: str, values: np.ndarray) -> dict[str, float]:
  """{metric: mean, metric/ci_low, metric/ci_high} over the rows where it is defined."""
  if not np.isfinite(values).any():
    return {metric: float("nan")}
  mean, low, high = metrics.bootstrap_ci(values)
  return {metric: mean, f"{metric}/ci_low": low, f"{metric}/ci_high": high}


def _paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray], margin: float
            ) -> dict[str, float]:
  out = {}
  for m in a:
    if not (np.isfinite(a[m]) & np.isfinite(b[m])).any():
      continue
    diff, low, high = metrics.paired_bootstrap_ci(a[m], b[m])
    win, tie, lose = metrics.win_tie_lose(a[m], b[m], margin)
    out |= {f"diff/{m}": diff, f"diff/{m}/ci_low": low, f"diff/{m}/ci_high": high,
            f"win/{m}": win, f"tie/{m}": tie, f"lose/{m}": lose}
  return out
