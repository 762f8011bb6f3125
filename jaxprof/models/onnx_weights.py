"""BERT encoder weights from a sentence-transformers ONNX export, mapped onto `bert`'s params.

The PyTorch ONNX exporter keeps the HF names of embeddings, biases and LayerNorms (behind a
prefix such as `model.0.auto_model.`) but stores every Linear weight as an anonymous MatMul
operand (`onnx::MatMul_470`) in [in, out] layout, i.e. the HF [out, in] weight transposed. Each is
named by following the graph, never by its shape: `MatMul(x, W)` feeds `Add(bias, .)`, and the
bias keeps its HF name, so W is that Linear's `.weight`. The head count and LayerNorm epsilon are
read from the graph too; the tensors then go through `bert.hf_rules` like a safetensors load.

`onnx` is imported here only, and this module only when an ONNX encoder is asked for (the import
takes ~1 s).
"""

from __future__ import annotations

import collections
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import onnx
from onnx import numpy_helper

from jaxprof.models import bert, hf, layers

_WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def read_bert_onnx(path: str | os.PathLike) -> tuple[bert.BertConfig, dict[str, np.ndarray]]:
  """Config and HF-named float32 tensors (`encoder.layer.0.attention.self.query.weight`, ...)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: ONNX encoder file not found")
  graph = onnx.load(str(path)).graph
  source = str(path)
  inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  prefix = next((n.removesuffix(_WORD_EMBEDDINGS) for n in inits if n.endswith(_WORD_EMBEDDINGS)),
                None)
  if prefix is None:
    raise hf.CheckpointError(f"{source}: missing tensor '{_WORD_EMBEDDINGS}' (not a BERT graph)")
  consumers = collections.defaultdict(list)
  for node in graph.node:
    for name in node.input:
      consumers[name].append(node)

  tensors = {}
  for node in graph.node:  # Linear layers: MatMul(x, W [in, out]) -> Add(bias, .)
    if node.op_type != "MatMul" or node.input[1] not in inits:
      continue
    biases = [i for c in consumers[node.output[0]] if c.op_type == "Add" for i in c.input
              if i.startswith(prefix) and i.endswith(".bias") and i in inits]
    if len(biases) != 1:
      raise hf.CheckpointError(f"{source}: cannot name MatMul weight '{node.input[1]}' "
                               f"(its output feeds {len(biases)} named biases, expected 1)")
    name = biases[0].removeprefix(prefix).removesuffix(".bias") + ".weight"
    tensors[name] = inits.pop(node.input[1]).T  # back to HF [out, in]
  tensors |= {n.removeprefix(prefix): v for n, v in inits.items() if n.startswith(prefix)}
  tensors = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  return _config(graph, tensors, prefix, source), tensors


def load_bert_onnx(path: str | os.PathLike, dtype=jnp.float32) -> tuple[bert.BertConfig, dict]:
  """Our BERT (config, params in `dtype`) from an ONNX export; every tensor name/shape checked."""
  cfg, tensors = read_bert_onnx(path)
  shapes = layers.shapes_from_specs(bert.param_specs(cfg))
  return cfg, hf.apply_rules(tensors, bert.hf_rules(cfg), shapes, cfg.num_layers, dtype, str(path))


def _config(graph: onnx.GraphProto, tensors: dict[str, np.ndarray], prefix: str,
            source: str) -> bert.BertConfig:
  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise hf.CheckpointError(f"{source}: missing tensor '{prefix}{name}'")
    return tensors[name]

  ops = {node.op_type for node in graph.node}
  if "Erf" not in ops:  # our BERT uses exact GELU, x * (1 + erf(x / sqrt 2)) / 2
    raise hf.CheckpointError(f"{source}: no Erf node; only exact-GELU BERT graphs are supported")
  norms = [node for node in graph.node if node.op_type == "LayerNormalization"]
  eps = next((a.f for a in norms[0].attribute if a.name == "epsilon"), 1e-5) if norms else 1e-12
  vocab, width = get(_WORD_EMBEDDINGS).shape
  num_layers = len({k.split(".")[2] for k in tensors if k.startswith("encoder.layer.")})
  return bert.BertConfig(
      vocab_size=vocab, hidden_size=width,
      intermediate_size=get("encoder.layer.0.intermediate.dense.bias").shape[0],
      num_layers=num_layers, num_heads=_num_heads(graph, prefix, source),
      max_position_embeddings=get("embeddings.position_embeddings.weight").shape[0],
      type_vocab_size=get("embeddings.token_type_embeddings.weight").shape[0],
      layer_norm_eps=float(eps))


def _num_heads(graph: onnx.GraphProto, prefix: str, source: str) -> int:
  """N from the [B, T, N, H] Reshape that splits layer 0's query into heads."""
  producer = {out: node for node in graph.node for out in node.output}
  consts = {node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"}
  consts |= {t.name: numpy_helper.to_array(t) for t in graph.initializer if np.prod(t.dims) <= 4}
  bias = f"{prefix}encoder.layer.0.attention.self.query.bias"
  add = next((n for n in graph.node if n.op_type == "Add" and bias in n.input), None)
  reshape = add and next((n for n in graph.node
                          if n.op_type == "Reshape" and n.input[0] == add.output[0]), None)
  if reshape is None:
    raise hf.CheckpointError(f"{source}: cannot find the attention-head Reshape of '{bias}'")
  if reshape.input[1] in consts:  # a static [B, T, N, H] shape
    heads = consts[reshape.input[1]].reshape(-1)[-2]
  else:  # a shape built at run time: Concat(B, T, N, H) with N and H constants
    concat = producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or concat.input[-2] not in consts:
      raise hf.CheckpointError(f"{source}: cannot read the head count of '{bias}'")
    heads = consts[concat.input[-2]].reshape(-1)[0]
  return int(heads)
