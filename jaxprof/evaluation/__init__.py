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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from etils import epath

from jaxprof import config as config_lib
from jaxprof.trainers import policy, rollout

Table = dict[str, dict[str, float]]  # row label -> metric -> value


class Result(NamedTuple):
  """table: row (e.g. a policy) -> metric -> value; samples: JSON-able rows for samples.jsonl."""

  table: Table
  samples: Sequence[Mapping[str, Any]] = ()


class _Sample(NamedTuple):
  """One cached completion: its token ids and mask [N], text, and whether the cap cut it off."""

  ids: np.ndarray
  mask: np.ndarray
  text: str
  truncated: bool


@dataclasses.dataclass
class Context:
  """What an evaluator sees: the run, its system, and the policies to compare (name -> HF dir).

  Completions are cached per (policy, temperature, prompt): evaluators that ask for the same
  prompts share one generation, and asking for fewer samples than were drawn reuses the first
  ones (samples are independent draws, so any prefix is itself a sample of that size).
  """

  config: Any
  system: Any
  policies: dict[str, str]
  inputs: Mapping[str, Mapping]
  stage_dir: epath.Path
  _loaded: dict = dataclasses.field(default_factory=dict, repr=False)
  _cache: dict = dataclasses.field(default_factory=dict, repr=False)
  _tokenizers: dict = dataclasses.field(default_factory=dict, repr=False)

  def load(self, name: str):
    """(PolicySpec, params, tokenizer) of policy `name`, loaded once."""
    if name not in self._loaded:
      cfg, params, tok = policy.load(self.config.model, self.policies[name], self.config.seed)
      spec = policy.PolicySpec(cfg=cfg, chunk_size=self.config.model.chunk_size)
      self._loaded = {name: (spec, params, tok)}  # one policy in memory at a time
    return self._loaded[name]

  def tokenizer(self, name: str):
    """Policy `name`'s tokenizer (without loading its weights when they are not needed)."""
    if name in self._loaded:
      return self._loaded[name][2]
    if name not in self._tokenizers:
      self._tokenizers[name] = policy.load_tokenizer(self.policies[name])
    return self._tokenizers[name]

  def rollouts(self, name: str, prompts: Sequence[Any], samples: int = 1,
               temperature: float | None = None) -> list[tuple[list[str], rollout.Rollout]]:
    """Policy `name`'s completions of chat `prompts`: [(formatted prompts, Rollout of their
    len * samples rows, completions decoded)], in batches of config.eval.batch_size rows. The one
    generation path.

    temperature: default config.eval.temperature; several samples of a prompt need one above 0,
      so when that is 0 (greedy) they are drawn at config.rollout.temperature. Prompts not
    cached with `samples` completions yet are generated config.eval.batch_size rows per call
    (the last call padded: one compiled shape), with config.rollout's lengths.
    """
    if temperature is None:
      temperature = self.config.eval.temperature
      if samples > 1 and not temperature:
        temperature = self.config.rollout.temperature
    temperature = float(temperature)
    tok = self.tokenizer(name)
    formatted = [policy.format_prompt(tok, p) for p in prompts]
    cache = self._cache.setdefault((name, temperature), {})
    missing = [p for p in dict.fromkeys(formatted) if len(cache.get(p, ())) < samples]
    per_call = max(1, self.config.eval.batch_size // samples)
    if missing:
      logging.info("eval: %s generates %d completion(s) for each of %d prompts", name, samples,
                   len(missing))
    began = time.perf_counter()
    for start in range(0, len(missing), per_call):
      self._generate(name, missing[start:start + per_call], per_call, samples, temperature,
                     cache)
      done = min(start + per_call, len(missing))
      if done < len(missing):  # progress on long generations (~1 min per call on a CPU)
        spent = time.perf_counter() - began
        logging.info("eval: %s %d/%d prompts, %.0f s, about %.0f s left", name, done,
                     len(missing), spent, spent / done * (len(missing) - done))
    out = []
    for start in range(0, len(formatted), per_call):
      chunk = formatted[start:start + per_call]
      out.append((chunk, _as_rollout([cache[p][:samples] for p in chunk], samples,
                                     tok.pad_id)))
    return out

  def _generate(self, name, chunk, per_call, samples, temperature, cache) -> None:
    spec, params, tok = self.load(name)
    seed = self.config.seed + len(cache)  # a new key per call, the same on every run
    batch, texts = rollout.generate_texts(spec, params, {}, tok, chunk, per_call, samples,
                                          temperature, self.config.rollout,
                                          jax.random.key(seed), tok.eos_ids)
    for i, p in enumerate(chunk):
      rows = range(i * samples, (i + 1) * samples)
      cache[p] = [_Sample(batch.comp_ids[r], batch.comp_mask[r], texts[r],
                          bool(batch.truncated[r])) for r in rows]

  def generate(self, name: str, prompts: Sequence[Any], samples: int = 1,
               temperature: float | None = None) -> list[list[str]]:
    """`samples` completion texts per chat prompt ([len(prompts)][samples]); see `rollouts`."""
    texts = [t for _, ro in self.rollouts(name, prompts, samples, temperature)
             for t in ro.completions]
    return [texts[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def _as_rollout(groups: Sequence[Sequence[_Sample]], samples: int, pad_id: int
                ) -> rollout.Rollout:
  """A Rollout of cached completions ([prompts][samples]), right-padded to the longest; its
  prompt arrays are empty (evaluators score completions, not prompts)."""
  flat = [s for g in groups for s in g]
  width = max(int(s.mask.sum()) for s in flat)
  ids = np.full((len(flat), max(width, 1)), pad_id, np.int32)
  mask = np.zeros_like(ids, bool)
  for r, s in enumerate(flat):
    n = int(s.mask.sum())
    ids[r, :n], mask[r, :n] = s.ids[s.mask.astype(bool)][:n], True
  empty = np.zeros((len(flat), 0), np.int32)
  return rollout.Rollout(prompt_ids=empty, prompt_mask=empty.astype(bool), comp_ids=ids,
                         comp_mask=mask, logprobs=np.zeros(ids.shape, np.float32),
                         row_prompt=np.repeat(np.arange(len(groups)), samples),
                         prompt_group=samples, completions=[s.text for s in flat],
                         truncated=np.array([s.truncated for s in flat]))


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
    raise config_lib.UnknownNameError(
        f"config.eval.evaluators names {name!r}; registered evaluators: {sorted(EVALUATORS)} (a "
        "system's own register when its module loads)")
  return EVALUATORS[name]
