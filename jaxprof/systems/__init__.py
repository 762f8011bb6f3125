"""One module per paper: what its data means to the stages, and how its results are judged.

  config.system  paper (the module's docstring names what it reproduces)
  girl           GIRL: Generative Job Recommendations with Large Language Model
  langptune      End-to-end Training for Recommendation with Language-based User Profiles
  blue           BLUE: Bridging Textual Profiles and Latent User Embeddings for Personalization
  hifi           High Fidelity Textual User Representation over Heterogeneous Sources via RL

A system (`base.System`) turns its data set's rows into prompts, SFT examples and reward pairs,
provides the resources its rewards read (an encoder, the trained reward model), measures generated
text against hidden truth, and may register evaluators for its paper's tables. Everything outside
this package is generic: it names no paper and no data set.
"""

from __future__ import annotations

import importlib

from jaxprof import config as config_lib
from jaxprof.systems.base import System

SYSTEMS = ("girl", "langptune", "blue", "hifi")


def get(config) -> System:
  """The System of `config.system` (its module is imported on first use)."""
  name = config.get("system")
  if name not in SYSTEMS:
    raise config_lib.ConfigError(f"config.system={name!r}; known systems: {', '.join(SYSTEMS)} "
                                 "(one module each in jaxprof/systems/)")
  return importlib.import_module(f"jaxprof.systems.{name}").System(config)


__all__ = ["SYSTEMS", "System", "get"]
