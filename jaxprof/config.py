"""Checking a run's config: unknown override keys, types, value ranges; freezing and saving it.

The config file's own defaults are the schema. ml_collections already keeps each field's type
when a flag overrides it; this module adds what it lacks:

* `parse_flags` (an absl `flags_parser` for `app.run`) and `check_overrides`: turn a mistyped
  override (`--config.rl.kl_cof=0.1`) into
  "unknown config key 'rl.kl_cof'; did you mean 'rl.kl_coef'?" instead of a traceback.
* `validate`: leaf types against a reference config and value ranges of well-known fields
  (positive sizes, probabilities in [0, 1], stage names).
* `lock_and_save`: a FrozenConfigDict for the run, written to `workdir/config.json`.

Typical use in train.py:

  _CONFIG = config_flags.DEFINE_config_file("config")
  def main(argv):
    config = jaxprof.config.lock_and_save(jaxprof.config.validate(_CONFIG.value), workdir)
  app.run(main, flags_parser=jaxprof.config.parse_flags)
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.util
import json
import math
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging

from jaxprof import paths
from jaxprof import stages as stages_lib


class ConfigError(flags.Error, app.UsageError, ValueError):
  """A config key or value is invalid.

  Raised from `main`, absl's `app.run` reports it as a usage error (message, exit code 1) rather
  than a traceback.
  """


class UnknownNameError(ConfigError, KeyError):
  """The config names a registered thing (a reward, an evaluator, a resource) that is not there."""


# ---------------------------------------------------------------------------------------------
# Keys.
# ---------------------------------------------------------------------------------------------


def dotted_paths(config: Any, prefix: str = "") -> list[str]:
  """Every field of `config` as a dotted path, sections included: ['optim', 'optim.lr', ...]."""
  paths = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    paths.append(path)
    if isinstance(value, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
      paths.extend(dotted_paths(value, prefix=path + "."))
  return paths


def check_keys(config: Any, dotted_keys: Iterable[str]) -> None:
  """Raises ConfigError naming each key absent from `config`, with its nearest valid keys."""
  valid = dotted_paths(config)
  valid_set = set(valid)
  problems = []
  for key in dotted_keys:
    if key in valid_set:
      continue
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close:  # Try the leaf name alone: 'kl_cof' inside a mistyped section.
      leaf = key.rsplit(".", 1)[-1]
      close = [p for p in valid if difflib.get_close_matches(leaf, [p.rsplit(".", 1)[-1]],
                                                             cutoff=0.8)][:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    problems.append(f"unknown config key {key!r}{hint}")
  if problems:
    raise ConfigError("\n".join(problems))


def override_keys(argv: Sequence[str], flag_name: str = "config") -> list[str]:
  """The dotted keys overridden in `argv`: `--config.rl.kl_coef=1` and `--noconfig.x` forms."""
  pattern = re.compile(rf"^--?(?:no)?{re.escape(flag_name)}\.([^=\s]+)")
  return [m.group(1) for arg in argv if (m := pattern.match(arg))]


def _config_arg(argv: Sequence[str], flag_name: str) -> str | None:
  """The value of `--config=path[:arg]` (or `--config path`) in `argv`."""
  for i, arg in enumerate(argv):
    m = re.match(rf"^--?{re.escape(flag_name)}(=(.*))?$", arg)
    if m:
      if m.group(1) is not None:
        return m.group(2)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def load_config(spec: str) -> Any:
  """Runs a config file like `--config=` does: `"configs/girl.py:tiny"` -> `get_config("tiny")`.

  Without a `:arg` part, `get_config()` is called with no argument.
  """
  path, sep, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      f"_jaxprof_config_{pathlib.Path(path).stem}", path)
  if module_spec is None or not os.path.exists(path):
    raise ConfigError(f"config file {path!r} not found")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def check_overrides(
    argv: list[str], flag_name: str = "config", flag_values: flags.FlagValues | None = None
) -> list[str]:
  """Parses `argv` into `flag_values` (default: absl's FLAGS), naming unknown override keys.

  For an unknown `--config.<key>` ml_collections raises a bare KeyError/AttributeError from deep
  inside flag parsing; here it becomes a ConfigError listing every unknown key with its nearest
  valid keys. Returns the remaining arguments, like `flag_values(argv)`.
  """
  try:
    return (flags.FLAGS if flag_values is None else flag_values)(argv)
  except (KeyError, AttributeError) as e:
    path = _config_arg(argv, flag_name)
    if path is None:
      raise
    config = load_config(path)
    check_keys(config, override_keys(argv, flag_name))
    raise ConfigError(f"could not apply --{flag_name} overrides: {e}") from e


def parse_flags(argv: list[str]) -> list[str]:
  """absl `flags_parser` for `app.run(main, flags_parser=parse_flags)`: like absl's own, a bad
  flag prints one message (with the nearest valid config keys) and exits with status 1.
  """
  try:
    return check_overrides(argv)
  except flags.Error as e:
    sep = "\n" if "\n" in str(e) else " "
    sys.stderr.write(f"FATAL Flags parsing error:{sep}{e}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # Returns what is wrong, or None.


def _number(v: Any) -> bool:
  return isinstance(v, int | float) and not isinstance(v, bool)


# Numeric checks pass non-numbers through: a field's type is `reference`'s job, and a name that
# happens to match a pattern (`use_dropout: bool`) must not be range-checked.


def positive(v: Any) -> str | None:
  return "must be > 0" if _number(v) and not v > 0 else None


def non_negative(v: Any) -> str | None:
  return "must be >= 0" if _number(v) and not v >= 0 else None


def probability(v: Any) -> str | None:
  return "must be in [0, 1]" if _number(v) and not 0 <= v <= 1 else None


def positive_or_minus_one(v: Any) -> str | None:
  return None if isinstance(v, int) and (v > 0 or v == -1) else "must be -1 or an int > 0"


def stage_names(v: Any) -> str | None:
  names = (v,) if isinstance(v, str) else tuple(v)
  bad = [s for s in names if s not in stages_lib.STAGE_NAMES]
  if bad:
    return f"unknown stage(s) {bad}; valid stages are: {', '.join(stages_lib.STAGE_NAMES)}"
  return None


# (glob over the dotted path, check). Applied to every leaf whose path matches; None skips.
DEFAULT_RULES: tuple[tuple[str, Check], ...] = (
    ("stages", stage_names),
    ("*batch_size", positive),
    ("*total_steps", positive),
    ("*max_len*", positive),
    ("*.group_size", positive),
    ("*num_layers", positive),
    ("*num_heads", positive),
    ("*.keep", positive),
    ("*optim.grad_accum", positive),  # every section's optimizer (sft., rl., reward_model.)
    ("*.every", non_negative),  # 0 may mean "never".
    ("*.lr", non_negative),
    ("*warmup*", non_negative),
    ("*weight_decay", non_negative),
    ("*clip_norm", non_negative),
    ("*kl_coef", non_negative),
    ("*temperature", non_negative),
    ("*.top_p", probability),
    ("*dropout*", probability),
    ("*_prob", probability),
    ("*.b1", probability),
    ("*.b2", probability),
    ("*.gamma", probability),
    ("*.lam", probability),
    ("mesh.data", positive_or_minus_one),
    ("mesh.fsdp", positive_or_minus_one),
    ("mesh.tensor", positive_or_minus_one),
)


def _leaves(config: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
      yield from _leaves(value, path + ".")
    else:
      yield path, value


def _same_kind(value: Any, ref: Any) -> bool:
  """Whether `value` may stand where the reference has `ref` (ints may stand for floats)."""
  if ref is None or value is None:
    return True
  if isinstance(ref, bool) or isinstance(value, bool):
    return isinstance(ref, bool) and isinstance(value, bool)
  if isinstance(ref, float):
    return _number(value)
  if isinstance(ref, list | tuple):
    return isinstance(value, list | tuple)
  return isinstance(value, type(ref))


def validate(
    config: Any,
    reference: Any | None = None,
    rules: Sequence[tuple[str, Check]] = DEFAULT_RULES,
) -> Any:
  """Checks `config`'s values; returns it unchanged, or raises ConfigError listing every problem.

  Args:
    config: the loaded config (after command-line overrides).
    reference: optional config with the defaults (e.g. `get_config()` of the same file): each
      leaf of `config` must have its reference leaf's type, and no key may be missing or extra.
    rules: (glob over dotted paths, check) pairs; see DEFAULT_RULES. Non-finite floats are
      always rejected.
  """
  problems = []
  for path, value in _leaves(config):
    if isinstance(value, float) and not math.isfinite(value):
      problems.append(f"{path}={value!r}: must be finite")
      continue
    for pattern, check in rules:
      if value is not None and fnmatch.fnmatchcase(path, pattern):
        msg = check(value)
        if msg:
          problems.append(f"{path}={value!r}: {msg}")
  if reference is not None:
    ref = dict(_leaves(reference))
    got = dict(_leaves(config))
    for path in sorted(set(got) - set(ref)):
      problems.append(f"{path}: not in the reference config")
    for path in sorted(set(ref) - set(got)):
      problems.append(f"{path}: missing (the reference config has it)")
    for path in sorted(set(ref) & set(got)):
      if not _same_kind(got[path], ref[path]):
        problems.append(f"{path}={got[path]!r}: expected {type(ref[path]).__name__} like the "
                        f"default {ref[path]!r}")
  problems += _algorithm_sections(config)
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
  return config


ALGORITHMS = ("ppo", "grpo")
# Allowed values of RL settings: the validator checks them here and the code that reads each
# setting imports its list from here (config sits below rl/ and trainers/ in the layers).
KL_ESTIMATORS = ("k1", "k2", "k3", "k3_inv")  # rl.kl_estimator
PPO_ADVANTAGES = ("gae", "sequence")  # ppo.advantage
TRUNCATED_RULES = ("keep", "mask", "penalty")  # rl.truncated


def _algorithm_sections(config: Any) -> list[str]:
  """rl.algo's own section is present and the other algorithm's is not."""
  if "rl" not in config or "algo" not in config.rl:
    return []
  algo = config.rl.algo
  if algo not in ALGORITHMS:
    return [f"rl.algo={algo!r}: expected one of {ALGORITHMS}"]
  problems = []
  if algo not in config:
    problems.append(f"rl.algo={algo!r} but the config has no {algo!r} section: pick the "
                    f"algorithm with the config's argument (e.g. configs/girl.py:algo={algo})")
  problems += [f"{other}: a section for rl.algo={other!r}, but rl.algo={algo!r}"
               for other in ALGORITHMS if other != algo and other in config]
  return problems + _rl_combinations(config)


def _rl_combinations(config: Any) -> list[str]:
  """Settings that are each valid but together train something other than they say."""
  rl, problems = config.rl, []
  if rl.get("algo") == "grpo" and rl.get("kl_coef", 0) > 0 and rl.get("kl_estimator") == "k1":
    problems.append("rl.kl_estimator='k1' in GRPO's loss: its expected gradient is 0 (E_pi[grad "
                    "log pi] = 0), so the KL term does nothing; use 'k3' (the default) or 'k2'")
  grpo = config.get("grpo") or {}
  if grpo.get("advantage") == "dr_grpo" and rl.get("agg_mode") != "seq_mean_token_sum_norm":
    problems.append(f"grpo.advantage='dr_grpo' with rl.agg_mode={rl.get('agg_mode')!r}: Dr.GRPO "
                    "is both its advantage and its length-unbiased aggregation; set "
                    "--config.rl.agg_mode=seq_mean_token_sum_norm")
  clip = max(rl.get("eps_low", 0), rl.get("eps_high") or 0)
  if rl.get("ratio_level") == "sequence" and clip > 0.01:
    problems.append(f"rl.ratio_level='sequence' (GSPO) with clip range {rl.get('eps_low')}/"
                    f"{rl.get('eps_high')}: a sequence ratio is clipped to ~3e-4/4e-4 (GSPO); set "
                    "--config.rl.eps_low=3e-4 --config.rl.eps_high=4e-4")
  ppo = config.get("ppo") or {}
  if ppo.get("advantage", "gae") not in PPO_ADVANTAGES:
    problems.append(f"ppo.advantage={ppo.get('advantage')!r}: expected one of {PPO_ADVANTAGES}")
  backbone = (config.get("reward_model") or {}).get("backbone", "")
  whole_text = ("encoder", "embedding", "engagement")
  if ppo.get("critic_init") == "reward_model" and backbone in whole_text:
    problems.append(f"ppo.critic_init='reward_model' needs a causal-LM reward model, but "
                    f"reward_model.backbone={backbone!r} scores whole texts; set "
                    "--config.ppo.critic_init=policy:6 (the policy's first 6 layers)")
  if rl.get("kl_estimator", "k1") not in KL_ESTIMATORS:
    problems.append(f"rl.kl_estimator={rl.get('kl_estimator')!r}: expected one of "
                    f"{KL_ESTIMATORS}")
  if "truncated" in rl and rl.truncated not in TRUNCATED_RULES:
    problems.append(f"rl.truncated={rl.truncated!r}: expected one of {TRUNCATED_RULES}")
  return problems + _aux_nll(rl)


def _aux_nll(rl: Any) -> list[str]:
  """rl.aux_nll: a coefficient >= 0; when on, a target column and the GRPO loss."""
  aux = rl.get("aux_nll") or {}
  coef = aux.get("coef", 0.0)
  if not _number(coef) or coef <= 0:
    return [f"rl.aux_nll.coef={coef!r}: must be >= 0"] if _number(coef) and coef < 0 else []
  problems = []
  if aux.get("after", "prompt") not in ("prompt", "completion"):
    problems.append(f"rl.aux_nll.after={aux.get('after')!r}: the target follows the 'prompt' or "
                    "each sampled 'completion'")
  if not aux.get("column"):
    problems.append(f"rl.aux_nll.coef={coef} needs rl.aux_nll.column: the field of the system's "
                    "RL rows that holds each prompt's target text")
  if rl.get("algo") != "grpo":
    problems.append(f"rl.aux_nll.coef={coef} is implemented for GRPO only, not rl.algo="
                    f"{rl.get('algo')!r}; set --config.rl.aux_nll.coef=0")
  return problems


# ---------------------------------------------------------------------------------------------
# Freezing and saving.
# ---------------------------------------------------------------------------------------------


def to_json(config: Any) -> str:
  """The config as pretty, key-sorted JSON (tuples become lists)."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    config = ml_collections.ConfigDict(config)
  return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True) + "\n"


# Keys whose change means another run, not a resumed one (`lock_and_save`).
FOREIGN_KEYS = ("data.", "model.path")


def lock_and_save(
    config: Any, workdir: str | os.PathLike | None, filename: str = "config.json"
) -> ml_collections.FrozenConfigDict:
  """Freezes `config` for the run and writes it to `workdir/filename` (process 0 only).

  If the workdir already holds a different config (a resumed run with changed flags), the
  changed keys are logged as a warning and the file is replaced; a change of system, data or
  model.path (another run's workdir: its completed stages would feed this one) is a ConfigError.
  """
  frozen = ml_collections.FrozenConfigDict(config)
  if workdir is None or jax.process_index() != 0:
    return frozen
  path = paths.as_path(workdir) / filename
  text = to_json(config)
  if path.exists():
    old_text = path.read_text()
    if old_text != text:
      old, new = dict(_leaves(ml_collections.ConfigDict(json.loads(old_text)))), dict(
          _leaves(ml_collections.ConfigDict(json.loads(text))))
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      foreign = [k for k in changed if k == "system" or k.startswith(FOREIGN_KEYS)]
      if foreign:
        raise ConfigError(f"--workdir={workdir} holds a run of another config "
                          f"({', '.join(foreign)} differ from {path}); pass a new --workdir, or "
                          f"delete {path} to reuse the directory")
      logging.warning("Config differs from the one saved in %s; changed keys: %s",
                      path, ", ".join(changed))
  stages_lib.atomic_write_text(path, text)
  return frozen
