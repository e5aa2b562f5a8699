"""Tests of the embedded espeak-ng corpus: the ctypes engine, determinism, layout and caching."""

import dataclasses
import hashlib
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from jaxtag.data import corpus
from jaxtag.data import espeak
from jaxtag.data.dataset import DatasetError

TINY = corpus.CorpusConfig.tiny()


def _file_digests(root: pathlib.Path) -> dict[str, str]:
  return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _read_list(root: pathlib.Path, name: str) -> list[str]:
  return (root / name).read_text().split()


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("corpus") / "tiny"
  return corpus.synthesize_corpus(root, TINY, num_workers=0, progress=False)


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> pathlib.Path:
  """A private copy of the tiny corpus that a test may damage."""
  root = tmp_path / "copy"
  shutil.copytree(tiny_root, root)
  return root


# --- The ctypes engine. ---------------------------------------------------------------------


def _active_seconds(samples: np.ndarray, sample_rate: int) -> float:
  mag = np.abs(samples.astype(np.float32))
  active = np.flatnonzero(mag > 0.01 * mag.max())
  return (active[-1] - active[0]) / sample_rate


def _median_f0(samples: np.ndarray, sample_rate: int) -> float:
  librosa = pytest.importorskip("librosa")
  y = samples.astype(np.float32) / 32768
  f0 = librosa.yin(y, fmin=50, fmax=500, sr=sample_rate, frame_length=1024, hop_length=256)
  rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=256)[0]
  return float(np.median(f0[rms > 0.3 * rms.max()]))  # Loud frames: the vowels.


def test_engine_speaks_a_word_of_plausible_length():
  engine = espeak.get_engine()
  assert engine.sample_rate == 22050
  samples = engine.synthesize("yes", voice="en-us")
  assert samples.dtype == np.int16
  assert np.abs(samples).max() > 3000  # Far from silent (peak above -21 dBFS).
  assert 0.2 < _active_seconds(samples, engine.sample_rate) < 1.0


def test_engine_rate_and_pitch_change_the_audio():
  engine = espeak.get_engine()
  slow = engine.synthesize("forward", voice="en", rate=100)
  fast = engine.synthesize("forward", voice="en", rate=300)
  assert _active_seconds(slow, 22050) > 1.8 * _active_seconds(fast, 22050)
  low = engine.synthesize("marvin", voice="en", pitch=10)
  high = engine.synthesize("marvin", voice="en", pitch=90)
  assert _median_f0(high, 22050) > 1.3 * _median_f0(low, 22050)


def test_engine_variants_give_different_voices():
  engine = espeak.get_engine()
  male = engine.synthesize("marvin", voice="en+m3")
  female = engine.synthesize("marvin", voice="en+f2")
  klatt = engine.synthesize("marvin", voice="en+klatt")
  assert len({male.tobytes(), female.tobytes(), klatt.tobytes()}) == 3
  assert _median_f0(female, 22050) > 1.3 * _median_f0(male, 22050)


def test_engine_call_does_not_depend_on_earlier_calls():
  engine = espeak.get_engine()
  first = engine.synthesize("sheila", voice="en+f3", seed=7)
  engine.synthesize("happy", voice="de+klatt", pitch=90, seed=1)
  again = engine.synthesize("sheila", voice="en+f3", seed=7)
  np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("voice", ["xx-nonexistent", "en+no_such_variant"])
def test_engine_rejects_unknown_voice(voice):
  with pytest.raises(ValueError, match="list_v"):
    espeak.get_engine().synthesize("yes", voice=voice)


def test_engine_rejects_out_of_range_rate():
  with pytest.raises(ValueError, match="rate"):
    espeak.get_engine().synthesize("yes", rate=10)


def test_default_voices_and_variants_exist():
  voices, variants = set(espeak.list_voices()), set(espeak.list_variants())
  config = corpus.CorpusConfig()
  assert set(config.voices) | set(config.accent_voices) <= voices
  assert set(config.variants) <= variants


# --- Speakers and config. -----------------------------------------------------------------


def test_default_speakers_are_split_disjointly():
  config = corpus.CorpusConfig()
  speakers = corpus.make_speakers(config)
  ids = [s.speaker_id for s in speakers]
  assert len(set(ids)) == len(ids) == config.num_speakers
  counts = {split: sum(s.split == split for s in speakers) for split in corpus._SPLITS}
  assert counts == {"train": 160, "validation": 20, "test": 20}
  accented = np.mean([s.voice in config.accent_voices for s in speakers])
  assert 0.2 < accented < 0.4
  assert len({(s.voice, s.variant) for s in speakers}) == len(speakers)
  assert speakers == corpus.make_speakers(config)
  other = corpus.make_speakers(corpus.CorpusConfig(seed=1))
  assert not set(ids) & {s.speaker_id for s in other}


@pytest.mark.parametrize("overrides", [
    dict(words=("yes", "yes")), dict(words=("a/b",)), dict(words=("_background_noise_",)),
    dict(split_fractions=(0.5, 0.5, 0.5)), dict(num_speakers=2), dict(speaker_rate=(20, 100)),
    dict(variants=()), dict(speaker_pitch=(50, 120)),
])
def test_config_rejects_bad_fields(overrides):
  with pytest.raises(DatasetError, match="CorpusConfig"):
    corpus.CorpusConfig(**overrides)


def test_presets_and_default_dir(monkeypatch, tmp_path):
  assert corpus.CorpusConfig.preset("tiny", seed=3) == corpus.CorpusConfig.tiny(seed=3)
  assert corpus.CorpusConfig.preset("default") == corpus.CorpusConfig()
  large = corpus.CorpusConfig.preset("large", seed=2)
  # Same words and recipe as the default, five times the speakers (28,000 training clips).
  assert large == dataclasses.replace(corpus.CorpusConfig(seed=2), num_speakers=1000)
  assert large.fingerprint() != corpus.CorpusConfig(seed=2).fingerprint()
  assert corpus.CorpusConfig.preset("xl").num_speakers == 3000   # 84,000 training clips
  with pytest.raises(DatasetError, match="preset"):
    corpus.CorpusConfig.preset("huge")
  monkeypatch.setenv("JAXTAG_DATA", str(tmp_path))
  tiny_dir = corpus.default_corpus_dir(TINY)
  assert tiny_dir.parent == tmp_path / "corpus"
  assert tiny_dir != corpus.default_corpus_dir(corpus.CorpusConfig.tiny(seed=1))


# --- The synthesised corpus. ----------------------------------------------------------------


def test_layout_is_speech_commands(tiny_root):
  validation = _read_list(tiny_root, "validation_list.txt")
  test = _read_list(tiny_root, "testing_list.txt")
  wavs = sorted(p.relative_to(tiny_root).as_posix() for p in tiny_root.glob("*/*.wav")
                if not p.parent.name.startswith("_"))
  assert len(wavs) == len(TINY.words) * TINY.num_speakers
  train = sorted(set(wavs) - set(validation) - set(test))
  splits = {"train": train, "validation": validation, "test": test}
  assert not set(validation) & set(test)
  speakers = {}
  for split, paths in splits.items():
    assert all((tiny_root / p).is_file() for p in paths)
    assert {p.split("/")[0] for p in paths} == set(TINY.words), split
    speakers[split] = {p.split("/")[1].split("_nohash_")[0] for p in paths}
    assert len(speakers[split]) == 2
  assert not (speakers["train"] & speakers["validation"] or speakers["train"] & speakers["test"]
              or speakers["validation"] & speakers["test"])
  for path in wavs:
    info = sf.info(tiny_root / path)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        16000, 1, 16000, "PCM_16")
  noises = sorted(p.name for p in (tiny_root / corpus.BACKGROUND_NOISE_DIR).glob("*.wav"))
  assert noises == ["babble.wav", "brown_noise.wav", "mains_hum.wav", "pink_noise.wav",
                    "white_noise.wav"]
  manifest = corpus.read_manifest(tiny_root)
  assert manifest["counts"]["clips"] == len(wavs)
  assert manifest["counts"]["test"] == {"clips": len(test), "speakers": 2}
  assert manifest["config"] == TINY.to_json()


def test_clips_are_audible_noisy_and_varied(tiny_root):
  clips = np.stack([sf.read(p, dtype="float32")[0] for p in sorted(tiny_root.glob("yes/*.wav"))])
  peaks = np.abs(clips).max(axis=1)
  lo, hi = 10 ** (np.array(TINY.peak_dbfs) / 20)
  assert np.all((peaks > lo * 0.99) & (peaks < hi * 1.01))
  # Background noise everywhere: no stretch of digital silence before the word.
  assert np.all(np.abs(clips[:, :400]).max(axis=1) > 0)
  # Random onsets: the loudest 10 ms frame is not at the same place in every clip.
  frames = (clips[:, :16000].reshape(len(clips), 100, 160) ** 2).sum(-1)
  assert len(set(frames.argmax(axis=1))) > 1


def test_same_seed_same_bytes_whatever_the_workers(tiny_root, tmp_path):
  parallel = corpus.synthesize_corpus(tmp_path / "parallel", TINY, num_workers=2, progress=False)
  assert _file_digests(parallel) == _file_digests(tiny_root)
  assert corpus.read_manifest(parallel)["sha256"] == corpus.read_manifest(tiny_root)["sha256"]


def test_other_seed_other_bytes(tiny_root, tmp_path):
  other = corpus.synthesize_corpus(tmp_path / "other", corpus.CorpusConfig.tiny(seed=1),
                                   num_workers=0, progress=False)
  assert corpus.read_manifest(other)["sha256"] != corpus.read_manifest(tiny_root)["sha256"]
  clip_hashes = lambda d: {h for p, h in d.items() if not p.startswith(("_", "."))}
  assert not clip_hashes(_file_digests(other)) & clip_hashes(_file_digests(tiny_root))


def test_render_clips_reproduces_the_files(tiny_root):
  speaker = corpus.make_speakers(TINY)[4]
  clip, = corpus.render_clips(espeak.get_engine(), speaker, TINY, [("up", 0)])
  stored, _ = sf.read(tiny_root / "up" / f"{speaker.speaker_id}_nohash_0.wav", dtype="int16")
  np.testing.assert_array_equal(np.clip(np.rint(clip * 32768), -32768, 32767), stored)


def test_long_words_are_spoken_faster_to_fit():
  config = corpus.CorpusConfig.tiny(clip_seconds=0.4, speaker_rate=(80, 90))
  speaker = corpus.make_speakers(config)[0]
  engine = espeak.get_engine()
  natural = engine.synthesize("backward", voice=speaker.espeak_voice, rate=85)
  assert _active_seconds(natural, 22050) > 0.5
  rng = corpus.clip_rng(config, speaker, "backward", 0)
  speech = corpus._speak(engine, speaker, "backward", rng, config)
  assert 0.25 * 22050 < speech.size <= 0.95 * 0.4 * 22050
  clip, = corpus.render_clips(engine, speaker, config, [("backward", 0)])
  assert clip.shape == (6400,)


def test_cache_hit_does_not_rewrite(tiny_copy):
  watched = [tiny_copy / corpus.MANIFEST_NAME, next(tiny_copy.glob("yes/*.wav"))]
  before = [p.stat().st_mtime_ns for p in watched]
  assert corpus.synthesize_corpus(tiny_copy, TINY, num_workers=0, progress=False) == tiny_copy
  assert [p.stat().st_mtime_ns for p in watched] == before


def _drop_manifest(root):
  (root / corpus.MANIFEST_NAME).unlink()


def _drop_clip(root):
  next(root.glob("no/*.wav")).unlink()


def _flip_bytes(root):
  path = next(root.glob("down/*.wav"))
  data = bytearray(path.read_bytes())
  data[-100:] = bytes(100)  # Same size, other samples: only the SHA-256 can tell.
  path.write_bytes(bytes(data))


def _truncate_manifest(root):
  path = root / corpus.MANIFEST_NAME
  path.write_text(path.read_text()[:100])


@pytest.mark.parametrize("damage", [_drop_manifest, _drop_clip, _flip_bytes, _truncate_manifest])
def test_damaged_cache_is_regenerated(tiny_root, tiny_copy, damage):
  damage(tiny_copy)
  assert not corpus.is_complete(tiny_copy, TINY)
  corpus.synthesize_corpus(tiny_copy, TINY, num_workers=0, progress=False)
  assert corpus.is_complete(tiny_copy, TINY)
  assert _file_digests(tiny_copy) == _file_digests(tiny_root)


def test_other_config_replaces_the_corpus(tiny_copy):
  config = corpus.CorpusConfig.tiny(words=("yes", "stop"))
  corpus.synthesize_corpus(tiny_copy, config, num_workers=0, progress=False)
  assert corpus.read_manifest(tiny_copy)["config"] == config.to_json()
  assert not (tiny_copy / "up").exists()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
  root = tmp_path / "mine"
  root.mkdir()
  (root / "thesis.txt").write_text("precious")
  with pytest.raises(DatasetError, match="not a jaxtag corpus"):
    corpus.synthesize_corpus(root, TINY, num_workers=0, progress=False)
  assert (root / "thesis.txt").read_text() == "precious"
  (root / "manifest.json").write_text('{"files": 3}')   # A manifest, but not the corpus's.
  with pytest.raises(DatasetError, match="not a jaxtag corpus"):
    corpus.synthesize_corpus(root, TINY, num_workers=0, progress=False)
  assert (root / "thesis.txt").read_text() == "precious"


def test_loads_through_speech_commands_loader(tiny_root):
  speechcommands = pytest.importorskip(
      "jaxtag.data.speechcommands", reason="jaxtag.data.speechcommands is not written yet")
  manifest = corpus.read_manifest(tiny_root)
  by_split = {s["speaker_id"]: s["split"] for s in manifest["speakers"]}
  for split in ("train", "validation", "test"):
    dataset = speechcommands.load_speech_commands(tiny_root, split)
    assert dataset.class_names == tuple(sorted(TINY.words))
    assert dataset.waveforms.shape == (len(TINY.words) * 2, 16000)
    assert {by_split[s] for s in dataset.speaker_ids} == {split}
    assert np.all(dataset.class_counts() == 2)
    assert not dataset.metadata["silent"].any()
