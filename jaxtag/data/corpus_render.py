"""How one clip of the embedded corpus is made: speakers, espeak-ng utterances, noise and level.

Everything here is pure given a ``np.random.Generator`` and an espeak-ng engine; the cached,
on-disk corpus built from it lives in :mod:`jaxtag.data.corpus`, which re-exports these names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from jaxtag.audio import io as audio_io
from jaxtag.data import espeak
from jaxtag.data.dataset import DatasetError

SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four",
    "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right",
    "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
# espeak-ng's English accents.
ENGLISH_VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Languages whose letter-to-sound rules read the English words with a foreign accent. Voices that
# spell unknown Latin words letter by letter (ja, vi) or switch back to English (ru, hi) are not
# used.
ACCENT_VOICES = ("de", "fr", "es", "it", "nl", "sv", "pt", "pl", "af", "fi", "id", "cy")
# Human-sounding variants from espeak-ng-data/voices/!v (robot, echo and demon voices left out).
DEFAULT_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt",
    "klatt2", "klatt3", "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Storm", "adam",
    "anika", "antonio", "aunty", "belinda", "benjamin", "boris", "david", "ed", "edward",
    "grandma", "grandpa", "gustave", "ian", "iven", "john", "kaukovalta", "linda", "max", "michel",
    "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
    "steph", "travis", "victor", "zac", "whisper", "whisperf", "croak")
# Non-command words for the babble background file, so that it never contains a label.
_BABBLE_WORDS = ("the", "people", "water", "little", "morning", "because", "under", "market",
                 "window", "paper", "garden", "question", "number", "coffee", "later", "about",
                 "evening", "letter", "table", "music", "station", "weather", "money", "never")
BACKGROUND_NOISE_DIR = "_background_noise_"
MANIFEST_NAME = "manifest.json"
_MARKER_NAME = ".jaxtag_corpus"
_FORMAT_VERSION = 1
_SPLITS = ("train", "validation", "test")
# SeedSequence stream tags, so that speakers, splits, clips and noise files never share draws.
_SPEAKER_STREAM, _SPLIT_STREAM, _CLIP_STREAM, _BACKGROUND_STREAM = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """What to synthesise. Two equal configs give byte-identical corpora.

  Attributes:
    words: the classes (each becomes a folder name).
    num_speakers: speakers in all splits together.
    clips_per_speaker_per_word: utterances of each word by each speaker (``_nohash_0``, ``_1`` ...).
    voices: espeak-ng voices of native speakers (see :func:`jaxtag.data.espeak.list_voices`).
    accent_voices: voices of other languages reading the English words.
    accent_fraction: probability that a speaker uses an ``accent_voices`` voice.
    variants: espeak-ng voice variants (see :func:`jaxtag.data.espeak.list_variants`).
    split_fractions: fractions of speakers in (train, validation, test).
    sample_rate: output sample rate in Hz.
    clip_seconds: clip length in seconds.
    speaker_pitch: range of a speaker's base pitch (espeak-ng units 0-99, 50 = variant default).
    speaker_pitch_range: range of a speaker's intonation range (0 = monotone, 99).
    speaker_rate: range of a speaker's speaking rate in words per minute.
    pitch_jitter: per-clip pitch offset, uniform in +-this (espeak-ng units).
    rate_jitter: per-clip relative rate change, log-uniform in [1/(1+j), 1+j].
    snr_db: range of the signal-to-noise ratio of the added noise (speech power over the word).
    noise_slope: range of the noise's spectral slope: its PSD goes as f**slope (0 white,
      -1 pink, -2 brown, +1 blue).
    peak_dbfs: range of the clip's peak level in dB full scale.
    max_fill: longest word as a fraction of the clip; longer words are re-spoken faster.
    background_noise_seconds: length of each ``_background_noise_`` file (0 to write none).
    seed: the seed every random choice derives from.
  """

  words: tuple[str, ...] = SPEECH_COMMANDS_WORDS
  num_speakers: int = 200
  clips_per_speaker_per_word: int = 1
  voices: tuple[str, ...] = ENGLISH_VOICES
  accent_voices: tuple[str, ...] = ACCENT_VOICES
  accent_fraction: float = 0.3
  variants: tuple[str, ...] = DEFAULT_VARIANTS
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  sample_rate: int = 16000
  clip_seconds: float = 1.0
  speaker_pitch: tuple[float, float] = (15.0, 85.0)
  speaker_pitch_range: tuple[float, float] = (20.0, 90.0)
  speaker_rate: tuple[float, float] = (130.0, 220.0)
  pitch_jitter: float = 8.0
  rate_jitter: float = 0.12
  snr_db: tuple[float, float] = (5.0, 30.0)
  noise_slope: tuple[float, float] = (-2.0, 1.0)
  peak_dbfs: tuple[float, float] = (-24.0, -3.0)
  max_fill: float = 0.95
  background_noise_seconds: float = 10.0
  seed: int = 0

  def __post_init__(self):
    for name in ("words", "voices", "accent_voices", "variants", "split_fractions", "speaker_pitch",
                 "speaker_pitch_range", "speaker_rate", "snr_db", "noise_slope", "peak_dbfs"):
      object.__setattr__(self, name, tuple(getattr(self, name)))

    def check(ok: bool, name: str, rule: str):
      if not ok:
        raise DatasetError(f"CorpusConfig.{name} {rule}; got {getattr(self, name)!r}.")

    check(self.words and len(set(self.words)) == len(self.words) and not any(
        not w or w.startswith(("_", ".")) or any(c in w for c in "/\\\0") for w in self.words),
          "words", "must be unique plain words (each becomes a folder name)")
    check(bool(self.voices), "voices", "must not be empty")
    check(bool(self.variants), "variants", "must not be empty")
    check(0 <= self.accent_fraction <= 1 and (self.accent_fraction == 0 or self.accent_voices),
          "accent_fraction", "must lie in [0, 1] (and above 0 needs accent_voices)")
    fractions, n = self.split_fractions, self.num_speakers
    check(len(fractions) == 3 and min(fractions) >= 0 and abs(sum(fractions) - 1) <= 1e-6,
          "split_fractions",
          "must be 3 non-negative numbers (train, validation, test) summing to 1")
    held_out = sum(_split_count(f, n) for f in fractions[1:])
    check(held_out <= n and n - held_out >= (fractions[0] > 0), "num_speakers",
          f"is too few for one speaker in each split of {fractions}")
    for name in ("clips_per_speaker_per_word", "sample_rate", "clip_seconds"):
      check(getattr(self, name) > 0, name, "must be positive")
    for name, lo, hi in (("speaker_pitch", 0, 99), ("speaker_pitch_range", 0, 99),
                         ("speaker_rate", espeak.RATE_MIN, espeak.RATE_MAX),
                         ("snr_db", -30, 120), ("noise_slope", -4, 4), ("peak_dbfs", -60, 0)):
      value = getattr(self, name)
      check(len(value) == 2 and lo <= value[0] <= value[1] <= hi, name,
            f"must be (low, high) with {lo} <= low <= high <= {hi}")
    check(0.2 <= self.max_fill <= 1, "max_fill", "must lie in [0.2, 1]")

  @classmethod
  def tiny(cls, **overrides) -> CorpusConfig:
    """4 words x 6 speakers (2 per split), short noise files: for tests (a few seconds)."""
    fields = dict(words=("yes", "no", "up", "down"), num_speakers=6,
                  split_fractions=(1 / 3, 1 / 3, 1 / 3), background_noise_seconds=1.0)
    return cls(**{**fields, **overrides})

  @classmethod
  def small(cls, **overrides) -> CorpusConfig:
    """10 words x 40 speakers (32/4/4): quick experiments and end-to-end runs."""
    fields = dict(words=("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"),
                  num_speakers=40, background_noise_seconds=5.0)
    return cls(**{**fields, **overrides})

  @classmethod
  def large(cls, **overrides) -> CorpusConfig:
    """The 35 words x 1,000 speakers (800/100/100): 28,000 training clips, so a 1% taggant
    budget gives 28 poisons per key at K = 10 instead of the default's 5-6."""
    return cls(**{**dict(num_speakers=1000), **overrides})

  @classmethod
  def xl(cls, **overrides) -> CorpusConfig:
    """SpeechCommands v2 scale: the 35 words x 3,000 speakers (2,400/300/300), 84,000 training
    clips (v2 has 84,843), 105,000 in all (3.3 GB of WAV; synthesis runs at about 380 clips/s
    on 2 idle cores, 12.5 CPU-minutes in all): a 1% budget gives 84 poisons per key at K = 10."""
    return cls(**{**dict(num_speakers=3000), **overrides})

  @classmethod
  def preset(cls, name: str, **overrides) -> CorpusConfig:
    """``tiny``, ``small``, ``default``, ``large`` or ``xl``, with field overrides (``seed=3``)."""
    if name == "default":
      return cls(**overrides)
    if name in ("tiny", "small", "large", "xl"):
      return getattr(cls, name)(**overrides)
    raise DatasetError(
        f"Unknown corpus preset {name!r}; use 'tiny', 'small', 'default', 'large' or 'xl'.")

  def to_json(self) -> dict:
    """The config as JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  def fingerprint(self) -> str:
    """SHA-256 of the canonical JSON of this config (names the default cache folder)."""
    text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Speaker:
  """One synthetic speaker: a fixed voice, variant, pitch, intonation range and rate.

  ``index`` is its position in :func:`make_speakers`' output (it seeds the clips),
  ``speaker_id`` the 8-hex-digit name in its file names, ``split`` the split it belongs to; the
  other fields are espeak-ng settings (see :meth:`jaxtag.data.espeak.EspeakEngine.synthesize`).
  """

  index: int
  speaker_id: str
  split: str
  voice: str
  variant: str
  pitch: float
  pitch_range: float
  rate: float

  @property
  def espeak_voice(self) -> str:
    return f"{self.voice}+{self.variant}"


def make_speakers(config: CorpusConfig) -> tuple[Speaker, ...]:
  """Draws the speakers of ``config`` and assigns each to one split."""
  rng = np.random.default_rng(np.random.SeedSequence([config.seed, _SPEAKER_STREAM]))
  n = config.num_speakers
  accented = rng.random(n) < config.accent_fraction
  combos = {}
  for accent, pool in ((False, config.voices), (True, config.accent_voices)):
    # (voice, variant) pairs without replacement while they last, so that speakers differ.
    pairs = [(v, w) for v in pool for w in config.variants]
    count = int(np.sum(accented == accent))
    order = [k for _ in range(-(-count // max(len(pairs), 1))) for k in rng.permutation(len(pairs))]
    combos[accent] = iter([pairs[k] for k in order[:count]])
  pitch = rng.uniform(*config.speaker_pitch, size=n)
  pitch_range = rng.uniform(*config.speaker_pitch_range, size=n)
  rate = np.exp(rng.uniform(*np.log(config.speaker_rate), size=n))
  split_rng = np.random.default_rng(np.random.SeedSequence([config.seed, _SPLIT_STREAM]))
  splits = np.empty(n, dtype=object)
  order = split_rng.permutation(n)
  n_val, n_test = (_split_count(f, n) for f in config.split_fractions[1:])
  splits[order[:n_val]] = "validation"
  splits[order[n_val:n_val + n_test]] = "test"
  splits[order[n_val + n_test:]] = "train"
  speakers, ids = [], set()
  for i in range(n):
    digest = hashlib.sha256(f"jaxtag-corpus/{config.seed}/{i}".encode()).hexdigest()
    speaker_id = next(digest[k:k + 8] for k in range(0, 57, 8) if digest[k:k + 8] not in ids)
    ids.add(speaker_id)
    voice, variant = next(combos[bool(accented[i])])
    speakers.append(Speaker(i, speaker_id, str(splits[i]), voice, variant,
                            round(float(pitch[i]), 3), round(float(pitch_range[i]), 3),
                            round(float(rate[i]), 3)))
  return tuple(speakers)


def _split_count(fraction: float, n: int) -> int:
  return 0 if fraction <= 0 else max(1, int(round(fraction * n)))


def _word_key(word: str) -> int:
  return int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")


def clip_rng(config: CorpusConfig, speaker: Speaker, word: str, n: int) -> np.random.Generator:
  """The random stream of one clip: independent of which process makes it, or when."""
  return np.random.default_rng(
      np.random.SeedSequence([config.seed, _CLIP_STREAM, speaker.index, _word_key(word), n]))


def coloured_noise(rng: np.random.Generator, num_samples: int, slope: float) -> np.ndarray:
  """Unit-RMS Gaussian noise whose power spectral density goes as ``f**slope``."""
  spectrum = np.fft.rfft(rng.standard_normal(num_samples))
  freqs = np.arange(spectrum.shape[0], dtype=np.float64)
  freqs[0] = 1.0  # Keep DC finite; it is removed below.
  spectrum *= freqs ** (slope / 2.0)
  spectrum[0] = 0.0
  noise = np.fft.irfft(spectrum, n=num_samples)
  return noise / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)


def _speak(engine: espeak.EspeakEngine, speaker: Speaker, word: str, rng: np.random.Generator,
           config: CorpusConfig) -> np.ndarray:
  """One utterance at the engine's rate, float32, silence trimmed, at most ``max_fill`` long."""
  pitch = float(np.clip(speaker.pitch + rng.uniform(-1, 1) * config.pitch_jitter, 0, 99))
  jitter = np.log1p(config.rate_jitter)
  rate = speaker.rate * float(np.exp(rng.uniform(-jitter, jitter)))
  text = word + str(rng.choice(["", ".", "!", "?"]))
  seed = int(rng.integers(2**31 - 1))
  budget = int(config.max_fill * config.clip_seconds * engine.sample_rate)
  for _ in range(4):
    rate = float(np.clip(rate, espeak.RATE_MIN, espeak.RATE_MAX))
    raw = engine.synthesize(text, voice=speaker.espeak_voice, rate=int(round(rate)),
                            pitch=int(round(pitch)), pitch_range=int(round(speaker.pitch_range)),
                            seed=seed)
    raw = espeak.trim_silence(raw, engine.sample_rate)
    if raw.size <= budget or rate >= espeak.RATE_MAX:
      break
    rate *= 1.1 * raw.size / budget  # Too long for the clip: say it faster, as a hurried speaker.
  if raw.size == 0:
    raise DatasetError(
        f"espeak-ng produced no audio for {text!r} with voice {speaker.espeak_voice}.")
  audio = raw[:budget].astype(np.float32) / 32768.0
  if raw.size > budget:  # Still too long at the fastest rate: fade out over 20 ms.
    fade = min(audio.size, engine.sample_rate // 50)
    audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
  return audio


def _resample_batch(utterances: list[np.ndarray], orig_sr: int, target_sr: int) -> list[np.ndarray]:
  """Resamples utterances of different lengths in one call (one filter design, not one each).

  Zero padding to a common length leaves every output sample unchanged (resample_poly pads
  with zeros too), so each result equals resampling that utterance alone.
  """
  length = max(u.size for u in utterances)
  batch = np.stack([np.pad(u, (0, length - u.size)) for u in utterances])
  out = audio_io.resample(batch, orig_sr, target_sr, axis=-1)
  # The output length of audio_io.resample: round(n * target / orig), halves up.
  return [row[:(2 * u.size * target_sr + orig_sr) // (2 * orig_sr)]
          for row, u in zip(out, utterances)]


def _mix(speech: np.ndarray, rng: np.random.Generator, config: CorpusConfig) -> np.ndarray:
  """Places the word at a random onset, adds coloured noise, sets the level: float32 clip."""
  num_samples = int(round(config.clip_seconds * config.sample_rate))
  speech = speech[:num_samples]
  onset = int(rng.integers(0, num_samples - speech.size + 1))
  clip = np.zeros(num_samples, np.float64)
  clip[onset:onset + speech.size] = speech
  speech_rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
  snr_db = rng.uniform(*config.snr_db)
  noise = coloured_noise(rng, num_samples, rng.uniform(*config.noise_slope))
  clip += noise * speech_rms * 10.0 ** (-snr_db / 20.0)
  peak = 10.0 ** (rng.uniform(*config.peak_dbfs) / 20.0)
  clip *= peak / max(float(np.max(np.abs(clip))), 1e-9)
  return clip.astype(np.float32)


def render_clips(engine: espeak.EspeakEngine, speaker: Speaker, config: CorpusConfig,
                 items: list[tuple[str, int]]) -> list[np.ndarray]:
  """Clips ``(word, n)`` of ``speaker``: each float32 ``(clip_samples,)`` in [-1, 1].

  Each clip is a function of (config, speaker, word, n) only: its random stream is its own and
  the synthesiser is reset before every utterance.
  """
  rngs = [clip_rng(config, speaker, word, n) for word, n in items]
  raw = [_speak(engine, speaker, word, rng, config) for (word, _), rng in zip(items, rngs)]
  speech = _resample_batch(raw, engine.sample_rate, config.sample_rate)
  return [_mix(s, rng, config) for s, rng in zip(speech, rngs)]
