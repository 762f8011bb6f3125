"""Model shapes without weights: a named shape, an HF config.json, or a checkpoint directory.

`jaxprof.compile_check` builds abstract params from these, so a step can be compiled for a model
whose weights are not on this machine. The named shapes are the config.json fields (facts of the
published checkpoints) that decide the params' shapes; anything else comes from `config_from_hf`
defaults.
"""

from __future__ import annotations

import json
import os
import pathlib

from jaxprof.models import causal_lm, hf

# Public config.json values of the checkpoints (shape-deciding fields only).
NAMED: dict[str, dict] = {
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
    "smollm2-1.7b": dict(model_type="llama", vocab_size=49152, hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, head_dim=64, tie_word_embeddings=True,
                         rope_theta=130000.0, rms_norm_eps=1e-5, max_position_embeddings=8192),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536,
                         intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
                         rms_norm_eps=1e-6, max_position_embeddings=32768),
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False, rope_theta=1e6,
                       rms_norm_eps=1e-6, max_position_embeddings=32768),
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                      intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, tie_word_embeddings=False, rope_theta=500000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=8192),
}


def from_name_or_path(name: str | os.PathLike) -> causal_lm.LMConfig:
  """The causal-LM config of a named shape (`NAMED`), a config.json file, or an HF checkpoint
  directory (only its config.json is read; "packaged" is the packaged SmolLM2)."""
  key = str(name).lower()
  if key in NAMED:
    return hf.config_from_hf(NAMED[key], source=f"named shape {key!r}")
  path = pathlib.Path(name)
  if path.is_file():
    try:
      return hf.config_from_hf(json.loads(path.read_text()), source=str(path))
    except json.JSONDecodeError as e:
      raise hf.CheckpointError(f"{path}: not valid JSON ({e})") from None
  if str(name) != hf.PACKAGED and not path.is_dir():
    raise hf.CheckpointError(f"model {str(name)!r} is neither a named shape "
                             f"({', '.join(NAMED)}) nor a config.json or checkpoint directory")
  directory = hf.resolve_model_dir(name)
  return hf.config_from_hf(hf.read_hf_config(directory), source=str(directory / "config.json"))
