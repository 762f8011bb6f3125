"""Bad checkpoints and missing assets get errors that name the culprit; stored dtypes convert."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from jaxprof import assets
from jaxprof.models import hf
from tests.models.test_hf_parity import make_hf_model


@pytest.fixture
def llama_dir(tmp_path):
  make_hf_model("llama_untied", tmp_path)
  return tmp_path


def test_unsupported_model_type_lists_supported(llama_dir):
  cfg = json.loads((llama_dir / "config.json").read_text())
  (llama_dir / "config.json").write_text(json.dumps(cfg | {"model_type": "mamba"}))
  with pytest.raises(hf.CheckpointError, match=r"unsupported model_type 'mamba'.*llama.*qwen2"):
    hf.load_hf(llama_dir)


def test_missing_tensor_is_named(llama_dir):
  tensors = load_file(llama_dir / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, llama_dir / "model.safetensors")
  with pytest.raises(hf.CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj"):
    hf.load_hf(llama_dir)


def test_shape_mismatch_names_tensor_and_both_shapes(llama_dir):
  tensors = load_file(llama_dir / "model.safetensors")
  tensors["model.layers.0.mlp.gate_proj.weight"] = np.zeros((95, 64), np.float32)
  save_file(tensors, llama_dir / "model.safetensors")
  with pytest.raises(hf.CheckpointError,
                     match=r"gate_proj.weight' has shape \(95, 64\).*expected \(2, 64, 96\)"):
    hf.load_hf(llama_dir)


def test_unexpected_tensor_is_named(llama_dir):
  tensors = load_file(llama_dir / "model.safetensors")
  tensors["model.layers.0.extra.weight"] = np.zeros((2,), np.float32)
  save_file(tensors, llama_dir / "model.safetensors")
  with pytest.raises(hf.CheckpointError, match="unexpected tensors.*extra.weight"):
    hf.load_hf(llama_dir)


def test_missing_and_unreadable_directories(tmp_path):
  with pytest.raises(hf.CheckpointError, match="does not exist"):
    hf.load_hf(tmp_path / "nope")
  with pytest.raises(hf.CheckpointError, match="no config.json"):
    hf.load_hf(tmp_path)
  locked = tmp_path / "locked"
  locked.mkdir()
  os.chmod(locked, 0)
  try:
    if os.access(locked, os.R_OK):  # root ignores permissions: use a file instead
      locked = tmp_path / "file"
      locked.write_text("x")
    with pytest.raises(hf.CheckpointError, match="not a readable directory"):
      hf.load_hf(locked)
  finally:
    os.chmod(tmp_path / "locked", 0o755)


def test_missing_asset_package_gives_pip_command():
  missing = assets.AssetPackage("not-a-real-asset==9.9", "not_a_real_asset_module")
  with pytest.raises(assets.AssetNotFoundError,
                     match=r"pip install --no-deps not-a-real-asset==9\.9"):
    assets.package_dir(missing)


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load_in_any_dtype(tmp_path, stored):
  model = make_hf_model("llama_untied", tmp_path / "f32")
  model.to(stored).save_pretrained(tmp_path / "half")
  _, p32 = hf.load_hf(tmp_path / "half", dtype=jnp.float32)
  _, pbf = hf.load_hf(tmp_path / "half", dtype=jnp.bfloat16)
  ref = model.state_dict()["model.embed_tokens.weight"].float().numpy()
  assert p32["embed"].dtype == jnp.float32 and pbf["embed"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(p32["embed"]), ref)
  transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "half")  # still a valid dir
