"""A thin tokenizer wrapper that returns numpy batches with explicit masks.

It loads any Hugging Face tokenizer directory (a `tokenizer.json`, or a sentencepiece
`tokenizer.model`) through `transformers` and adds the few things the RL loop needs:
fixed-shape int32 batches, boolean masks, a set of EOS ids and a pad id that is safe to use.

Why explicit masks: in SmolLM2 `<|im_end|>` is both the EOS token and part of every chat turn, and
its tokenizer pads with it too. A mask computed as `ids != pad_id` would drop real tokens. We pick a
pad id that is neither EOS nor BOS and always hand back the mask next to the ids.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_SIDES = ("left", "right")


class Tokenizer:
  """Text <-> token ids for one model directory.

  Attributes:
    path: the directory it was loaded from.
    hf: the underlying `transformers` tokenizer (for anything this class does not cover).
    eos_ids: every id that ends a generation (tokenizer EOS plus generation_config EOS ids).
    bos_id: beginning-of-sequence id, or None.
    pad_id: id written into padded positions; never an EOS or BOS id.
    vocab_size: number of ids the tokenizer can produce (base vocabulary plus added tokens).
  """

  def __init__(self, hf_tokenizer: Any, path: pathlib.Path, generation_eos: Sequence[int] = ()):
    self.hf = hf_tokenizer
    self.path = path
    eos = [hf_tokenizer.eos_token_id] if hf_tokenizer.eos_token_id is not None else []
    self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(int(i) for i in [*eos, *generation_eos]))
    bos = hf_tokenizer.bos_token_id
    self.bos_id: int | None = None if bos is None else int(bos)
    self.vocab_size: int = len(hf_tokenizer)
    self.pad_id: int = self._choose_pad_id()

  @classmethod
  def from_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
    """Loads the tokenizer of an HF model directory (offline).

    Raises:
      FileNotFoundError: the directory is missing or has neither tokenizer file.
    """
    import transformers  # pylint: disable=g-import-not-at-top  (slow import, only when loading)

    path = pathlib.Path(path)
    if not path.is_dir():
      raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    if (path / "tokenizer.json").is_file() or _config_names_class(path):
      hf = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    elif (path / "tokenizer.model").is_file():
      # A bare sentencepiece model: AutoTokenizer would guess a generic BPE and drop the
      # sentencepiece word-boundary handling, so use the Llama (sentencepiece) converter.
      hf = transformers.LlamaTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
      raise FileNotFoundError(
          f"no tokenizer in {path}: looked for {', '.join(TOKENIZER_FILES)}")
    return cls(hf, path, _generation_eos_ids(path))

  # --------------------------------------------------------------------------- encoding

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of one string (BOS/EOS added only if the tokenizer is configured to)."""
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}")
    return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

  def encode_batch(
      self,
      texts: Sequence[str],
      *,
      max_length: int | None = None,
      padding_side: str = "right",
      truncation_side: str = "right",
      add_special_tokens: bool = True,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Encodes and pads a batch.

    Args:
      texts: B strings.
      max_length: if given, rows longer than this are truncated and every row is padded to exactly
        this length (a static shape for jit); otherwise T is the longest row.
      padding_side: "left" (prompts for generation) or "right" (training targets).
      truncation_side: "right" keeps the first `max_length` tokens, "left" keeps the last.
      add_special_tokens: as in `encode`.
    Returns:
      ids: [B, T] int32, `pad_id` where the mask is False.
      mask: [B, T] bool, True on real tokens.
    """
    if isinstance(texts, str):
      raise TypeError("encode_batch expects a sequence of strings, got a single str")
    _check_side("padding_side", padding_side)
    _check_side("truncation_side", truncation_side)
    if max_length is not None and max_length < 0:
      raise ValueError(f"max_length must be >= 0, got {max_length}")
    rows = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
    if max_length is not None:
      rows = [r[len(r) - max_length:] if truncation_side == "left" else r[:max_length]
              for r in rows]
    width = max_length if max_length is not None else max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), self.pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for b, row in enumerate(rows):
      n = len(row)
      cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
      ids[b, cols] = row
      mask[b, cols] = True
    return ids, mask

  # --------------------------------------------------------------------------- decoding

  def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
    """Text of `ids: [T]`."""
    return self.hf.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                          skip_special_tokens=skip_special_tokens)

  def decode_batch(
      self, ids: np.ndarray, mask: np.ndarray, *, skip_special_tokens: bool = True
  ) -> list[str]:
    """Texts of `ids: [B, T]`, using only positions where `mask: [B, T]` is True."""
    ids, mask = np.asarray(ids), np.asarray(mask, dtype=bool)
    if ids.ndim != 2 or ids.shape != mask.shape:
      raise ValueError(f"decode_batch needs ids and mask of equal [B, T] shape, got "
                       f"{ids.shape} and {mask.shape}")
    return [self.decode(row[keep], skip_special_tokens=skip_special_tokens)
            for row, keep in zip(ids, mask, strict=True)]

  # --------------------------------------------------------------------------- chat

  @property
  def has_chat_template(self) -> bool:
    return bool(getattr(self.hf, "chat_template", None))

  def apply_chat_template(
      self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
  ) -> str:
    """Formats `[{"role": ..., "content": ...}, ...]` as the model's chat prompt string."""
    if not self.has_chat_template:
      raise ValueError(f"the tokenizer in {self.path} has no chat template "
                       "(tokenizer_config.json has no 'chat_template')")
    return self.hf.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False)

  # --------------------------------------------------------------------------- internals

  def _choose_pad_id(self) -> int:
    """The tokenizer's pad id unless it is EOS/BOS; else `<|endoftext|>`, unk, then lowest id."""
    avoid = {*self.eos_ids, self.bos_id}
    vocab = self.hf.get_vocab()
    candidates = [self.hf.pad_token_id, vocab.get("<|endoftext|>"), self.hf.unk_token_id]
    for candidate in candidates:
      if candidate is not None and candidate not in avoid:
        return int(candidate)
    return next(i for i in range(self.vocab_size + len(avoid)) if i not in avoid)

  def __repr__(self) -> str:
    return (f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, eos_ids={self.eos_ids}, "
            f"bos_id={self.bos_id}, pad_id={self.pad_id})")


def _check_side(name: str, value: str) -> None:
  if value not in _SIDES:
    raise ValueError(f"{name} must be one of {_SIDES}, got {value!r}")


def _config_names_class(path: pathlib.Path) -> bool:
  """True if tokenizer_config.json says which tokenizer class to build (and a file exists)."""
  config = path / "tokenizer_config.json"
  if not config.is_file() or not (path / "tokenizer.model").is_file():
    return False
  return bool(json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class"))


def _generation_eos_ids(path: pathlib.Path) -> tuple[int, ...]:
  """eos_token_id(s) from generation_config.json (int or list), if the file exists."""
  config = path / "generation_config.json"
  if not config.is_file():
    return ()
  try:
    eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
  except json.JSONDecodeError as e:
    raise ValueError(f"{config} is not valid JSON: {e}") from e
  if eos is None:
    return ()
  return tuple(int(i) for i in (eos if isinstance(eos, list) else [eos]))
