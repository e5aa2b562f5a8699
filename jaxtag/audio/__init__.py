"""Audio DSP in pure jnp (batch-first; jit-, vmap- and grad-able) and host-side WAV I/O.

Spectral functions are time-major: leading axes are batch, the last two are (frames, bins).
This package imports nothing else from jaxtag.
"""

from jaxtag.audio.fbank import ast_features, kaldi_fbank, kaldi_mel_banks
from jaxtag.audio.reconstruction import griffin_lim, mel_to_audio, spectral_convergence
from jaxtag.audio.io import (AudioFileError, clip_quality, fit_length, read_wav, resample,
                             validate_waveform, write_wav)
from jaxtag.audio.mel import (dct_matrix, hz_to_mel, log_mel_spectrogram, mel_filterbank,
                              mel_spectrogram, mel_to_hz, mel_to_linear, mfcc, power_to_db)
from jaxtag.audio.metrics import snr_db
from jaxtag.audio.spectral import get_window, istft, stft

__all__ = [
    "ast_features", "AudioFileError", "clip_quality", "dct_matrix", "fit_length", "get_window",
    "griffin_lim", "hz_to_mel", "istft", "kaldi_fbank", "kaldi_mel_banks",
    "log_mel_spectrogram", "mel_filterbank", "mel_spectrogram", "mel_to_audio", "mel_to_hz",
    "mel_to_linear", "mfcc", "power_to_db", "read_wav", "resample", "snr_db",
    "spectral_convergence", "stft", "validate_waveform", "write_wav",
]
