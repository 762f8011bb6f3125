"""Tests for configs/common.py (argument string, sections) and jaxprof/config.py."""

import json
import sys
import textwrap

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from jaxprof import config as config_lib

# ml_collections loads config files with a deprecated importlib call.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

# ------------------------------------------------------------------------------ parse_arg


def test_parse_arg_types_from_defaults():
  arg = common.parse_arg("algo=grpo,tiny,steps=12,lr=0.5,seed=-3", algo="ppo", tiny=False,
                         steps=100, lr=1e-3, seed=0, name=None)
  assert arg.algo == "grpo" and arg.tiny is True and arg.steps == 12 and arg.lr == 0.5
  assert arg.seed == -3 and arg.name is None
  assert isinstance(arg.steps, int) and isinstance(arg.lr, float)


def test_parse_arg_defaults_and_bools():
  assert common.parse_arg(None, a=1).a == 1
  assert common.parse_arg("", a=1).a == 1
  assert common.parse_arg("tiny=false", tiny=True).tiny is False
  assert common.parse_arg("lr=3", lr=0.1).lr == 3.0


def test_parse_arg_unknown_key_names_valid_ones():
  with pytest.raises(ValueError, match=r"'tinny'.*algo, tiny"):
    common.parse_arg("tinny", algo="ppo", tiny=False)


@pytest.mark.parametrize("arg", ["steps=abc", "steps", "tiny=maybe", "steps=1,steps=2"])
def test_parse_arg_bad_values(arg):
  with pytest.raises(ValueError):
    common.parse_arg(arg, steps=1, tiny=False)


def test_sections():
  optim = common.optim_config(lr=1e-5, total_steps=20)
  assert optim.lr == 1e-5 and optim.total_steps == 20 and optim.clip_norm == 1.0
  assert common.mesh_config().to_dict() == dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  assert common.checkpoint_config(every=5, keep=2).keep == 2
  assert common.log_config(show=["a"]).show == ("a",)


# ------------------------------------------------------------------------------ keys


def _config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stages = ("sft", "ppo")
  c.optim = common.optim_config()
  c.mesh = common.mesh_config()
  c.rl = ml_collections.ConfigDict(dict(kl_coef=0.05, clip_eps=0.2, batch_size=8, gamma=1.0))
  c.sample = ml_collections.ConfigDict(dict(temperature=1.0, top_p=0.9, max_len=64))
  return c


def test_check_keys_suggests_nearest():
  with pytest.raises(config_lib.ConfigError,
                     match=r"unknown config key 'rl.kl_cof'; did you mean 'rl.kl_coef'"):
    config_lib.check_keys(_config(), ["rl.kl_cof"])
  config_lib.check_keys(_config(), ["rl.kl_coef", "optim", "sample.top_p"])  # All valid.


def test_check_keys_reports_all_and_wrong_section():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_keys(_config(), ["rll.kl_coef", "optim.learning_rate", "zzz"])
  msg = str(e.value)
  assert "'rll.kl_coef'; did you mean 'rl.kl_coef'" in msg
  assert "'optim.learning_rate'" in msg and "unknown config key 'zzz'" in msg


def test_override_keys():
  argv = ["prog", "--config=c.py:tiny", "--config.rl.kl_coef=1", "--noconfig.a.b",
          "--config.x", "3", "--other=1", "-config.y=2"]
  assert config_lib.override_keys(argv) == ["rl.kl_coef", "a.b", "x", "y"]


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent("""
      import ml_collections
      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.rl = ml_collections.ConfigDict(dict(kl_coef=0.05, batch_size=4))
        c.tiny = arg == "tiny"
        return c
  """))
  return path


def _parse(monkeypatch, argv):
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads overrides from sys.argv.
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", flag_values=fv)
  config_lib.check_overrides(argv, flag_values=fv)
  return holder.value


def test_load_config(config_file):
  assert config_lib.load_config(f"{config_file}:tiny").tiny
  assert not config_lib.load_config(str(config_file)).tiny
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load_config("nope.py")


def test_parse_flags_ok(monkeypatch, config_file):
  config = _parse(monkeypatch, ["prog", f"--config={config_file}:tiny", "--config.rl.kl_coef=0.5"])
  assert config.rl.kl_coef == 0.5 and config.tiny


def test_parse_flags_mistyped_key(monkeypatch, config_file):
  argv = ["prog", f"--config={config_file}", "--config.rl.kl_cof=0.5"]
  with pytest.raises(config_lib.ConfigError, match=r"did you mean 'rl.kl_coef'"):
    _parse(monkeypatch, argv)
  assert issubclass(config_lib.ConfigError, flags.Error)  # absl prints it without a traceback.


def test_parse_flags_exits_with_message(monkeypatch, capsys, config_file):
  argv = ["prog", f"--config={config_file}", "--config.rl.batch_sise=2"]
  monkeypatch.setattr(sys, "argv", argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv)
  monkeypatch.setattr(flags, "FLAGS", fv)
  with pytest.raises(SystemExit) as e:
    config_lib.parse_flags(argv)
  assert e.value.code == 1
  assert "did you mean 'rl.batch_size'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ values


def test_validate_accepts_good_config():
  c = _config()
  assert config_lib.validate(c, reference=_config()) is c


@pytest.mark.parametrize("path,value,match", [
    ("stages", ("sft", "rlhf"), r"unknown stage.*'rlhf'.*sft, reward_model, ppo, grpo, eval"),
    ("rl.batch_size", 0, r"rl.batch_size=0: must be > 0"),
    ("sample.top_p", 1.5, r"sample.top_p=1.5: must be in \[0, 1\]"),
    ("optim.lr", -1.0, r"optim.lr=-1.0: must be >= 0"),
    ("mesh.data", 0, r"mesh.data=0"),
    ("rl.kl_coef", float("nan"), r"must be finite"),
])
def test_validate_rejects(path, value, match):
  c = _config()
  section, _, key = path.rpartition(".")
  (c[section] if section else c)[key] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_validate_against_reference_types():
  c = _config()
  c.unlock()
  c.rl.extra = 1
  del c.sample["top_p"]
  c.rl = ml_collections.ConfigDict(dict(c.rl.to_dict(), batch_size=8.0))  # Wrong type in code.
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, reference=_config())
  msg = str(e.value)
  assert "rl.extra: not in the reference" in msg and "sample.top_p: missing" in msg
  assert "rl.batch_size=8.0: expected int" in msg


def test_validate_int_for_float_and_bool_names_are_fine():
  c = _config()
  c.optim.lr = 1  # An int where the default is a float is fine.
  c.model = ml_collections.ConfigDict(dict(use_dropout=True))
  ref = _config()
  ref.model = ml_collections.ConfigDict(dict(use_dropout=False))
  config_lib.validate(c, reference=ref)


# ------------------------------------------------------------------------------ lock and save


def test_lock_and_save(tmp_path):
  frozen = config_lib.lock_and_save(_config(), tmp_path)
  assert isinstance(frozen, ml_collections.FrozenConfigDict)
  with pytest.raises(AttributeError):
    frozen.rl.kl_coef = 1.0
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["rl"]["kl_coef"] == 0.05 and saved["stages"] == ["sft", "ppo"]
  c = _config()
  c.rl.kl_coef = 0.1  # A resumed run with a changed flag: file replaced (and the diff logged).
  config_lib.lock_and_save(c, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["rl"]["kl_coef"] == 0.1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # No temp files left.


def test_each_algorithm_keeps_its_own_section():
  from configs import girl

  ppo, grpo = girl.get_config("tiny"), girl.get_config("tiny,algo=grpo")
  assert "ppo" in ppo and "grpo" not in ppo and "grpo" in grpo and "ppo" not in grpo
  assert "epochs" in ppo.rl and "epochs" in grpo.rl  # one name for passes over a rollout
  config_lib.validate(ppo)
  ppo.rl.algo = "grpo"
  with pytest.raises(config_lib.ConfigError, match=r"no 'grpo' section.*algo=grpo"):
    config_lib.validate(ppo)
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'grpo.advantage'"):
    config_lib.check_keys(girl.get_config("tiny"), ["grpo.advantage"])
