"""Secret files: owner-only, never inside a dataset, refused when others can read them."""

import json
import os
import pathlib
import stat

import pytest
from absl import flags

from jaxtag import config as config_lib
from jaxtag import secrets
from jaxtag import workdir as workdir_lib
from jaxtag.taggants import jobs
from launch import app
from launch.configs import craft as craft_configs


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
  """The most permissive umask: an owner-only mode must come from the writer, not the umask."""
  old = os.umask(0)
  yield
  os.umask(old)


def test_writers_are_owner_only_whatever_the_umask(tmp_path, open_umask):
  secrets.write_json(tmp_path / "a" / "report.json", {"poisons": [1, 2]})
  secrets.write_bytes(tmp_path / "b.npz", b"\x00")
  secrets.write_text(tmp_path / "c.txt", "keys")
  for name in ("a/report.json", "b.npz", "c.txt"):
    assert _mode(tmp_path / name) == 0o600, name
  assert json.loads((tmp_path / "a" / "report.json").read_text()) == {"poisons": [1, 2]}
  workdir_lib.write_json(tmp_path / "public.json", {})
  assert _mode(tmp_path / "public.json") == 0o644   # not secret: readable by others
  workdir_lib.write_json(tmp_path / "secret.json", {}, secret=True)
  assert _mode(tmp_path / "secret.json") == 0o600


def test_private_dir_creates_and_narrows(tmp_path, open_umask):
  assert _mode(secrets.private_dir(tmp_path / "new" / "work")) == 0o700
  existing = tmp_path / "existing"
  existing.mkdir(mode=0o755)
  os.chmod(existing, 0o755)
  secrets.private_dir(existing)
  assert _mode(existing) == 0o700


@pytest.mark.parametrize("where", ["root", "inside", "deep", "symlink"])
def test_check_outside_refuses_a_path_in_any_dataset(tmp_path, where):
  data, published = tmp_path / "data", tmp_path / "published"
  (data / "yes").mkdir(parents=True)
  published.mkdir()
  (tmp_path / "link").symlink_to(data / "yes")
  path = {"root": data, "inside": data / "keys.npz", "deep": published / "x" / "keys.npz",
          "symlink": tmp_path / "link" / "keys.npz"}[where]
  with pytest.raises(secrets.SecretFileError, match="inside the dataset folder"):
    secrets.check_outside(path, [None, data, published], what="key file")


def test_check_outside_accepts_siblings_and_a_dataset_inside_the_secret_folder(tmp_path):
  data = tmp_path / "work" / "protected"
  secrets.check_outside(tmp_path / "work", [data])      # the demo's layout: data inside workdir
  secrets.check_outside(tmp_path / "data2" / "keys.npz", [tmp_path / "data"])  # prefix, not parent


def test_check_private_refuses_a_readable_file_unless_allowed(tmp_path):
  path = tmp_path / "keys.npz"
  path.write_bytes(b"k")
  os.chmod(path, 0o600)
  secrets.check_private(path)
  os.chmod(path, 0o640)
  with pytest.raises(secrets.SecretFileError, match=r"0o640.*chmod 600.*--allow_readable_secrets"):
    secrets.check_private(path, what="key file", allow_flag="--allow_readable_secrets")
  secrets.check_private(path, allow_readable=True)


def test_launcher_flag_allows_a_readable_key_file(tmp_path):
  path = tmp_path / "keys.npz"
  path.write_bytes(b"k")
  os.chmod(path, 0o644)
  with pytest.raises(secrets.SecretFileError, match="--allow_readable_secrets"):
    # flags not parsed (called from Python): refused
    app.runtime().check_secret_input(path, "key file")
  flags.FLAGS(["test", "--allow_readable_secrets"])
  try:
    app.runtime().check_secret_input(path, "key file")
  finally:
    flags.FLAGS.unparse_flags()
  with pytest.raises(secrets.SecretFileError):
    app.runtime().check_secret_input(path, "key file")


def _check_craft_inputs(config, workdir):
  """The craft stage's checks on the typed job, as launch/craft.py runs them."""
  jobs.check_craft_inputs(config_lib.from_config(jobs.CraftJob, config), workdir)


def _craft_config(tmp_path, key_file, **fields):
  config = craft_configs.get_config("tiny")
  config.unlock()
  surrogate = tmp_path / "surrogate"
  surrogate.mkdir(exist_ok=True)
  (surrogate / "model.json").write_text("{}")   # the checks look for it, never read it
  config.surrogate = str(surrogate)
  config.key_file = str(key_file)
  config.data.kind = "speech_commands"
  config.data.root = str(tmp_path / "dataset")
  for name, value in fields.items():
    config[name] = value
  return config


def test_craft_refuses_a_key_file_or_workdir_inside_the_datasets(tmp_path):
  (tmp_path / "dataset" / "yes").mkdir(parents=True)
  inside = tmp_path / "dataset" / "keys.npz"
  inside.write_bytes(b"k")
  os.chmod(inside, 0o600)
  with pytest.raises(secrets.SecretFileError, match="key file .*inside the dataset"):
    _check_craft_inputs(_craft_config(tmp_path, inside), tmp_path / "craft")
  outside = tmp_path / "keys.npz"
  outside.write_bytes(b"k")
  os.chmod(outside, 0o600)
  with pytest.raises(secrets.SecretFileError, match="craft workdir .*inside the dataset"):
    _check_craft_inputs(_craft_config(tmp_path, outside), tmp_path / "dataset" / "craft")
  with pytest.raises(secrets.SecretFileError, match="craft workdir .*inside the dataset"):
    _check_craft_inputs(_craft_config(tmp_path, outside, output_dir=str(tmp_path / "pub")),
                             tmp_path / "pub" / "craft")
  os.chmod(outside, 0o644)
  with pytest.raises(secrets.SecretFileError, match="can read it"):
    _check_craft_inputs(_craft_config(tmp_path, outside), tmp_path / "craft")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "keys.npz", "surrogate"]


SECRET_FILES = ("keys/keys.npz", "craft/craft_report.json", "craft/craft_report.png",
                "craft/perturbations.npz", "craft/craft_summary.json",
                "verify_suspect/verify_report.json", "verify_suspect/verify_report.txt",
                "verify_suspect/verify_report.png", "verify_suspect/verify_summary.json",
                "verify_benign/verify_summary.json", "demo_summary.json")


def test_the_demo_writes_every_secret_owner_only(demo_run):
  workdir, _, _ = demo_run
  for name in SECRET_FILES:
    assert _mode(workdir / name) == 0o600, (name, oct(_mode(workdir / name)))
  for name in ("keys", "keys/keys_wav", "craft", "verify_suspect", "verify_benign"):
    assert _mode(workdir / name) == 0o700, (name, oct(_mode(workdir / name)))
  for wav in (workdir / "keys" / "keys_wav").glob("*.wav"):
    assert _mode(wav) == 0o600, wav
