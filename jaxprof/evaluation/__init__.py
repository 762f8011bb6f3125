"""Evaluators: named in the config, each one function behind one interface.

  config.eval.evaluators = {"held_out": {}, "enhanced_rec": {"rows": 32, "samples": 2}}

An evaluator is `fn(ev: Context, **kwargs) -> Result`, registered under a name with `register`
(generic ones in this package, a paper's own in its `jaxprof.systems` module). The eval stage
(`stage.py`) runs each configured evaluator on the policies the run produced (the start policy and
the RL export) and writes their tables; neither it nor the report writer knows any evaluator.
Every evaluator generates text through `Context.rollouts` (or `generate`, its texts).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax

from jaxprof.trainers import policy, rollout

Table = dict[str, dict[str, float]]  # row label -> metric -> value


class Result(NamedTuple):
  """table: row (e.g. a policy) -> metric -> value; samples: JSON-able rows for samples.jsonl."""

  table: Table
  samples: Sequence[Mapping[str, Any]] = ()


@dataclasses.dataclass
class Context:
  """What an evaluator sees: the run, its system, and the policies to compare (name -> HF dir)."""

  config: Any
  system: Any
  policies: dict[str, str]
  inputs: Mapping[str, Mapping]
  stage_dir: pathlib.Path
  _loaded: dict = dataclasses.field(default_factory=dict, repr=False)

  def load(self, name: str):
    """(PolicySpec, params, tokenizer) of policy `name`, loaded once."""
    if name not in self._loaded:
      cfg, params, tok = policy.load(self.config.model, self.policies[name], self.config.seed)
      spec = policy.PolicySpec(cfg=cfg, chunk_size=self.config.model.chunk_size)
      self._loaded = {name: (spec, params, tok)}  # one policy in memory at a time
    return self._loaded[name]

  def rollouts(self, name: str, prompts: Sequence[Any], samples: int = 1,
               temperature: float | None = None) -> list[tuple[list[str], rollout.Rollout]]:
    """Policy `name`'s completions of chat `prompts`, batch by batch: [(formatted prompts,
    Rollout of their len * samples rows, completions decoded)]. The one generation path.

    temperature: default config.eval.temperature for one sample, 1.0 for several. Batches of
    config.eval.batch_size prompts (the last padded: one compiled shape), config.rollout's
    lengths.
    """
    spec, params, tok = self.load(name)
    ev, ro = self.config.eval, self.config.rollout.copy_and_resolve_references()
    ro.group_size = samples
    ro.temperature = temperature if temperature is not None else (
        ev.temperature if samples == 1 else 1.0)
    out = []
    for start in range(0, len(prompts), ev.batch_size):
      chunk = [policy.format_prompt(tok, p) for p in prompts[start:start + ev.batch_size]]
      padded = chunk + [chunk[-1]] * (ev.batch_size - len(chunk))
      ids, mask = policy.encode_prompts(tok, padded, ro.max_prompt_len)
      batch = rollout.generate(spec, params, {}, ids, mask,
                               jax.random.key(self.config.seed + start), ro, tok.eos_ids,
                               tok.pad_id)
      n = len(chunk) * samples  # drop the padding rows
      batch = dataclasses.replace(batch, **{k: getattr(batch, k)[:n] for k in (
          "prompt_ids", "prompt_mask", "comp_ids", "comp_mask", "logprobs", "row_prompt",
          "truncated")})
      batch.completions = tok.decode_batch(batch.comp_ids, batch.comp_mask)
      out.append((chunk, batch))
    return out

  def generate(self, name: str, prompts: Sequence[Any], samples: int = 1,
               temperature: float | None = None) -> list[list[str]]:
    """`samples` completion texts per chat prompt ([len(prompts)][samples]); see `rollouts`."""
    texts = [t for _, ro in self.rollouts(name, prompts, samples, temperature)
             for t in ro.completions]
    return [texts[i * samples:(i + 1) * samples] for i in range(len(prompts))]


Evaluator = Callable[..., Result]
EVALUATORS: dict[str, Evaluator] = {}


def register(name: str) -> Callable[[Evaluator], Evaluator]:
  """Decorator: adds an evaluator under `name` (re-registering a name to another fn raises)."""
  def add(fn: Evaluator) -> Evaluator:
    if EVALUATORS.get(name, fn) is not fn:
      raise ValueError(f"evaluator {name!r} is already registered ({EVALUATORS[name].__name__})")
    EVALUATORS[name] = fn
    return fn
  return add


def get(name: str) -> Evaluator:
  from jaxprof.evaluation import held_out  # noqa: F401  (registers the generic evaluators)

  if name not in EVALUATORS:
    raise KeyError(f"config.eval.evaluators names {name!r}; registered evaluators: "
                   f"{sorted(EVALUATORS)} (a system's own register when its module loads)")
  return EVALUATORS[name]
