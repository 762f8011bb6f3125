"""jaxprof.tokenizer: a tiny byte-level BPE built here (fast), sentencepiece, and SmolLM2 (slow)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from jaxprof.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n" \
           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Senior data engineer with ten years of Spark, Kafka and Python experience.",
    "Users who watched Toy Story (1995) also liked Aladdin (1992) - Animation|Comedy.",
    "Numbers 0123456789 and punctuation !?;:'\"()[]{}",
] * 20
TEXTS = [
    "The lazy dog.",
    "héllo wörld: naïve café, 日本語 and emoji 🤗👍",
    "  leading spaces\n\nnew lines\tand tabs  ",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
]


def _write_bpe_dir(path: pathlib.Path, *, chat_template: str | None = TEMPLATE,
                   generation_eos: list[int] | None = None) -> pathlib.Path:
  """A SmolLM2-like byte-level BPE: eos = pad = <|im_end|>, bos = <|im_start|>, unk = id 0."""
  import transformers
  from tokenizers import Tokenizer as RawTokenizer
  from tokenizers import decoders, models, pre_tokenizers, trainers

  raw = RawTokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  raw.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>",
      pad_token="<|im_end|>", unk_token="<|endoftext|>")
  if chat_template is not None:
    hf.chat_template = chat_template
  hf.save_pretrained(str(path))
  if generation_eos is not None:
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
  return path


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Tokenizer:
  return Tokenizer.from_dir(_write_bpe_dir(tmp_path_factory.mktemp("bpe")))


def test_special_ids_and_pad_avoid_eos(bpe):
  assert bpe.eos_ids == (2,) and bpe.bos_id == 1
  assert bpe.hf.pad_token_id == 2  # the tokenizer itself pads with EOS ...
  assert bpe.pad_id == 0  # ... so we pad with <|endoftext|>
  assert bpe.vocab_size == len(bpe.hf) == 400


def test_generation_config_eos_ids_are_merged(tmp_path):
  tok = Tokenizer.from_dir(_write_bpe_dir(tmp_path, generation_eos=[2, 0]))
  assert tok.eos_ids == (2, 0)
  assert tok.pad_id not in (0, 1, 2)  # <|endoftext|> and unk are EOS now: lowest free id


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(bpe, text):
  ids = bpe.encode(text)
  assert all(isinstance(i, int) for i in ids)
  assert bpe.decode(ids, skip_special_tokens=False) == text


def test_decode_skips_special_tokens_by_default(bpe):
  ids = bpe.encode("<|im_start|>user\nhi<|im_end|>")
  assert ids[0] == 1 and ids[-1] == 2
  assert bpe.decode(ids) == "user\nhi"
  assert bpe.decode(np.asarray(ids, np.int32), skip_special_tokens=False).endswith("<|im_end|>")


@pytest.mark.parametrize("side", ["left", "right"])
def test_encode_batch_padding_and_masks(bpe, side):
  ids, mask = bpe.encode_batch(TEXTS, padding_side=side)
  rows = [bpe.encode(t) for t in TEXTS]
  assert ids.dtype == np.int32 and mask.dtype == np.bool_
  assert ids.shape == mask.shape == (len(TEXTS), max(map(len, rows)))
  for b, row in enumerate(rows):
    assert mask[b].sum() == len(row)
    assert ids[b][mask[b]].tolist() == row
    assert (ids[b][~mask[b]] == bpe.pad_id).all()
    real = np.flatnonzero(mask[b])
    if len(row):  # real tokens are contiguous and flush with the chosen side
      assert real[-1] - real[0] + 1 == len(row)
      assert (real[-1] == ids.shape[1] - 1) if side == "left" else (real[0] == 0)
  # The chat turn ends with EOS: it is masked in, and no padded position holds EOS.
  chat = TEXTS.index("<|im_start|>user\nhi<|im_end|>\n")
  assert 2 in ids[chat][mask[chat]].tolist()
  assert not np.isin(ids[~mask], bpe.eos_ids).any()
  assert bpe.decode_batch(ids, mask, skip_special_tokens=False) == TEXTS


@pytest.mark.parametrize("truncation_side", ["left", "right"])
def test_encode_batch_truncation_and_fixed_width(bpe, truncation_side):
  long, short = TEXTS[1], "dog"
  full = bpe.encode(long)
  ids, mask = bpe.encode_batch([long, short], max_length=6, truncation_side=truncation_side,
                               padding_side="left")
  assert ids.shape == (2, 6)
  kept = full[-6:] if truncation_side == "left" else full[:6]
  assert ids[0].tolist() == kept and mask[0].all()
  assert mask[1].sum() == len(bpe.encode(short)) and mask[1, -1]
  wide, wide_mask = bpe.encode_batch([short], max_length=12)
  assert wide.shape == (1, 12) and wide_mask[0, : len(bpe.encode(short))].all()


def test_encode_batch_edge_cases(bpe):
  ids, mask = bpe.encode_batch([])
  assert ids.shape == mask.shape == (0, 0)
  ids, mask = bpe.encode_batch(["", ""])
  assert ids.shape == (2, 0)
  assert bpe.decode_batch(ids, mask) == ["", ""]
  with pytest.raises(TypeError, match="single str"):
    bpe.encode_batch("not a list")
  with pytest.raises(ValueError, match="padding_side"):
    bpe.encode_batch(["a"], padding_side="middle")
  with pytest.raises(ValueError, match="truncation_side"):
    bpe.encode_batch(["a"], truncation_side="up")
  with pytest.raises(ValueError, match=r"\[B, T\]"):
    bpe.decode_batch(np.zeros((2, 3), np.int32), np.ones((2, 4), bool))


def test_chat_template(bpe, tmp_path):
  prompt = bpe.apply_chat_template([{"role": "user", "content": "hello"}])
  assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
  no_prompt = bpe.apply_chat_template([{"role": "user", "content": "hello"}],
                                      add_generation_prompt=False)
  assert not no_prompt.endswith("assistant\n")
  plain = Tokenizer.from_dir(_write_bpe_dir(tmp_path / "plain", chat_template=None))
  assert not plain.has_chat_template
  with pytest.raises(ValueError, match=r"plain.*no chat template"):
    plain.apply_chat_template([{"role": "user", "content": "hello"}])


def test_missing_dir_and_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    Tokenizer.from_dir(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty.*tokenizer\.json.*tokenizer\.model"):
    Tokenizer.from_dir(tmp_path / "empty")


def test_sentencepiece_model_dir(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  model = tmp_path / "spm"
  model.mkdir()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_prefix=str(model / "tokenizer"), vocab_size=120,
      model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  reference = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
  tok = Tokenizer.from_dir(model)
  assert tok.vocab_size == 120 and tok.eos_ids == (2,) and tok.bos_id == 1
  assert tok.pad_id not in (1, 2)
  for text in ["The lazy dog jumps.", "Senior data engineer with Python"]:
    pieces = [i for i in tok.encode(text) if i != tok.bos_id]
    assert pieces == reference.encode(text)
    assert tok.decode(tok.encode(text)) == text


# ------------------------------------------------------------------------------ slow: SmolLM2


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
  from jaxprof.models.gguf import packaged_smollm2_dir

  return Tokenizer.from_dir(packaged_smollm2_dir())


@pytest.mark.slow
def test_smollm2_special_ids(smollm2):
  import gguf

  from jaxprof import assets
  from jaxprof.models.gguf import SMOLLM2_GGUF

  reader = gguf.GGUFReader(assets.asset_path(assets.SMOLLM2, SMOLLM2_GGUF))
  assert smollm2.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data) == 49152
  assert smollm2.eos_ids == (2,) and smollm2.hf.convert_ids_to_tokens(2) == "<|im_end|>"
  assert smollm2.bos_id == 1
  assert smollm2.pad_id not in smollm2.eos_ids and smollm2.pad_id != smollm2.bos_id
  assert smollm2.hf.convert_ids_to_tokens(smollm2.pad_id) == "<|endoftext|>"


@pytest.mark.slow
def test_smollm2_chat_batch_keeps_im_end_in_mask(smollm2):
  prompts = [smollm2.apply_chat_template([{"role": "user", "content": q}])
             for q in ("What is the capital of France?", "Hi")]
  assert prompts[0].endswith("<|im_start|>assistant\n")
  ids, mask = smollm2.encode_batch(prompts, padding_side="left")
  for b, prompt in enumerate(prompts):
    row = smollm2.encode(prompt)
    assert ids[b][mask[b]].tolist() == row
    assert row.count(2) == 2  # system turn and user turn each end with <|im_end|> (= EOS)
  assert smollm2.decode_batch(ids, mask, skip_special_tokens=False) == prompts


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS + ["Software Engineer II (m/f/d) – Zürich, 80–100%"])
def test_smollm2_round_trip(smollm2, text):
  assert smollm2.decode(smollm2.encode(text), skip_special_tokens=False) == text
