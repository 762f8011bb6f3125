"""paraphrase-MiniLM-L3-v2 (packaged ONNX) in our BERT: parity with onnxruntime on its graph."""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper, numpy_helper

from jaxprof.models import hf, onnx_weights
from jaxprof.models.encoder import TextEncoder
from tests.models import test_encoder

# The reward encoder's parity sentences, the longest one past this model's 128 tokens.
SENTENCES = [*test_encoder.SENTENCES[:-1], test_encoder.SENTENCES[-1] * 2]


@pytest.fixture(scope="module")
def paraphrase():
  return TextEncoder.packaged_paraphrase_minilm()


@pytest.fixture(scope="module")
def minilm():
  return TextEncoder.packaged_minilm()


def onnxruntime_embeddings(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
  """The graph's own mean-pooled output [B, D] on our token ids, L2-normalised."""
  ids, mask = encoder.tokenize(texts)
  session = onnxruntime.InferenceSession(encoder._source, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  outputs = session.run(None, {"input_ids": ids.astype(np.int64),
                               "attention_mask": mask.astype(np.int64)})
  pooled = [v for v in outputs if v.dtype == np.float32 and v.shape == (len(texts), encoder.dim)]
  assert len(pooled) == 1, f"expected one pooled [B, D] output among {names}"
  return pooled[0] / np.linalg.norm(pooled[0], axis=-1, keepdims=True)


@pytest.mark.slow
def test_paraphrase_minilm_matches_onnxruntime(paraphrase):
  assert (paraphrase.cfg.num_layers, paraphrase.cfg.num_heads, paraphrase.dim) == (3, 12, 384)
  got = paraphrase.embed(SENTENCES)
  ref = onnxruntime_embeddings(paraphrase, SENTENCES)
  assert paraphrase.tokenize(SENTENCES)[0].shape[1] == 128  # the long text is truncated to 128
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  assert np.abs(got - ref).max() < 1e-4


@pytest.mark.slow
def test_the_two_encoders_are_different_models(paraphrase, minilm):
  cosine = np.sum(paraphrase.embed(SENTENCES) * minilm.embed(SENTENCES), axis=-1)
  assert cosine.max() < 0.9, cosine


@pytest.mark.slow
@pytest.mark.parametrize("name", ["paraphrase", "minilm"])
def test_both_encoders_rank_an_obvious_pair(name, request):
  q, near, far = request.getfixturevalue(name).embed(
      ["a film about space travel", "astronauts fly to Mars", "a cooking show"])
  assert q @ near > q @ far + 0.1


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.onnx: ONNX encoder file not found"):
    onnx_weights.load_bert_onnx(tmp_path / "nope.onnx")


def test_missing_tensor_is_named(tmp_path):
  weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "some.weight")
  graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
                            [weight])
  onnx.save(helper.make_model(graph), tmp_path / "tiny.onnx")
  with pytest.raises(hf.CheckpointError, match="missing tensor 'embeddings.word_embeddings"):
    onnx_weights.load_bert_onnx(tmp_path / "tiny.onnx")
