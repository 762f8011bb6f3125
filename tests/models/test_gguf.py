"""GGUF -> HF conversion: a synthetic GGUF round trip (fast) and the packaged SmolLM2 (slow)."""

from __future__ import annotations

import json
import pathlib
import re
import time

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxprof import assets
from jaxprof.models import gguf as gguf_convert

# Tiny Llama: 2 layers, 4 query heads, 2 kv heads, head_dim 8.
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 2, 32, 4, 2, 8, 48
THETA, EPS, CONTEXT = 500000.0, 1e-6, 128
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n" \
           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


def _vocab() -> tuple[list[str], list[int], list[str]]:
  from tokenizers import pre_tokenizers

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  merged = ["Ġt", "he", "Ġthe"]
  tokens = SPECIALS + alphabet + merged
  types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (
      len(alphabet) + len(merged))
  return tokens, [int(t) for t in types], ["Ġ t", "h e", "Ġt he"]


def _hf_weights(vocab: int, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 weights under HF Llama names."""
  rng = np.random.default_rng(seed)

  def w(*shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.1

  out = {"model.embed_tokens.weight": w(vocab, HIDDEN), "model.norm.weight": 1 + w(HIDDEN)}
  if not tied:
    out["lm_head.weight"] = w(vocab, HIDDEN)
  for i in range(LAYERS):
    p = f"model.layers.{i}."
    out |= {
        p + "self_attn.q_proj.weight": w(HEADS * HEAD_DIM, HIDDEN),
        p + "self_attn.k_proj.weight": w(KV_HEADS * HEAD_DIM, HIDDEN),
        p + "self_attn.v_proj.weight": w(KV_HEADS * HEAD_DIM, HIDDEN),
        p + "self_attn.o_proj.weight": w(HIDDEN, HEADS * HEAD_DIM),
        p + "mlp.gate_proj.weight": w(FFN, HIDDEN),
        p + "mlp.up_proj.weight": w(FFN, HIDDEN),
        p + "mlp.down_proj.weight": w(HIDDEN, FFN),
        p + "input_layernorm.weight": 1 + w(HIDDEN),
        p + "post_attention_layernorm.weight": 1 + w(HIDDEN),
    }
  return out


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's HF->GGUF q/k reordering, written as an explicit row map (the reference)."""
  head_dim = weight.shape[0] // heads
  out = np.empty_like(weight)
  for h in range(heads):
    for i in range(head_dim // 2):
      for half in range(2):
        out[h * head_dim + 2 * i + half] = weight[h * head_dim + half * head_dim // 2 + i]
  return out


def _to_gguf_name(hf_name: str) -> str:
  fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
  if hf_name in fixed:
    return fixed[hf_name]
  layer, rest = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name).groups()
  short = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
           "post_attention_layernorm": "ffn_norm"}[rest]
  return f"blk.{layer}.{short}.weight"


def write_tiny_gguf(path: pathlib.Path, weights: dict[str, np.ndarray], *, arch: str = "llama",
                    tokenizer_model: str = "gpt2",
                    replace: dict[str, np.ndarray] | None = None) -> pathlib.Path:
  """Writes `weights` as llama.cpp would: GGUF names, permuted q/k, F32 tensors, gpt2 vocab."""
  tokens, types, merges = _vocab()
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(LAYERS)
  writer.add_context_length(CONTEXT)
  writer.add_embedding_length(HIDDEN)
  writer.add_feed_forward_length(FFN)
  writer.add_head_count(HEADS)
  writer.add_head_count_kv(KV_HEADS)
  writer.add_rope_freq_base(THETA)
  writer.add_rope_dimension_count(HEAD_DIM)
  writer.add_layer_norm_rms_eps(EPS)
  writer.add_vocab_size(len(tokens))
  writer.add_tokenizer_model(tokenizer_model)
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges(merges)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_unk_token_id(0)
  writer.add_pad_token_id(2)
  writer.add_chat_template(TEMPLATE)
  for name, value in weights.items():
    if name.endswith("q_proj.weight"):
      value = _llama_cpp_permute(value, HEADS)
    elif name.endswith("k_proj.weight"):
      value = _llama_cpp_permute(value, KV_HEADS)
    gguf_name = _to_gguf_name(name)
    writer.add_tensor(gguf_name, (replace or {}).get(gguf_name, value))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _leftovers(parent: pathlib.Path) -> list[str]:
  return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------------------ fast tests


@pytest.mark.parametrize("heads", [HEADS, KV_HEADS, 9, 3])
def test_unpermute_inverts_llama_cpp_permutation(heads):
  w = np.arange(heads * HEAD_DIM * 5, dtype=np.float32).reshape(heads * HEAD_DIM, 5)
  permuted = _llama_cpp_permute(w, heads)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_convert.unpermute_rotary(permuted, heads), w)


@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_gguf_round_trips_exactly(tmp_path, tied):
  tokens, _, _ = _vocab()
  weights = _hf_weights(len(tokens), tied)
  src = write_tiny_gguf(tmp_path / "tiny.gguf", weights)
  out = gguf_convert.convert_gguf_to_hf(src, tmp_path / "hf")

  assert gguf_convert.is_complete_hf_dir(out)
  assert _leftovers(tmp_path) == []
  converted = load_file(str(out / "model.safetensors"))
  assert set(converted) == set(weights)
  for name, value in weights.items():
    assert converted[name].dtype == np.float32
    np.testing.assert_array_equal(converted[name], value, err_msg=name)

  config = json.loads((out / "config.json").read_text())
  assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
  assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (
      LAYERS, HIDDEN, FFN)
  assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
      HEADS, KV_HEADS, HEAD_DIM)
  assert config["rope_theta"] == THETA and config["rope_parameters"]["rope_theta"] == THETA
  assert config["rms_norm_eps"] == pytest.approx(EPS, rel=1e-6)
  assert config["vocab_size"] == len(tokens) and config["max_position_embeddings"] == CONTEXT
  assert config["tie_word_embeddings"] is tied
  assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
  generation = json.loads((out / "generation_config.json").read_text())
  assert generation["eos_token_id"] == 2


def test_synthetic_conversion_matches_transformers_reference(tmp_path):
  """transformers loads the converted dir with no missing keys and reproduces the original model."""
  torch = pytest.importorskip("torch")
  import transformers

  tokens, _, _ = _vocab()
  weights = _hf_weights(len(tokens), tied=True, seed=1)
  out = gguf_convert.convert_gguf_to_hf(write_tiny_gguf(tmp_path / "t.gguf", weights),
                                        tmp_path / "hf")
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      out, output_loading_info=True, local_files_only=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert model.config.rope_parameters["rope_theta"] == THETA

  reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
      rms_norm_eps=EPS, rope_parameters={"rope_type": "default", "rope_theta": THETA},
      tie_word_embeddings=True, max_position_embeddings=CONTEXT))
  missing, _ = reference.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()},
                                         strict=False)
  assert set(missing) <= {"lm_head.weight"}
  ids = torch.tensor([[5, 70, 100, 3, 200, 42, 7, 9]])
  with torch.no_grad():
    np.testing.assert_allclose(model(ids).logits.numpy(), reference(ids).logits.numpy(),
                               rtol=1e-5, atol=1e-5)

  tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
  assert tok.convert_ids_to_tokens(list(range(len(tokens)))) == tokens
  assert tok.encode("the the") == [tokens.index("t"), tokens.index("he"), tokens.index("Ġthe")]
  assert (tok.bos_token, tok.eos_token, tok.unk_token) == tuple(SPECIALS[i] for i in (1, 2, 0))
  assert tok.decode(tok.encode("héllo wörld 42")) == "héllo wörld 42"
  assert "<|im_start|>assistant\n" in tok.apply_chat_template(
      [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_existing_dir_needs_overwrite(tmp_path):
  weights = _hf_weights(len(_vocab()[0]), tied=True)
  src = write_tiny_gguf(tmp_path / "t.gguf", weights)
  out = gguf_convert.convert_gguf_to_hf(src, tmp_path / "hf")
  with pytest.raises(FileExistsError, match="overwrite"):
    gguf_convert.convert_gguf_to_hf(src, out)
  (out / "config.json").unlink()
  gguf_convert.convert_gguf_to_hf(src, out, overwrite=True)
  assert gguf_convert.is_complete_hf_dir(out) and _leftovers(tmp_path) == []


def test_crash_leaves_no_partial_dir(tmp_path, monkeypatch):
  src = write_tiny_gguf(tmp_path / "t.gguf", _hf_weights(len(_vocab()[0]), tied=True))

  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(gguf_convert, "_move_into_place", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    gguf_convert.convert_gguf_to_hf(src, tmp_path / "hf")
  assert not (tmp_path / "hf").exists() and _leftovers(tmp_path) == []


def test_race_keeps_the_dir_another_process_finished(tmp_path, monkeypatch):
  src = write_tiny_gguf(tmp_path / "t.gguf", _hf_weights(len(_vocab()[0]), tied=True))
  winner = gguf_convert.convert_gguf_to_hf(src, tmp_path / "winner")
  (winner / "marker").write_text("theirs")
  out = tmp_path / "hf"
  real = gguf_convert._tokenizer_files

  def other_process_finishes_meanwhile(meta):
    winner.rename(out)
    return real(meta)

  monkeypatch.setattr(gguf_convert, "_tokenizer_files", other_process_finishes_meanwhile)
  assert gguf_convert.convert_gguf_to_hf(src, out) == out
  assert (out / "marker").read_text() == "theirs"
  assert _leftovers(tmp_path) == []


def test_errors_name_the_file_and_what_is_supported(tmp_path):
  weights = _hf_weights(len(_vocab()[0]), tied=True)
  with pytest.raises(FileNotFoundError, match="nope.gguf"):
    gguf_convert.convert_gguf_to_hf(tmp_path / "nope.gguf", tmp_path / "a")

  src = write_tiny_gguf(tmp_path / "falcon.gguf", weights, arch="falcon")
  with pytest.raises(gguf_convert.GGUFConversionError, match=r"falcon\.gguf.*'falcon'.*llama"):
    gguf_convert.convert_gguf_to_hf(src, tmp_path / "b")

  # F64 has no dequantisation in gguf.quants.
  src = write_tiny_gguf(tmp_path / "f64.gguf", weights,
                        replace={"blk.0.attn_norm.weight": np.ones(HIDDEN, np.float64)})
  with pytest.raises(gguf_convert.GGUFConversionError, match=r"f64\.gguf.*F64.*Q4_1"):
    gguf_convert.convert_gguf_to_hf(src, tmp_path / "c")

  src = write_tiny_gguf(tmp_path / "spm.gguf", weights, tokenizer_model="llama")
  with pytest.raises(gguf_convert.GGUFConversionError, match=r"spm\.gguf.*'llama'.*gpt2"):
    gguf_convert.convert_gguf_to_hf(src, tmp_path / "d")
  assert not any((tmp_path / d).exists() for d in "abcd") and _leftovers(tmp_path) == []


@pytest.fixture
def tiny_packaged(tmp_path, monkeypatch):
  """`packaged_smollm2_dir` pointed at a tiny GGUF and a private cache."""
  src = write_tiny_gguf(tmp_path / "tiny.gguf", _hf_weights(len(_vocab()[0]), tied=True))
  monkeypatch.setattr(gguf_convert.assets, "asset_path", lambda package, name: src)
  monkeypatch.setenv("JAXPROF_CACHE", str(tmp_path / "cache"))
  return src


def test_packaged_dir_is_converted_once_and_reused(tiny_packaged):
  first = gguf_convert.packaged_smollm2_dir()
  assert first.name == gguf_convert.SMOLLM2_CACHE_NAME and gguf_convert.is_complete_hf_dir(first)
  mtime = (first / "model.safetensors").stat().st_mtime_ns
  time.sleep(0.01)
  assert gguf_convert.packaged_smollm2_dir() == first
  assert (first / "model.safetensors").stat().st_mtime_ns == mtime
  assert _leftovers(first.parent) == []


@pytest.mark.parametrize("damage", ["missing_file", "empty_file", "other_source"])
def test_packaged_dir_reconverts_incomplete_or_stale_cache(tiny_packaged, damage):
  out = gguf_convert.packaged_smollm2_dir()
  if damage == "missing_file":
    (out / "tokenizer.json").unlink()
  elif damage == "empty_file":
    (out / "config.json").write_text("")
  else:  # e.g. the asset package was upgraded
    (out / "jaxprof_conversion.json").write_text(json.dumps({"source_bytes": 1}))
  assert gguf_convert.packaged_smollm2_dir() == out
  assert gguf_convert.is_complete_hf_dir(out) and gguf_convert._converted_from(out, tiny_packaged)
  assert _leftovers(out.parent) == []


def test_packaged_dir_tolerates_a_concurrent_conversion(tiny_packaged, monkeypatch):
  real = gguf_convert.convert_gguf_to_hf

  def another_process_wins_first(src, out, **kwargs):
    real(src, out)  # the other worker finishes just before we start writing
    return real(src, out, **kwargs)  # ours now finds the dir and raises FileExistsError

  monkeypatch.setattr(gguf_convert, "convert_gguf_to_hf", another_process_wins_first)
  out = gguf_convert.packaged_smollm2_dir()
  assert gguf_convert.is_complete_hf_dir(out) and _leftovers(out.parent) == []


# ------------------------------------------------------------------------------ slow tests


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  """Packaged SmolLM2 converted into a private cache (so the reuse checks start from scratch)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JAXPROF_CACHE", str(tmp_path_factory.mktemp("cache")))
    start = time.perf_counter()
    path = gguf_convert.packaged_smollm2_dir()
    print(f"SmolLM2 conversion: {time.perf_counter() - start:.1f}s")
    yield path


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, local_files_only=True)
  tok = transformers.AutoTokenizer.from_pretrained(smollm2, local_files_only=True)
  return model, tok


@pytest.mark.slow
def test_smollm2_conversion_is_reused_and_atomic(smollm2, monkeypatch):
  monkeypatch.setenv("JAXPROF_CACHE", str(smollm2.parent))
  before = (smollm2 / "model.safetensors").stat().st_mtime_ns
  assert gguf_convert.packaged_smollm2_dir() == smollm2
  assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before
  assert _leftovers(smollm2.parent) == []
  config = json.loads((smollm2 / "config.json").read_text())
  assert config["rope_theta"] == 100000.0 and config["tie_word_embeddings"] is True
  assert (config["num_hidden_layers"], config["num_attention_heads"],
          config["num_key_value_heads"], config["vocab_size"]) == (30, 9, 3, 49152)


@pytest.mark.slow
def test_smollm2_tokenizer_matches_gguf_metadata(smollm2_hf):
  _, tok = smollm2_hf
  reader = gguf.GGUFReader(assets.asset_path(assets.SMOLLM2, gguf_convert.SMOLLM2_GGUF))
  field = lambda key: reader.fields[key].contents()  # noqa: E731
  tokens = field("tokenizer.ggml.tokens")
  assert len(tok) == len(tokens) == 49152
  assert tok.convert_ids_to_tokens(list(range(len(tokens)))) == tokens
  assert tok.bos_token_id == field("tokenizer.ggml.bos_token_id") == 1
  assert tok.eos_token_id == field("tokenizer.ggml.eos_token_id") == 2
  assert tok.unk_token_id == field("tokenizer.ggml.unknown_token_id") == 0
  assert tok.eos_token == "<|im_end|>"
  assert tok.chat_template == field("tokenizer.chat_template")


@pytest.mark.slow
def test_smollm2_greedy_completion_knows_paris(smollm2_hf):
  import torch

  model, tok = smollm2_hf
  inputs = tok("The capital of France is", return_tensors="pt")
  with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
  text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
  assert "Paris" in text, text


@pytest.mark.slow
def test_smollm2_chat_answer_is_fluent_english(smollm2_hf):
  import torch

  model, tok = smollm2_hf
  prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
  inputs = tok(prompt, return_tensors="pt")
  with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=30, do_sample=False)
  text = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
  words = text.split()
  assert "Paris" in text and len(words) >= 4, text
  assert sum(w.isascii() and any(c.isalpha() for c in w) for w in words) >= 0.8 * len(words), text


@pytest.mark.slow
def test_packaged_conversion_matches_transformers_own_gguf_loader():
  """An independent conversion: transformers de-quantizes and un-permutes the packaged GGUF with
  its own reader; our converted directory must give the same logits."""
  import torch
  import transformers

  from jaxprof import api

  src = assets.asset_path(assets.SMOLLM2, gguf_convert.SMOLLM2_GGUF)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(src.parent), gguf_file=src.name, torch_dtype=torch.float32)
  ids = np.array([[1, 504, 3575, 282, 4649, 314, 2114, 30]])
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(ids)).logits.numpy()
  got = api.load_lm().logits(ids)
  assert np.abs(want).max() > 5.0  # real logits: the tolerance means something
  np.testing.assert_allclose(got, want, atol=5e-4, rtol=0)
