"""jaxtag.taggants.blackbox: the local box ranks as the model's logits do; input checks; WAV.

The HTTP client against a live server is tested in test_serve.py.
"""

import io
import socket

import jax
import numpy as np
import pytest
import soundfile as sf

from jaxtag import train
from jaxtag.audio import io as audio_io
from jaxtag.taggants import blackbox

from tiny_classifier import CLASSES, CLIP, SR, tone_clips as clips  # noqa: F401


def model_logits(tiny_workdir, x: np.ndarray) -> np.ndarray:
  """Logits straight from the restored nnx model (not through the black box's apply_fn)."""
  trained = train.restore_for_inference(tiny_workdir)
  return np.asarray(jax.jit(lambda w: trained.model(w)[0])(x))


def test_local_top_k_is_the_argsort_of_the_models_logits(tiny_workdir, tiny_box):
  x, _ = clips(10, 1)
  logits = model_logits(tiny_workdir, x)
  # Rankings are only comparable where no two logits nearly tie (float noise between shapes).
  assert np.min(np.diff(np.sort(logits, axis=1), axis=1)) > 1e-4
  expected = np.argsort(-logits, axis=1, kind="stable")
  assert len({tuple(row[:2]) for row in expected}) > 1, "degenerate model: one ranking for all"
  for k in (1, 3, len(CLASSES)):
    got = tiny_box.top_k(x, k)  # 10 clips: batches of 4, 4 and 2 (+2 padding rows).
    assert got.dtype == np.int32 and got.shape == (10, k)
    np.testing.assert_array_equal(got, expected[:, :k])
  # One clip alone (the server's path) and odd slices answer the same.
  np.testing.assert_array_equal(tiny_box.top_k(x[3:4], 4), expected[3:4, :4])
  np.testing.assert_array_equal(tiny_box.top_k(x[5:10], 2), expected[5:10, :2])
  # Every k and N above ran through two compiled shapes: (1, CLIP) and (4, CLIP).
  assert tiny_box.trace_count == 2


def test_local_at_a_step_answers_as_that_checkpoint(tiny_workdir, tiny_box):
  """``LocalBlackBox(workdir, step=s)``: the model as it was at a kept checkpoint (how
  ``benchmarks/taggant_epochs.py`` tests every epoch); the last step is the final model."""
  steps = train.checkpoint_steps(tiny_workdir)
  assert len(steps) >= 2, steps
  x, _ = clips(10, 1)
  early = blackbox.LocalBlackBox(tiny_workdir, step=steps[0], batch_size=4)
  trained = train.restore_step(tiny_workdir, steps[0])
  logits = np.asarray(jax.jit(lambda w: trained.model(w)[0])(x))
  assert np.min(np.diff(np.sort(logits, axis=1), axis=1)) > 1e-4
  np.testing.assert_array_equal(early.top_k(x, 3),
                                np.argsort(-logits, axis=1, kind="stable")[:, :3])
  assert not np.allclose(logits, model_logits(tiny_workdir, x))   # not the final weights
  last = blackbox.LocalBlackBox(tiny_workdir, step=steps[-1], batch_size=4)
  np.testing.assert_array_equal(last.top_k(x, len(CLASSES)), tiny_box.top_k(x, len(CLASSES)))
  assert f"step {steps[0]}" in repr(early) and "step" not in repr(tiny_box)
  with pytest.raises(FileNotFoundError, match="holds no checkpoint of step 999999"):
    blackbox.LocalBlackBox(tiny_workdir, step=999_999)


def test_local_fits_clips_to_the_training_length(tiny_box):
  x, _ = clips(3, 2, length=CLIP + 700)
  np.testing.assert_array_equal(tiny_box.top_k(x, 3), tiny_box.top_k(x[:, :CLIP], 3))
  short = x[:, :1500]
  padded = np.concatenate([short, np.zeros((3, CLIP - 1500), np.float32)], axis=1)
  np.testing.assert_array_equal(tiny_box.top_k(short, 3), tiny_box.top_k(padded, 3))


def test_blackbox_attributes_and_protocol(tiny_box, tiny_workdir):
  assert isinstance(tiny_box, blackbox.BlackBox)
  assert tiny_box.class_names == CLASSES and tiny_box.sample_rate == SR and tiny_box.clip_samples == CLIP
  assert tiny_box.num_classes == len(CLASSES)
  assert isinstance(blackbox.open_blackbox(tiny_workdir), blackbox.LocalBlackBox)
  assert isinstance(blackbox.open_blackbox(str(tiny_workdir), batch_size=2), blackbox.LocalBlackBox)


@pytest.mark.parametrize("k", [0, 7, -1, 1.5, True, "3", None])
def test_k_out_of_bounds_raises(tiny_box, k):
  x, _ = clips(2, 3)
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 6\]"):
    tiny_box.top_k(x, k)


def test_numpy_integer_k_is_accepted(tiny_box):
  x, _ = clips(2, 3)
  np.testing.assert_array_equal(tiny_box.top_k(x, np.int64(2)), tiny_box.top_k(x, 2))


@pytest.mark.parametrize("waveforms, kwargs, match", [
    (np.zeros(CLIP, np.float32), {}, "expected a 2-D waveform"),
    (np.zeros((1, 2, CLIP), np.float32), {}, "expected a 2-D waveform"),
    (np.zeros((0, CLIP), np.float32), {}, "no clips"),
    (np.zeros((2, 0), np.float32), {}, "0 samples"),
    (np.full((2, CLIP), np.nan, np.float32), {}, "NaN or Inf"),
    (np.zeros((2, CLIP), np.complex64), {}, "real-valued"),
    (np.zeros((2, CLIP), np.float32), {"sample_rate": 16000}, "model expects 8000 Hz"),
])
def test_bad_waveforms_raise_clear_errors(tiny_box, waveforms, kwargs, match):
  with pytest.raises(audio_io.AudioFileError, match=match):
    tiny_box.top_k(waveforms, 1, **kwargs)


def test_matching_sample_rate_is_accepted(tiny_box):
  x, _ = clips(2, 4)
  np.testing.assert_array_equal(tiny_box.top_k(x, 2, sample_rate=SR), tiny_box.top_k(x, 2))


def test_missing_or_unfinished_workdir_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no finished training run"):
    blackbox.LocalBlackBox(tmp_path)
  with pytest.raises(FileNotFoundError, match="neither an http"):
    blackbox.open_blackbox(tmp_path / "missing")
  with pytest.raises(ValueError, match="unsupported scheme"):
    blackbox.open_blackbox("ftp://example.com/model")
  with pytest.raises(ValueError, match="batch_size must be positive"):
    blackbox.LocalBlackBox(tmp_path, batch_size=0)


def test_http_blackbox_without_a_server_fails_clearly():
  with socket.socket() as s:  # A port that was just free: nothing listens there.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with pytest.raises(blackbox.BlackBoxError, match="no answer after 2 tries"):
    blackbox.open_blackbox(f"http://127.0.0.1:{port}", max_retries=1, backoff_seconds=0.0,
                           timeout=5.0)
  with pytest.raises(ValueError, match="not an http"):
    blackbox.HttpBlackBox("127.0.0.1:8080")


def test_wav_encoding_matches_write_wav_and_round_trips(tmp_path):
  r = np.random.default_rng(5)
  # Values that straddle rounding boundaries, the clipping edges and out-of-range samples.
  x = np.concatenate([r.uniform(-1, 1, 500), np.array([1.2, -1.3, 1.0, -1.0, 0.5 / 32768,
                                                       1.5 / 32768, 32767.6 / 32768])])
  x = x.astype(np.float32)
  data = blackbox.encode_wav_pcm16(x, SR)
  decoded, rate = sf.read(io.BytesIO(data), dtype="int16")
  audio_io.write_wav(tmp_path / "ref.wav", x, SR)
  reference, ref_rate = sf.read(tmp_path / "ref.wav", dtype="int16")
  assert rate == ref_rate == SR
  np.testing.assert_array_equal(decoded, reference)
  # 16-bit exact input comes back bit for bit.
  exact, _ = clips(1, 6)
  back, _ = sf.read(io.BytesIO(blackbox.encode_wav_pcm16(exact[0], SR)), dtype="float32")
  np.testing.assert_array_equal(back, exact[0])
