"""Bad input to the audio reader and the folder loaders: each case raises an error naming the
file (and the fix), or is handled as documented in jaxtag.data.speechcommands / esc50."""

import logging
import re

import numpy as np
import pytest
import soundfile as sf

from jaxtag.audio import io
from jaxtag.audio.io import AudioFileError
from jaxtag.data import esc50, speechcommands
from jaxtag.data.dataset import DatasetError, SplitNotFoundError


def _tone(n=16000, sr=16000, freq=440.0, amp=0.3):
  return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


@pytest.fixture
def sc_root(tmp_path):
  """A valid Speech Commands tree: two classes, two speakers, one validation and one test clip."""
  root = tmp_path / "sc"
  for word in ("no", "yes"):
    for speaker in ("aaaa1111", "bbbb2222"):
      for n in range(2):
        io.write_wav(root / word / f"{speaker}_nohash_{n}.wav", _tone(freq=300 + 100 * n), 16000)
  (root / "validation_list.txt").write_text("yes/aaaa1111_nohash_0.wav\n")
  (root / "testing_list.txt").write_text("no/bbbb2222_nohash_1.wav\n")
  return root


def _name(path):
  return re.escape(str(path))


# --- single files --------------------------------------------------------------------------------

def test_missing_file(tmp_path):
  with pytest.raises(AudioFileError, match=_name(tmp_path / "nope.wav") + ".*no such audio file"):
    io.read_wav(tmp_path / "nope.wav")


def test_stereo_file_errors_by_default_or_is_averaged(sc_root):
  path = sc_root / "yes" / "cccc3333_nohash_0.wav"
  left, right = _tone(freq=440), _tone(freq=660)
  sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
  with pytest.raises(AudioFileError, match=_name(path) + ".*2 channels.*mono='mean'"):
    io.read_wav(path)
  with pytest.raises(AudioFileError, match=_name(path)):
    speechcommands.load_speech_commands(sc_root)
  ds = speechcommands.load_speech_commands(sc_root, mono="mean")
  j = ds.paths.index("yes/cccc3333_nohash_0.wav")
  np.testing.assert_allclose(ds.waveforms[j], (left + right) / 2, atol=1e-6)


def test_wrong_sample_rate_is_resampled_or_refused(sc_root):
  path = sc_root / "no" / "cccc3333_nohash_0.wav"
  at_8k = _tone(n=8000, sr=8000, freq=500.0)
  io.write_wav(path, at_8k, 8000, subtype="FLOAT")
  with pytest.raises(AudioFileError, match=_name(path) + ".*8000 Hz.*16000 Hz"):
    speechcommands.load_speech_commands(sc_root, on_rate_mismatch="error")
  ds = speechcommands.load_speech_commands(sc_root)
  j = ds.paths.index("no/cccc3333_nohash_0.wav")
  np.testing.assert_allclose(ds.waveforms[j], io.resample(at_8k, 8000, 16000), atol=1e-6)
  assert ds.num_samples == 16000


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_float_wav_names_file(sc_root, bad, caplog):
  path = sc_root / "yes" / "bbbb2222_nohash_1.wav"
  x = _tone()
  x[123] = bad
  sf.write(path, x, 16000, subtype="FLOAT")  # io.write_wav would refuse this.
  with pytest.raises(AudioFileError, match=_name(path) + ".*1 sample.*NaN or Inf"):
    io.read_wav(path)
  with pytest.raises(AudioFileError, match=_name(path)):
    speechcommands.load_speech_commands(sc_root)
  assert np.isnan(io.read_wav(path, allow_nonfinite=True)[0][123]) == np.isnan(bad)
  with caplog.at_level(logging.WARNING, logger="jaxtag.data.speechcommands"):
    ds = speechcommands.load_speech_commands(sc_root, on_bad_file="skip")
  assert "yes/bbbb2222_nohash_1.wav" not in ds.paths and len(ds) == 5
  assert "skipped 1 of 6 bad clips" in caplog.text and str(path) in caplog.text


def test_empty_file_names_file(sc_root):
  path = sc_root / "no" / "aaaa1111_nohash_0.wav"
  sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
  with pytest.raises(AudioFileError, match=_name(path) + ".*0 samples"):
    io.read_wav(path)
  with pytest.raises(AudioFileError, match=_name(path) + ".*0 samples"):
    speechcommands.load_speech_commands(sc_root)


@pytest.mark.parametrize("keep_bytes", [30, 44 + 1000, 44 + 2 * 16000 - 2])
def test_truncated_wav_names_file(tmp_path, keep_bytes):
  path = tmp_path / "cut.wav"
  io.write_wav(path, _tone(), 16000)
  data = path.read_bytes()
  assert len(data) == 44 + 2 * 16000  # Plain 44-byte header from libsndfile.
  path.write_bytes(data[:keep_bytes])
  with pytest.raises(AudioFileError, match=_name(path) + ".*(truncated|not a readable)"):
    io.read_wav(path)


def test_truncated_wav_in_loader(sc_root):
  path = sc_root / "yes" / "aaaa1111_nohash_1.wav"
  path.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(AudioFileError, match=_name(path) + ".*truncated.*declares 32000 bytes"):
    speechcommands.load_speech_commands(sc_root)


@pytest.mark.parametrize("content", [b"", b"hello, this is not audio\n", b"RIFF\x00\x00",
                                     bytes(range(256)) * 8])
def test_non_wav_with_wav_extension_names_file(sc_root, content):
  path = sc_root / "no" / "aaaa1111_nohash_1.wav"
  path.write_bytes(content)
  with pytest.raises(AudioFileError, match=_name(path) + ".*not a readable audio file"):
    io.read_wav(path)
  with pytest.raises(AudioFileError, match=_name(path)):
    speechcommands.load_speech_commands(sc_root)
  ds = speechcommands.load_speech_commands(sc_root, on_bad_file="skip")
  assert "no/aaaa1111_nohash_1.wav" not in ds.paths and len(ds) == 5


# --- Speech Commands layout ----------------------------------------------------------------------

def test_missing_root(tmp_path):
  with pytest.raises(DatasetError, match=_name(tmp_path / "absent") + ".*does not exist"):
    speechcommands.load_speech_commands(tmp_path / "absent")
  with pytest.raises(DatasetError, match=_name(tmp_path / "absent") + ".*does not exist"):
    esc50.load_esc50(tmp_path / "absent")


def test_missing_class_folder(sc_root):
  with pytest.raises(DatasetError, match=r"\['maybe'\] do not exist.*Available classes"):
    speechcommands.load_speech_commands(sc_root, classes=["yes", "maybe"])


def test_empty_class_folder_errors_or_is_skipped(sc_root):
  (sc_root / "up").mkdir()
  (sc_root / "up" / "README.txt").write_text("not a clip")
  with pytest.raises(DatasetError, match=_name(sc_root / "up") + ".*no .wav files.*skip"):
    speechcommands.load_speech_commands(sc_root)
  ds = speechcommands.load_speech_commands(sc_root, on_empty_class="skip")
  assert ds.class_names == ("no", "yes")


def test_no_class_folders(tmp_path):
  (tmp_path / "_background_noise_").mkdir()
  with pytest.raises(DatasetError, match="no class folders"):
    speechcommands.load_speech_commands(tmp_path)


def test_split_list_naming_missing_file(sc_root):
  (sc_root / "testing_list.txt").write_text("no/bbbb2222_nohash_1.wav\n\nyes/gone_nohash_0.wav\n")
  where = _name(sc_root / "testing_list.txt") + " line 3: names " + _name(
      sc_root / "yes" / "gone_nohash_0.wav") + ", which does not exist.*on_missing_file='skip'"
  with pytest.raises(DatasetError, match=where):
    speechcommands.load_speech_commands(sc_root, "test")
  with pytest.raises(DatasetError, match=where):
    speechcommands.list_speech_commands(sc_root, "test")


def test_split_list_line_of_a_class_folder_that_does_not_exist(sc_root):
  (sc_root / "validation_list.txt").write_text("yes/aaaa1111_nohash_0.wav\nmaybe/x_nohash_0.wav\n")
  with pytest.raises(DatasetError, match="validation_list.txt line 2: .*maybe/x_nohash_0.wav"):
    speechcommands.load_speech_commands(sc_root, "validation")
  # Lines of classes the caller did not ask for are not its business.
  ds = speechcommands.load_speech_commands(sc_root, "validation", classes=["no", "yes"])
  assert ds.paths == ("yes/aaaa1111_nohash_0.wav",) and ds.info["skipped_missing"] == 0


def test_missing_listed_files_skipped_are_counted_logged_and_recorded(sc_root, caplog):
  (sc_root / "testing_list.txt").write_text(
      "no/bbbb2222_nohash_1.wav\nyes/gone_nohash_0.wav\nno/gone_nohash_1.wav\n")
  with caplog.at_level(logging.WARNING, logger="jaxtag.data.speechcommands"):
    ds = speechcommands.load_speech_commands(sc_root, "test", on_missing_file="skip")
  assert ds.paths == ("no/bbbb2222_nohash_1.wav",)
  assert ds.info == {"skipped_missing": 2, "skipped_bad": 0}
  assert "testing_list.txt: 2 listed file(s) do not exist" in caplog.text
  assert "line 2: yes/gone_nohash_0.wav" in caplog.text
  # The training split is every clip not held out: the missing lines change nothing there.
  assert len(speechcommands.load_speech_commands(sc_root)) == 6


def test_load_splits_propagates_a_missing_listed_file_and_skips_only_on_request(sc_root, caplog):
  from jaxtag.data import sources
  (sc_root / "validation_list.txt").write_text("yes/aaaa1111_nohash_0.wav\nyes/gone_nohash_0.wav\n")
  source = sources.DataSource(kind="speech_commands", root=str(sc_root))
  with pytest.raises(DatasetError, match="validation_list.txt line 2: .*gone_nohash_0.wav"):
    sources.load_splits(source, progress=False)
  skipping = sources.DataSource(kind="speech_commands", root=str(sc_root), on_missing_file="skip")
  splits = sources.load_splits(skipping, progress=False)
  assert sources.describe_splits(splits) == {
      "train": {"num_clips": 6, "skipped_missing": 0, "skipped_bad": 0},
      "validation": {"num_clips": 1, "skipped_missing": 1, "skipped_bad": 0},
      "test": {"num_clips": 1, "skipped_missing": 0, "skipped_bad": 0}}
  # A split the source does not have is left out, logged and recorded; never an error.
  (sc_root / "validation_list.txt").unlink()
  with caplog.at_level(logging.WARNING, logger="jaxtag.data.sources"):
    splits = sources.load_splits(source, progress=False)
  assert sorted(splits) == ["test", "train"]
  assert "No 'validation' split" in caplog.text and "validation_list.txt" in caplog.text
  assert sources.describe_splits(splits)["validation"] == {"absent": True}
  # An empty list (what the exporter writes for a split the dataset lacks) is no split either.
  (sc_root / "validation_list.txt").write_text("")
  splits = sources.load_splits(source, progress=False)
  assert sorted(splits) == ["test", "train"] and len(splits["train"]) == 7


def test_missing_split_list(sc_root, caplog):
  (sc_root / "validation_list.txt").unlink()
  with pytest.raises(SplitNotFoundError, match="validation_list.txt.*not found"):
    speechcommands.load_speech_commands(sc_root, "validation")
  with caplog.at_level(logging.WARNING, logger="jaxtag.data.speechcommands"):
    train = speechcommands.load_speech_commands(sc_root)
  assert len(train) == 7 and "validation_list.txt: not found" in caplog.text


def test_splits_are_disjoint_and_cover_everything(sc_root):
  splits = {s: set(speechcommands.load_speech_commands(sc_root, s).paths)
            for s in speechcommands.SPLITS}
  assert splits["validation"] == {"yes/aaaa1111_nohash_0.wav"}
  assert splits["test"] == {"no/bbbb2222_nohash_1.wav"}
  assert len(splits["train"]) == 6 and not splits["train"] & (splits["validation"] | splits["test"])


def test_bad_option_values(sc_root):
  with pytest.raises(ValueError, match="on_bad_file"):
    speechcommands.load_speech_commands(sc_root, on_bad_file="ignore")
  with pytest.raises(ValueError, match="split"):
    speechcommands.load_speech_commands(sc_root, "dev")


# --- ESC-50 layout -------------------------------------------------------------------------------

HEADER = "filename,fold,target,category,esc10,src_file,take\n"


@pytest.fixture
def esc_root(tmp_path):
  root = tmp_path / "esc"
  rows = []
  for fold in (1, 2):
    for target, category in ((0, "dog"), (1, "rain")):
      name = f"{fold}-{100 + target}-A-{target}.wav"
      io.write_wav(root / "audio" / name, _tone(n=44100, sr=44100), 44100)
      rows.append(f"{name},{fold},{target},{category},{target == 0},{100 + target},A\n")
  (root / "meta").mkdir()
  (root / "meta" / "esc50.csv").write_text(HEADER + "".join(rows))
  return root


def test_esc50_fixture_loads(esc_root):
  ds = esc50.load_esc50(esc_root, folds=(1, 2), clip_samples=16000)
  assert ds.class_names == ("dog", "rain") and len(ds) == 4 and ds.split == "folds1-2"


def test_esc50_missing_meta_csv(esc_root):
  (esc_root / "meta" / "esc50.csv").unlink()
  with pytest.raises(DatasetError, match=_name(esc_root / "meta" / "esc50.csv") + ".*not found"):
    esc50.load_esc50(esc_root, folds=(1,))


def test_esc50_row_naming_missing_file(esc_root, caplog):
  (esc_root / "audio" / "2-101-A-1.wav").unlink()
  with pytest.raises(DatasetError,
                     match=r"esc50\.csv line 5: field 'filename' names .*2-101-A-1\.wav.*does not "
                     "exist"):
    esc50.load_esc50(esc_root, folds=(1, 2))
  with caplog.at_level(logging.WARNING, logger="jaxtag.data.esc50"):
    ds = esc50.load_esc50(esc_root, folds=(1, 2), on_bad_file="skip", clip_samples=16000)
  assert len(ds) == 3 and "skipping 1 row" in caplog.text
  assert ds.info == {"skipped_missing": 1, "skipped_bad": 0}
  # on_missing_file decides on its own when given (DataSource always gives it).
  with pytest.raises(DatasetError, match="on_missing_file='skip'"):
    esc50.load_esc50(esc_root, folds=(1, 2), on_bad_file="skip", on_missing_file="error")
  ds = esc50.load_esc50(esc_root, folds=(1, 2), on_missing_file="skip", clip_samples=16000)
  assert len(ds) == 3 and ds.info["skipped_missing"] == 1


@pytest.mark.parametrize("header, row, message", [
    ("filename,fold,category\n", "1-100-A-0.wav,1,dog\n", r"missing column\(s\) \['target'\]"),
    (HEADER, "1-100-A-0.wav,one,0,dog,True,100,A\n", r"line 2: field 'fold' must be an integer"),
    (HEADER, "1-100-A-0.wav,1,0.5,dog,True,100,A\n", r"line 2: field 'target' must be an integer"),
    (HEADER, "1-100-A-0.wav,1,0,dog,maybe,100,A\n", r"line 2: field 'esc10' must be True"),
    (HEADER, "audio/1-100-A-0.wav,1,0,dog,True,100,A\n", r"line 2: field 'filename'"),
    (HEADER, "1-100-A-0.wav,1,0,dog,True,100,A\n1-101-A-1.wav,1,0,cat,True,101,A\n",
     r"line 3: target 0 is 'cat' here but 'dog'"),
    (HEADER, "1-100-A-0.wav,1,0,dog,True,100,A\n1-100-A-0.wav,1,0,dog,True,100,A\n",
     r"line 3: file '1-100-A-0.wav' already listed on line 2"),
    (HEADER, "", r"no rows"),
])
def test_esc50_bad_csv(esc_root, header, row, message):
  csv_path = esc_root / "meta" / "esc50.csv"
  csv_path.write_text(header + row)
  with pytest.raises(DatasetError, match=_name(csv_path) + ".*" + message):
    esc50.load_esc50(esc_root, folds=(1,))


def test_esc50_missing_fold_and_missing_esc10_column(esc_root):
  with pytest.raises(DatasetError, match=r"no rows for fold\(s\) \[3\].*folds present: \[1, 2\]"):
    esc50.load_esc50(esc_root, folds=(1, 3))
  csv_path = esc_root / "meta" / "esc50.csv"
  lines = csv_path.read_text().splitlines()
  csv_path.write_text("\n".join(",".join(l.split(",")[:4]) for l in lines) + "\n")
  assert len(esc50.load_esc50(esc_root, folds=(1,), clip_samples=100)) == 2  # esc10 optional.
  with pytest.raises(DatasetError, match=r"missing column\(s\) \['esc10'\]"):
    esc50.load_esc50(esc_root, esc10_only=True)


def test_esc50_bad_clip_and_stereo(esc_root):
  path = esc_root / "audio" / "1-100-A-0.wav"
  sf.write(path, np.stack([_tone(44100, 44100)] * 2, axis=1), 44100)
  with pytest.raises(AudioFileError, match=_name(path) + ".*2 channels"):
    esc50.load_esc50(esc_root, folds=(1,))
  assert len(esc50.load_esc50(esc_root, folds=(1,), mono="mean", clip_samples=100)) == 2
  path.write_bytes(b"garbage")
  with pytest.raises(AudioFileError, match=_name(path) + ".*not a readable"):
    esc50.load_esc50(esc_root, folds=(1,))
  # The first bad file in csv order is reported.
  with pytest.raises(AudioFileError, match=_name(path) + ".*not a readable"):
    esc50.load_esc50(esc_root, folds=(2, 1), on_rate_mismatch="error")
  with pytest.raises(AudioFileError, match=r"2-100-A-0\.wav: sample rate is 44100 Hz"):
    esc50.load_esc50(esc_root, folds=(2,), on_rate_mismatch="error")


def test_esc50_export_needs_fold(tmp_path):
  from jaxtag.data.dataset import AudioDataset
  ds = AudioDataset(np.zeros((2, 10)), np.array([0, 1]), ("a", "b"), 16000)
  with pytest.raises(DatasetError, match=r"metadata\['fold'\]"):
    esc50.export_esc50(ds, tmp_path / "out")


# --- options as the caller sets them -------------------------------------------------------------

def test_loader_messages_name_the_option_or_the_launcher_flag(sc_root):
  from jaxtag import errors
  path = sc_root / "yes" / "cccc3333_nohash_0.wav"
  sf.write(path, np.stack([_tone(), _tone()], axis=1), 16000, subtype="FLOAT")
  with pytest.raises(AudioFileError, match=r"2 channels.*Pass mono='mean' .*on_bad_file='skip'"):
    speechcommands.load_speech_commands(sc_root)
  launcher_config = {"data": {"mono": "error", "on_bad_file": "error"}}
  with errors.launcher_flags(launcher_config, {"DataSource": "data"}):
    with pytest.raises(AudioFileError, match=_name(path) + r".*Pass --config\.data\.mono=mean .*"
                       r"pass --config\.data\.on_bad_file=skip\."):
      speechcommands.load_speech_commands(sc_root)
  io.write_wav(path, _tone(n=8000, sr=8000), 8000)
  with pytest.raises(AudioFileError, match=r"8000 Hz.*Pass on_rate_mismatch='resample'"):
    speechcommands.load_speech_commands(sc_root, on_rate_mismatch="error")


def test_data_source_validates_every_option_naming_it():
  from jaxtag import errors
  from jaxtag.data import sources
  with pytest.raises(DatasetError, match=r"DataSource\.mono must be one of \('error', 'mean'\)"):
    sources.DataSource(mono="avg")
  with errors.launcher_flags({"data": {"on_missing_file": "error"}}, {"DataSource": "data"}):
    with pytest.raises(DatasetError, match=r"--config\.data\.on_missing_file must be one of"):
      sources.DataSource(on_missing_file="ignore")
  with pytest.raises(DatasetError, match=r"DataSource\.clip_samples must be a positive integer"):
    sources.DataSource(clip_samples=0)
  with pytest.raises(DatasetError, match=r"DataSource\.classes selects class folders"):
    sources.DataSource(kind="esc50", root="x", classes=("dog",))
  # A flag gives ("yes,no",); JSON (a recorded config) gives a list.
  assert sources.DataSource(classes=("yes,no",)).classes == ("yes", "no")
  assert sources.DataSource(classes=["yes", "no"]).classes == ("yes", "no")


def test_data_source_passes_its_options_to_the_loader(sc_root):
  from jaxtag.data import sources
  path = sc_root / "yes" / "cccc3333_nohash_0.wav"
  sf.write(path, np.stack([_tone(), -_tone()], axis=1), 16000, subtype="FLOAT")
  (sc_root / "no" / "dddd4444_nohash_0.wav").write_bytes(b"not audio")
  source = sources.DataSource(kind="speech_commands", root=str(sc_root), mono="mean",
                              on_bad_file="skip", clip_samples=800, classes=("yes,no",))
  train = sources.load_split(source, "train", progress=False)
  assert train.class_names == ("yes", "no") and train.num_samples == 800
  j = train.paths.index("yes/cccc3333_nohash_0.wav")
  np.testing.assert_allclose(train.waveforms[j], 0.0, atol=1e-6)   # the channels' mean
  assert train.info == {"skipped_missing": 0, "skipped_bad": 1}
  assert sources.class_names(source) == ("yes", "no")
