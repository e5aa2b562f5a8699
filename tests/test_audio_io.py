"""Tests for jaxtag.audio.io: WAV round trips, 16-bit rounding, atomic writes, resampling."""

import os

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import signal

from jaxtag.audio import io

LSB = 1.0 / 32768


def test_pcm16_rounding_is_documented_golden(tmp_path):
  # round_half_even(x * 32768), saturated to int16, after clipping to [-1, 1].
  x = np.array([0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 32767.4, 32767.6, 32768.0, -32768.0, 1e6, -1e6],
               np.float64) * LSB
  want = np.array([0, 0, 2, 2, 0, -2, 32767, 32767, 32767, -32768, 32767, -32768], np.int16)
  path = tmp_path / "golden.wav"
  io.write_wav(path, x, 16000)
  got, sr = sf.read(path, dtype="int16")
  assert sr == 16000 and sf.info(str(path)).subtype == "PCM_16"
  np.testing.assert_array_equal(got, want)
  back, _ = io.read_wav(path)
  np.testing.assert_array_equal(back, want.astype(np.float32) / 32768)


def test_round_trip_within_half_lsb(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(-32767 / 32768, 32767 / 32768, 8000).astype(np.float32)
  io.write_wav(tmp_path / "a.wav", x, 8000)
  y, sr = io.read_wav(tmp_path / "a.wav")
  assert sr == 8000 and y.dtype == np.float32 and y.shape == x.shape
  assert np.max(np.abs(y - x)) <= 0.5 * LSB + 1e-9


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 300),
                  elements=st.floats(-1.0, 1.0, width=32, allow_nan=False)))
def test_round_trip_property_within_one_lsb(tmp_path_factory, x):
  path = tmp_path_factory.mktemp("hyp") / "x.wav"
  io.write_wav(path, x, 16000)
  y, _ = io.read_wav(path)
  assert y.shape == x.shape
  assert np.max(np.abs(y - x)) <= LSB


def test_float_subtype_is_exact_and_other_subtypes_work(tmp_path):
  x = np.random.default_rng(1).uniform(-1, 1, 1000).astype(np.float32)
  io.write_wav(tmp_path / "f.wav", x, 22050, subtype="FLOAT")
  y, sr = io.read_wav(tmp_path / "f.wav")
  assert sr == 22050
  np.testing.assert_array_equal(y, x)
  io.write_wav(tmp_path / "p24.wav", x, 22050, subtype="PCM_24")
  y24, _ = io.read_wav(tmp_path / "p24.wav")
  np.testing.assert_allclose(y24, x, atol=2.0 ** -22)


def test_write_creates_parents_replaces_atomically_and_leaves_no_temp(tmp_path):
  path = tmp_path / "a" / "b" / "clip.wav"
  io.write_wav(path, np.full(100, 0.25), 16000)
  io.write_wav(path, np.full(50, -0.5), 16000)  # Replaces the earlier file.
  y, _ = io.read_wav(path)
  np.testing.assert_array_equal(y, np.full(50, -0.5, np.float32))
  assert os.listdir(path.parent) == ["clip.wav"]
  assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path):
  path = tmp_path / "clip.wav"
  io.write_wav(path, np.full(10, 0.5), 16000)
  with pytest.raises(Exception):
    io.write_wav(path, np.full(10, 0.1), 16000, subtype="NOT_A_SUBTYPE")
  assert os.listdir(tmp_path) == ["clip.wav"]
  np.testing.assert_array_equal(io.read_wav(path)[0], np.full(10, 0.5, np.float32))


def test_write_rejects_nonfinite_and_empty_naming_path(tmp_path):
  with pytest.raises(io.AudioFileError, match="nan_clip.wav.*NaN or Inf"):
    io.write_wav(tmp_path / "nan_clip.wav", np.array([0.0, np.nan]), 16000)
  with pytest.raises(io.AudioFileError, match="empty_clip.wav.*0 samples"):
    io.write_wav(tmp_path / "empty_clip.wav", np.zeros(0), 16000)
  assert not os.listdir(tmp_path)


def test_stereo_write_and_mono_mean_read(tmp_path):
  x = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1)
  io.write_wav(tmp_path / "st.wav", x, 16000)
  assert sf.info(str(tmp_path / "st.wav")).channels == 2
  y, _ = io.read_wav(tmp_path / "st.wav", mono="mean")
  np.testing.assert_allclose(y, np.full(100, 0.125), atol=LSB)


def _tone(freq, sr, n, amp=0.5):
  return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


@pytest.mark.parametrize("n", [22050, 22051, 1000, 4410, 3])
def test_resample_length_is_rounded_ratio(n):
  y = io.resample(np.ones(n, np.float32), 22050, 16000)
  assert y.shape == (int(np.floor(n * 16000 / 22050 + 0.5)),) and y.dtype == np.float32


def test_resample_sine_keeps_frequency_and_amplitude():
  x = _tone(1000.0, 22050, 22050)
  y = io.resample(x, 22050, 16000)
  assert y.shape == (16000,)
  # Exact agreement with the reference it wraps (gcd-reduced ratio 320/441).
  np.testing.assert_allclose(y, signal.resample_poly(x, 320, 441)[:16000], atol=1e-6)
  spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
  assert abs(np.argmax(spectrum) * 16000 / len(y) - 1000.0) <= 1.0  # 1 Hz bins.
  interior = y[500:-500]  # Away from the filter's edge transients.
  assert abs(np.max(np.abs(interior)) - 0.5) < 0.005  # Within 1% amplitude.
  np.testing.assert_allclose(interior, _tone(1000.0, 16000, 16000)[500:-500], atol=0.005)


def test_resample_batched_axis_and_identity():
  x = np.stack([_tone(440.0, 44100, 4410), _tone(880.0, 44100, 4410)])
  y = io.resample(x, 44100, 16000, axis=-1)
  assert y.shape == (2, 1600)
  np.testing.assert_allclose(y[1], io.resample(x[1], 44100, 16000), atol=1e-7)
  yt = io.resample(x.T, 44100, 16000, axis=0)
  np.testing.assert_allclose(yt.T, y, atol=1e-7)
  np.testing.assert_array_equal(io.resample(x, 16000, 16000), x)
  with pytest.raises(ValueError, match="orig_sr"):
    io.resample(x, 0, 16000)
  with pytest.raises(ValueError, match="target_sr"):
    io.resample(x, 16000, 8000.5)


def test_read_wav_resamples_or_refuses(tmp_path):
  x = _tone(1000.0, 22050, 22050)
  io.write_wav(tmp_path / "t.wav", x, 22050, subtype="FLOAT")
  y, sr = io.read_wav(tmp_path / "t.wav", sample_rate=16000)
  assert sr == 16000
  np.testing.assert_allclose(y, io.resample(x, 22050, 16000), atol=1e-6)
  with pytest.raises(io.AudioFileError, match=r"t\.wav.*22050 Hz.*16000 Hz.*resample"):
    io.read_wav(tmp_path / "t.wav", sample_rate=16000, resample=False)


def test_fit_length():
  x = np.arange(5, dtype=np.float32)
  np.testing.assert_array_equal(io.fit_length(x, 3), [0, 1, 2])
  np.testing.assert_array_equal(io.fit_length(x, 7), [0, 1, 2, 3, 4, 0, 0])
  assert io.fit_length(x, 5) is x
  np.testing.assert_array_equal(io.fit_length(np.ones((2, 3)), 4, axis=0),
                                [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]])
  with pytest.raises(ValueError):
    io.fit_length(x, -1)


def test_validate_waveform():
  assert io.validate_waveform([0, 1], name="w").dtype == np.float32
  with pytest.raises(io.AudioFileError, match="my_clip.*2-D|my_clip.*1-D"):
    io.validate_waveform(np.zeros((2, 2)), name="my_clip")
  with pytest.raises(io.AudioFileError, match="my_clip.*real-valued"):
    io.validate_waveform(np.zeros(3, complex), name="my_clip")
  with pytest.raises(io.AudioFileError, match="my_clip.*1 sample"):
    io.validate_waveform([0.0, np.inf], name="my_clip")
  assert np.isnan(io.validate_waveform([np.nan], allow_nonfinite=True)[0])


def test_clip_quality_golden():
  clips = np.array([[0.0, 5e-5, -5e-5, 0.0],   # silent
                    [0.5, 1.0, -0.9995, 0.1],  # 2 of 4 samples clipped
                    [0.2, -0.3, 0.1, 0.0]], np.float32)
  silent, clipped = io.clip_quality(clips)
  np.testing.assert_array_equal(silent, [True, False, False])
  np.testing.assert_allclose(clipped, [0.0, 0.5, 0.0])


def test_read_wav_files_fits_lengths_and_skips(tmp_path):
  for i, n in enumerate([10, 20, 30]):
    io.write_wav(tmp_path / f"{i}.wav", np.full(n, 0.5), 16000)
  (tmp_path / "bad.wav").write_bytes(b"not audio")
  paths = [tmp_path / "0.wav", tmp_path / "bad.wav", tmp_path / "1.wav", tmp_path / "2.wav"]
  w, kept, errors = io.read_wav_files(paths, num_samples=20, skip_errors=True, max_workers=3)
  assert kept == [0, 2, 3] and len(errors) == 1 and "bad.wav" in errors[0]
  assert w.shape == (3, 20) and w.dtype == np.float32
  np.testing.assert_array_equal(w.sum(axis=1), [5.0, 10.0, 10.0])
  with pytest.raises(io.AudioFileError, match="bad.wav"):
    io.read_wav_files(paths, num_samples=20, progress=True)
  w1, kept1, _ = io.read_wav_files(paths[2:3], num_samples=None)
  assert kept1 == [0] and w1.shape == (1, 20)
  with pytest.raises(io.AudioFileError, match="different lengths"):
    io.read_wav_files(paths[2:], num_samples=None)


def test_write_text_atomic(tmp_path):
  io.write_text_atomic(tmp_path / "d" / "x.txt", "a\nb\n")
  assert (tmp_path / "d" / "x.txt").read_text() == "a\nb\n"
  assert os.listdir(tmp_path / "d") == ["x.txt"]
