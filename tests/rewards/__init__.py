"""Reward tests. `tiny_encoder` is a random-init BERT with MiniLM's tokenizer (fast tests)."""

import functools

import jax
import tokenizers

from jaxprof import assets
from jaxprof.models import bert
from jaxprof.models.encoder import TextEncoder

TINY_BERT = bert.BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=2)


@functools.cache
def tiny_encoder(seed: int = 0) -> TextEncoder:
  tok = tokenizers.Tokenizer.from_file(str(assets.asset_path(assets.MINILM, "model")
                                           / "tokenizer.json"))
  return TextEncoder(TINY_BERT, bert.init_params(TINY_BERT, jax.random.key(seed)), tok,
                     max_length=128, batch_size=16)
