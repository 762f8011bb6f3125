r"""Write profiles / job descriptions with a (trained) policy.

  python -m jaxprof.generate --prompt="Describe the ideal job for a senior data engineer."
  python -m jaxprof.generate --config=configs/langptune.py --num_examples=3
  python -m jaxprof.generate --config=configs/girl.py --model=runs/girl/ppo/export \
      --output=runs/girl/jds.jsonl

With --config, prompts come from that system's held-out rows (a user's movie history, a CV, a
member's sources); otherwise from --prompt. --model is an HF directory or "packaged" (SmolLM2).
Output is JSON lines (prompt, completion), written atomically to --output or printed.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from jaxprof import api, stages, systems
from jaxprof.trainers import policy

_CONFIG = config_flags.DEFINE_config_file("config", None, "System config (prompts from its data).")
_MODEL = flags.DEFINE_string("model", api.PACKAGED, "HF directory of the policy, or 'packaged'.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A user message (repeatable).")
_NUM = flags.DEFINE_integer("num_examples", 3, "Held-out rows to write for (with --config).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate per completion.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUTPUT = flags.DEFINE_string("output", None, "JSONL file to write (default: print).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None and not _PROMPT.value:
    raise app.UsageError("give --prompt=... or --config=configs/<system>.py")
  lm = api.load_lm(_MODEL.value)
  if _CONFIG.value is not None:
    system = systems.get(_CONFIG.value)
    rows = system.rl_rows("eval")[:_NUM.value]
    messages = [system.prompt(r) for r in rows]
  else:
    messages = [[{"role": "user", "content": p}] for p in _PROMPT.value]
  completions = lm.generate(messages, max_new_tokens=_MAX_NEW.value,
                            temperature=_TEMPERATURE.value, seed=_SEED.value)
  lines = [json.dumps({"prompt": policy.plain_text(m), "completion": c})
           for m, c in zip(messages, completions, strict=True)]
  if _OUTPUT.value:
    stages.atomic_write_text(_OUTPUT.value, "\n".join(lines) + "\n")
  else:
    for m, c in zip(messages, completions, strict=True):
      print(f"--- prompt ---\n{policy.plain_text(m)}\n--- completion ---\n{c}\n")


if __name__ == "__main__":
  app.run(main)
