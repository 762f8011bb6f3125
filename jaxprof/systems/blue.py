"""BLUE: Bridging Textual Profiles and Latent User Embeddings for Personalization.

The same MovieLens-100K users and held-out ranking truth as LangPTune (`langptune.System`); what
differs is the reward (configs/blue.py): a frozen embedding model pulls the profile's embedding
towards the user's positive (next) item and away from negatives. The paper's text-space
next-item supervision and its trainable-embedder variant are not built yet (issue: LangPTune and
BLUE reproduced).
"""

from __future__ import annotations

from jaxprof.systems import langptune


class System(langptune.System):
  """LangPTune's rows, prompts and truth; BLUE's contrastive embedding reward is in the config."""
