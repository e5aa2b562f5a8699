"""Secret files: owner-only, never inside a dataset, refused when others can read them; the
secret archive that holds every method's secret."""

import dataclasses
import io
import json
import os
import pathlib
import stat
import zipfile

import jax
import numpy as np
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


# --- the secret archive -----------------------------------------------------------------------
# On a toy format: the taggant key file and the PosCUDA secret file add their own checks on top
# (tests/test_keys.py, tests/test_poscuda.py).

TOY = secrets.SecretArchiveFormat(name="jaxtag-toy", version=3, noun="toy secret",
                                  holds="the toy table", arrays={"table": "<f4", "index": "<i4"})
TOY_CLASSES = ("yes", "no", "up")
TOY_SPEC = {"rows": 4, "scale": 0.5, "window": [1, 2]}


def _toy_arrays(seed=0):
  rng = np.random.default_rng(seed)
  return {"table": rng.normal(size=(4, 6)).astype(np.float64),   # stored as <f4
          "index": rng.integers(0, 3, size=(40,))}                 # stored as <i4


@pytest.fixture
def toy_file(tmp_path):
  path = tmp_path / "secret" / "toy.npz"
  secrets.write_secret_archive(path, TOY, _toy_arrays(), spec=TOY_SPEC, class_names=TOY_CLASSES,
                               provenance={"seed": 1})
  return path


def test_archive_round_trip_is_bit_exact_owner_only_and_deterministic(toy_file, tmp_path):
  assert _mode(toy_file) == 0o600 and _mode(toy_file.parent) == 0o700
  arrays, manifest = secrets.read_secret_archive(toy_file, TOY,
                                                 expected_class_names=list(TOY_CLASSES))
  for name, dtype in TOY.arrays.items():
    want = np.asarray(_toy_arrays()[name]).astype(dtype)
    assert arrays[name].dtype == np.dtype(dtype) and arrays[name].tobytes() == want.tobytes()
  assert (manifest["format"], manifest["format_version"]) == ("jaxtag-toy", 3)
  assert manifest["spec"] == TOY_SPEC and manifest["provenance"] == {"seed": 1}
  assert manifest["class_names"] == list(TOY_CLASSES) and manifest["num_classes"] == 3
  assert set(manifest["versions"]) >= {"jaxtag", "jax", "numpy", "python"}
  assert len(manifest["fingerprint"]) == 64
  assert sorted(p.name for p in toy_file.parent.iterdir()) == ["toy.npz"]  # No temp left.
  with zipfile.ZipFile(toy_file) as zf:   # numpy.load reads the arrays: plain stored .npy
    assert zf.namelist() == ["manifest.json", "table.npy", "index.npy"]
    assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
  np.testing.assert_array_equal(np.load(toy_file)["index"], arrays["index"])


def test_archive_refuses_overwrite_dataset_folder_and_unserialisable_provenance(toy_file,
                                                                                tmp_path):
  kwargs = dict(spec=TOY_SPEC, class_names=TOY_CLASSES, provenance={})
  with pytest.raises(secrets.SecretFileError, match="toy secret .*already exists.*the toy table"):
    secrets.write_secret_archive(toy_file, TOY, _toy_arrays(), **kwargs)
  secrets.write_secret_archive(toy_file, TOY, _toy_arrays(1), overwrite=True, **kwargs)
  assert secrets.read_secret_archive(toy_file, TOY)[1]["provenance"] == {}
  dataset = tmp_path / "dataset"
  dataset.mkdir()
  with pytest.raises(secrets.SecretFileError, match="toy secret .*inside the dataset"):
    secrets.write_secret_archive(dataset / "sub" / "toy.npz", TOY, _toy_arrays(),
                                 dataset_root=dataset, **kwargs)
  assert not (dataset / "sub").exists()
  with pytest.raises(secrets.SecretFileError, match="JSON"):
    secrets.write_secret_archive(tmp_path / "t.npz", TOY, _toy_arrays(), spec=TOY_SPEC,
                                 class_names=TOY_CLASSES, provenance={"key": object()})
  assert not (tmp_path / "t.npz").exists()


def _member_offset(path, member):
  with zipfile.ZipFile(path) as zf:
    info = zf.getinfo(member)
  with open(path, "rb") as f:  # Local header: 30 bytes + name + extra field.
    f.seek(info.header_offset + 26)
    name_len, extra_len = np.frombuffer(f.read(4), "<u2")
  return info.header_offset + 30 + int(name_len) + int(extra_len), info.file_size


@pytest.mark.parametrize("name", list(TOY.arrays))
def test_archive_one_flipped_byte_names_the_array(toy_file, name):
  start, size = _member_offset(toy_file, f"{name}.npy")
  data = bytearray(toy_file.read_bytes())
  data[start + size - 3] ^= 0x01  # Last element's bytes, past the .npy header.
  toy_file.write_bytes(bytes(data))
  os.chmod(toy_file, 0o600)
  with pytest.raises(secrets.SecretFileError, match=f"array '{name}'"):
    secrets.read_secret_archive(toy_file, TOY)


def _rewrite(path, replace):
  with zipfile.ZipFile(path) as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  members.update(replace)
  with zipfile.ZipFile(path, "w") as zf:
    for n, data in members.items():
      zf.writestr(n, data)


def _manifest(path):
  with zipfile.ZipFile(path) as zf:
    return json.loads(zf.read("manifest.json"))


def test_archive_rewritten_array_fails_its_sha256(toy_file):
  """A modification with valid zip CRCs is caught by the manifest's hashes."""
  table = _toy_arrays()["table"].astype("<f4")
  table[0, 0] += 1e-3
  buf = io.BytesIO()
  np.save(buf, table)
  _rewrite(toy_file, {"table.npy": buf.getvalue()})
  with pytest.raises(secrets.SecretFileError, match="array 'table' was modified: its sha256"):
    secrets.read_secret_archive(toy_file, TOY)


@pytest.mark.parametrize("edit", ["class_names", "spec", "arrays"])
def test_archive_edited_manifest_fails_the_fingerprint(toy_file, edit):
  manifest = _manifest(toy_file)
  if edit == "class_names":
    manifest["class_names"][0] = "maybe"
  elif edit == "spec":
    manifest["spec"]["scale"] = 0.25
  else:   # A forger who swaps an array must also rewrite its record, which the fingerprint seals.
    manifest["arrays"]["index"]["sha256"] = "0" * 64
  _rewrite(toy_file, {"manifest.json": json.dumps(manifest).encode()})
  with pytest.raises(secrets.SecretFileError, match="fingerprint|'index' was modified"):
    secrets.read_secret_archive(toy_file, TOY)


def test_archive_truncated_random_and_missing_files(toy_file, tmp_path):
  data = toy_file.read_bytes()
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(data[:len(data) // 2])
  noise = tmp_path / "noise.npz"
  noise.write_bytes(np.random.default_rng(0).bytes(5000))
  for path in (truncated, noise):
    os.chmod(path, 0o600)
    with pytest.raises(secrets.SecretFileError,
                       match=f"{path.name}.*not a readable jaxtag toy secret"):
      secrets.read_secret_archive(path, TOY)
  with pytest.raises(secrets.SecretFileError, match="Cannot read"):
    secrets.read_secret_archive(tmp_path / "absent.npz", TOY)


def test_archive_other_zip_kind_version_and_missing_fields(toy_file, tmp_path):
  other = tmp_path / "other.npz"
  np.savez(other, a=np.zeros(3))
  os.chmod(other, 0o600)
  with pytest.raises(secrets.SecretFileError, match="no manifest.json"):
    secrets.read_secret_archive(other, TOY)
  another_kind = dataclasses.replace(TOY, name="jaxtag-other", noun="other secret")
  with pytest.raises(secrets.SecretFileError,
                     match=r"other secret .*'jaxtag-toy', not 'jaxtag-other'"):
    secrets.read_secret_archive(toy_file, another_kind)
  with pytest.raises(secrets.SecretFileError, match="format_version 3 is not 4"):
    secrets.read_secret_archive(toy_file, dataclasses.replace(TOY, version=4))
  manifest = _manifest(toy_file)
  del manifest["provenance"], manifest["arrays"]["index"]
  _rewrite(toy_file, {"manifest.json": json.dumps(manifest).encode()})
  with pytest.raises(secrets.SecretFileError, match=r"missing field.*provenance.*arrays\.index"):
    secrets.read_secret_archive(toy_file, TOY)


def test_archive_wrong_class_names_say_which_differ(toy_file):
  with pytest.raises(secrets.SecretFileError, match="1: file 'no' vs expected 'nope'"):
    secrets.read_secret_archive(toy_file, TOY, expected_class_names=["yes", "nope", "up"])
  with pytest.raises(secrets.SecretFileError, match="file has 3 classes, expected 2"):
    secrets.read_secret_archive(toy_file, TOY, expected_class_names=TOY_CLASSES[:2])


def test_archive_readable_by_others_warns_or_raises(toy_file):
  os.chmod(toy_file, 0o640)  # Group-readable only: "others" is not the only leak.
  with pytest.warns(secrets.SecretFilePermissionWarning, match="the toy table.*chmod 600"):
    secrets.read_secret_archive(toy_file, TOY)
  with pytest.raises(secrets.SecretFileError, match="0o640"):
    secrets.read_secret_archive(toy_file, TOY, strict_permissions=True)


def test_read_matching_archive_reuses_the_same_recipe_and_names_what_differs(toy_file):
  before = toy_file.read_bytes()
  arrays, _ = secrets.read_matching_archive(toy_file, TOY, spec=dict(TOY_SPEC, window=(1, 2)),
                                            class_names=list(TOY_CLASSES),
                                            provenance={"seed": 1})   # a tuple reads as a list
  assert arrays["table"].tobytes() == _toy_arrays()["table"].astype("<f4").tobytes()
  with pytest.raises(secrets.SecretFileError) as e:
    secrets.read_matching_archive(toy_file, TOY, spec={**TOY_SPEC, "rows": 5},
                                  class_names=TOY_CLASSES[::-1], provenance={"seed": 12345})
  message = str(e.value)
  assert "spec.rows" in message and "class_names" in message and "provenance.seed" in message
  assert "12345" not in message   # provenance values are as secret as the arrays
  assert "never overwritten" in message and "new workdir" in message
  assert toy_file.read_bytes() == before


def test_spec_from_dict_names_unknown_fields():
  @dataclasses.dataclass(frozen=True)
  class Spec:
    size: int = 3
    scale: float = 1.0
  assert secrets.spec_from_dict(Spec, {"size": 5}) == Spec(size=5)
  with pytest.raises(ValueError, match=r"Spec has no field\(s\) \['sise'\]"):
    secrets.spec_from_dict(Spec, {"sise": 5})


@pytest.mark.parametrize("typed", [True, False])
def test_prng_provenance_gives_the_key_back(typed):
  key = jax.random.key(7) if typed else jax.random.PRNGKey(7)
  provenance = secrets.prng_provenance(key, function="toy.draw", seed=7)
  assert provenance["function"] == "toy.draw" and provenance["seed"] == 7
  assert json.loads(json.dumps(provenance)) == provenance
  again = secrets.provenance_key(provenance)
  np.testing.assert_array_equal(jax.random.key_data(again), jax.random.key_data(
      jax.random.key(7)))
  np.testing.assert_array_equal(jax.random.uniform(again, (3,)),
                                jax.random.uniform(jax.random.key(7), (3,)))
