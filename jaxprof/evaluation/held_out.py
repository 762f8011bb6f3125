"""The generic evaluator: each policy's completions of held-out prompts, rewards and truth."""

from __future__ import annotations

import numpy as np

from jaxprof import evaluation
from jaxprof.trainers import policy, rollout


@evaluation.register("held_out")
def held_out(ev: evaluation.Context, samples_shown: int = 8) -> evaluation.Result:
  """One completion per held-out prompt (config.eval.num_examples of them) per policy, scored by
  every configured reward term (what RL optimised) and by the system's truth (what it did not
  see), with the mean completion length in tokens."""
  system = ev.system
  rows = system.rl_rows("eval")
  reward = system.reward(ev.inputs)
  table, texts = {}, {}
  for name in ev.policies:
    totals, terms, texts[name] = [], {}, []
    tok = ev.load(name)[2]
    batches = ev.rollouts(name, [system.prompt(r) for r in rows])
    for i, (prompts, ro) in enumerate(batches):  # rewards per batch, as RL computes them
      chunk = rows[i * ev.config.eval.batch_size:][:len(prompts)]
      cols = {k: [r[k] for r in chunk] for k in system.columns}
      values, valid, means = rollout.text_reward_fn(reward, tok, prompts, cols)(ro)
      texts[name] += ro.completions
      totals += [float(v) if ok else np.nan for v, ok in zip(values, valid, strict=True)]
      for k, v in means.items():
        terms.setdefault(k, []).append(v)
    table[name] = {"reward/total": float(np.nanmean(totals)),
                   **{k: float(np.nanmean(v)) for k, v in terms.items()},
                   **system.truth(rows, texts[name]),
                   "length/tokens_mean": float(np.mean(
                       [len(tok.encode(t, add_special_tokens=False)) for t in texts[name]]))}
  shown = [{"prompt": policy.plain_text(system.prompt(r)), **{n: t[i] for n, t in texts.items()}}
           for i, r in enumerate(rows[:samples_shown])]
  return evaluation.Result(table, shown)
