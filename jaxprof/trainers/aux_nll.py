"""A supervised term in the RL loss: the policy's token NLL of a target text.

config.rl.aux_nll: `coef` (0 = off), `column` (the field of the system's RL rows holding each
prompt's target text), `max_len` (target tokens kept) and `after`, what the target is conditioned
on. GRPO's loss becomes

  loss = policy loss + kl_coef * KL + coef * NLL,
  NLL = -(1 / T) sum_t log pi(y_t | context, y_<t)   over the T target tokens of the (micro-)batch

with context, by `after`:
- "prompt": the prompt alone. One target per prompt group.
- "completion": the prompt and each sampled completion (the completion's tokens, then the
  target's). One target per completion row: the term teaches what follows a completion the policy
  wrote itself, so it cannot pull the policy towards answering the prompt with the target text.

logged as rl/aux_nll. With rl.optim.grad_accum > 1 each micro-batch's term is weighted by the
loss's normaliser (its completion tokens), as the policy loss is.

pi is the raw model (temperature 1, as in SFT), whatever the sampling temperature. The target is
tokenised without special tokens: it teaches what follows the prompt, not where a reply ends (an
EOS would teach the policy to stop after the target instead of writing its text).

The target rides in the policy's own forward pass, never a second prompt pass. After "prompt",
each group of G completions of one prompt gets one more continuation row, the target (1 / G more
continuation rows). After "completion", each completion row is extended by its target's L tokens,
placed right after the completion's last token (causal attention: the completion's own log-probs
do not change). The targets stay out of everything else: the policy loss, KL, entropy,
advantages, rollout statistics, truncation and minibatching see the completions only (the target
arrays ride along per completion row, repeated within the group, so row-wise minibatching and
sharding need no change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprof import buckets, perf
from jaxprof import config as config_lib
from jaxprof.models import causal_lm
from jaxprof.rl import losses
from jaxprof.trainers import policy

if TYPE_CHECKING:  # for the annotation only: rollout imports this module (prompt_batches)
  from jaxprof.trainers.rollout import Rollout

KEYS = ("aux_ids", "aux_mask")  # batch entries: [R, L] target ids / mask, per completion row
START = "aux_start"  # after "completion": [R] int32, where each row's target starts


def enabled(rl_config) -> bool:
  """Whether rl.aux_nll adds its term (coef > 0)."""
  aux = rl_config.get("aux_nll")
  return bool(aux) and aux.coef > 0


def row_texts(rows: Sequence[Mapping[str, Any]], column: str) -> list[str]:
  """Each RL row's target text from `column`; a ConfigError names a missing or empty field."""
  for i, row in enumerate(rows):
    if column not in row:
      raise config_lib.ConfigError(
          f"rl.aux_nll.column={column!r} is not a field of the system's RL rows (row {i} has: "
          f"{', '.join(sorted(row))})")
    if not isinstance(row[column], str) or not row[column].strip():
      raise config_lib.ConfigError(f"rl.aux_nll.column={column!r}: row {i} holds "
                                   f"{row[column]!r}, expected a non-empty str")
  return [row[column] for row in rows]


def encode(tok, texts: list[str], max_len: int) -> dict[str, np.ndarray]:
  """{"aux_ids": [B, L] int32, "aux_mask": [B, L] bool}: right-padded, no special tokens, the
  first `max_len` tokens of each text; L is the longest row rounded up to a bucket width.

  `rollout.prompt_batches` encodes all RL rows once, so every batch has the same target width
  (per-batch widths would compile the update once more for each).
  """
  ids, mask = tok.encode_batch(texts, padding_side="right", add_special_tokens=False)
  w = buckets.width(int(mask.sum(-1).max(initial=1)), max_len)
  return {"aux_ids": policy.pad_to(ids, w, False, tok.pad_id),
          "aux_mask": policy.pad_to(mask, w, False, False)}


def batch_rows(targets: Sequence[Mapping[str, np.ndarray]], rl_config, group_size: int,
               comp_mask: np.ndarray) -> dict[str, np.ndarray]:
  """The update batch's target entries: each prompt's [B, L] arrays repeated for its group's
  `group_size` rows ([B * G, L], rollout order), and after "completion" also `aux_start` [B * G],
  each completion's length (the rollout's comp_mask [B * G, N], right-padded); {} with the term
  off.

  targets: what the prompt batch returned after (ids, mask, reward_fn): () or (encode(...),).
  """
  if not enabled(rl_config):
    return {}
  if not targets:
    raise ValueError("rl.aux_nll.coef > 0 but the prompt batches carry no target texts "
                     "(rollout.prompt_batches adds them from rl.aux_nll.column)")
  out = {k: np.repeat(targets[0][k], group_size, axis=0) for k in KEYS}
  if rl_config.aux_nll.get("after", "prompt") == "completion":
    out[START] = np.asarray(comp_mask, bool).sum(-1).astype(np.int32)
  return out


def after_completions(comp_ids, target_ids, target_mask, start):
  """Each completion row followed by its target: (ids [R, N + L], mask [R, N + L]).

  comp_ids [R, N] right-padded; target_ids/mask [R, L] right-padded; start [R] the completion's
  length, where its target begins. The mask covers the completion and the target's real tokens.
  """
  xp = np if all(isinstance(x, np.ndarray) for x in (comp_ids, target_ids, start)) else jnp
  n, length = comp_ids.shape[1], target_ids.shape[1]
  pos = xp.arange(n + length)[None]
  j = pos - start[:, None]  # index into the target
  in_target = (j >= 0) & (j < length)
  target = xp.take_along_axis(target_ids, xp.clip(j, 0, length - 1), axis=1)
  ids = xp.where(in_target, target, xp.pad(comp_ids, ((0, 0), (0, length))))
  mask = pos < (start + target_mask.sum(-1))[:, None]
  return ids, mask


def with_target_rows(comp: jax.Array, target: jax.Array, group_size: int) -> jax.Array:
  """comp [B * G, N] and target [B, L] -> [B * (G + 1), max(N, L)]: each group's G rows, then
  its target row, right-padded with zeros (ids: any token; masks: False)."""
  xp = np if isinstance(comp, np.ndarray) and isinstance(target, np.ndarray) else jnp
  b, w = target.shape[0], max(comp.shape[1], target.shape[1])
  comp = xp.pad(comp, ((0, 0), (0, w - comp.shape[1]))).reshape(b, group_size, w)
  target = xp.pad(target, ((0, 0), (0, w - target.shape[1])))[:, None]
  return xp.concatenate([comp, target], axis=1).reshape(b * (group_size + 1), w)


def policy_logprobs(spec: policy.PolicySpec, rollout_config, trainable, frozen, batch,
                    temperature: float = 1.0):
  """(log-probs [R, N], entropy [R, N]) of the completions, as `rollout.policy_logprobs`, and
  the target's token log-probs [R / g, L] under the raw model with their mask [R / g, L], from
  one forward pass: g = rollout.group_size rows per prompt (1 if the rows are not whole groups:
  then every row carries its own copy of its prompt's target)."""
  params = policy.effective_params(spec, trainable, frozen)
  if START in batch:
    return _after_completion_logprobs(spec, rollout_config, params, batch, temperature)
  r, n = batch["comp_ids"].shape
  g = rollout_config.group_size if r % rollout_config.group_size == 0 else 1  # shareable_group
  t_ids, t_mask = (causal_lm.group_first(batch[k], g) for k in KEYS)
  b, t = t_ids.shape
  prompt_ids, prompt_mask = (jnp.repeat(causal_lm.group_first(batch[k], g), g + 1, axis=0)
                             for k in ("prompt_ids", "prompt_mask"))
  hidden = causal_lm.continuation_states(
      params, spec.cfg, prompt_ids, prompt_mask, with_target_rows(batch["comp_ids"], t_ids, g),
      with_target_rows(batch["comp_mask"], t_mask, g),
      g + 1 if rollout_config.share_prefix else 1, spec.remat)
  hidden = hidden.reshape(b, g + 1, *hidden.shape[1:])
  lp, ent = causal_lm.token_logprobs(params, spec.cfg, hidden[:, :g, :n].reshape(r, n, -1),
                                     batch["comp_ids"], spec.chunk_size, True, temperature)
  target_lp = causal_lm.token_logprobs(params, spec.cfg, hidden[:, g, :t], t_ids,
                                       spec.chunk_size)
  return lp, ent, target_lp, t_mask


def _after_completion_logprobs(spec: policy.PolicySpec, rollout_config, params, batch,
                               temperature: float):
  """`policy_logprobs` after "completion": one pass over every row extended by its target; the
  target's log-probs [R, L] come from the hidden states at its own positions."""
  from jaxprof.trainers import rollout  # rollout imports this module

  r, n = batch["comp_ids"].shape
  t_ids, t_mask, start = batch["aux_ids"], batch["aux_mask"], batch[START]
  ids, mask = after_completions(batch["comp_ids"], t_ids, t_mask, start)
  g = rollout.shareable_group(r, rollout.prompt_group(rollout_config))
  hidden = causal_lm.continuation_states(params, spec.cfg, batch["prompt_ids"],
                                         batch["prompt_mask"], ids, mask, g, spec.remat)
  lp, ent = causal_lm.token_logprobs(params, spec.cfg, hidden[:, :n], batch["comp_ids"],
                                     spec.chunk_size, True, temperature)
  where = start[:, None] + jnp.arange(t_ids.shape[1])[None]  # hidden state i predicts token i
  target_hidden = jnp.take_along_axis(hidden, where[..., None], axis=1)
  target_lp = causal_lm.token_logprobs(params, spec.cfg, target_hidden, t_ids, spec.chunk_size)
  return lp, ent, target_lp, t_mask


def mean_nll(target_lp: jax.Array, target_mask: jax.Array) -> jax.Array:
  """The term: mean over real target tokens of -log p, from [B, L] log-probs and mask (0 if none).
  """
  return -losses.masked_mean(target_lp, target_mask)


def extra_flops(cfg, ro: Rollout, batch: Mapping[str, np.ndarray]) -> float:
  """Forward FLOPs the target rows add to one update pass over `ro` (0 without targets): target
  tokens through the layers and the LM head, attending to their prompt (recomputed too when
  every row runs its own prompt, rollout.share_prefix off)."""
  if "aux_mask" not in batch:
    return 0.0
  if START in batch:  # each row's continuation is longer by its target
    _, longer = after_completions(ro.comp_ids, batch["aux_ids"], batch["aux_mask"],
                                  batch[START])
    return (perf.forward_flops(cfg, ro.prompt_mask, longer, ro.prompt_group)
            - perf.forward_flops(cfg, ro.prompt_mask, ro.comp_mask, ro.prompt_group))
  first = np.unique(ro.row_prompt, return_index=True)[1]  # one row per prompt
  prompts, targets = ro.prompt_mask[first], batch["aux_mask"][first]
  with_prompts = perf.forward_flops(cfg, prompts, targets, 1)
  if ro.prompt_group == 1:
    return with_prompts
  return with_prompts - perf.forward_flops(cfg, prompts, np.zeros_like(targets), 1)
