"""BLUE: Bridging Textual Profiles and Latent User Embeddings for Personalization.

The same MovieLens-100K users and held-out ranking truth as LangPTune (`langptune.System`); what
differs is the training signal (configs/blue.py): a frozen embedding model pulls the profile's
embedding towards the user's positive (next) item and away from negatives, and the paper's
text-space next-item supervision is a token NLL in the GRPO loss (`rl.aux_nll`) of the next
item's text ("Next item: <title (year) - genres>") on a new line after each sampled profile. Its
trainable-embedder variant is not built yet (issue: LangPTune and BLUE reproduced).
"""

from __future__ import annotations

from jaxprof.rewards.embedding import next_item_target
from jaxprof.systems import langptune


class System(langptune.System):
  """LangPTune's rows, prompts and truth; BLUE's contrastive embedding reward is in the config.

  RL training rows also carry `next_item_text`, the target of the next-item NLL (a newline, then
  "Next item: ...", as it follows the profile): built from the
  row's own held-out training item (the validation item), never from the test item, and not a
  reward column (`columns`), so no reward and no evaluation reads it.
  """

  def rl_rows(self, part):
    rows = super().rl_rows(part)
    if part == "train":
      for r in rows:
        r["next_item_text"] = "\n" + next_item_target(r["target_text"])
    return rows
