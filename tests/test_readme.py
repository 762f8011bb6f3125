"""README.md's Python API block runs as written, and its stated outputs (`# -> ...`) hold."""

import ast
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def api_block() -> str:
  text = README.read_text()
  section = text[text.index("## Python API"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_python_api_block_runs_and_its_outputs_hold():
  code = api_block()
  scope = {"token_ids": np.array([[1, 504, 3575, 282, 4649, 314]], np.int32)}
  checked = 0
  for line in code.splitlines():
    statement = line.split("#")[0].rstrip()
    if not statement:
      continue
    claimed = re.search(r"# -> (\[.*\])", line)
    if claimed:  # an expression whose value the README states
      value = eval(statement, scope)  # noqa: S307  (the README's own line)
      assert value == ast.literal_eval(claimed.group(1)), (statement, value)
      checked += 1
    else:
      exec(statement, scope)  # noqa: S102
  assert checked >= 1
  logits, emb = scope["logits"], None
  assert logits.shape[:2] == (1, 6) and logits.shape[2] == scope["lm"].cfg.vocab_size
  from jaxprof import api

  emb = api.embed_texts(["a CV", "a job description"])
  assert emb.shape == (2, 384)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
