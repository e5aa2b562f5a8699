"""Speaker-verification data: datasets whose classes are speakers, split so test speakers are unseen.

A speaker dataset is a :class:`jaxtag.data.dataset.AudioDataset` whose ``class_names`` are speaker
ids and whose ``labels`` index them (``speaker_ids`` and ``paths`` are set too), so the training,
export and read-back code of the classifiers applies unchanged. :func:`load_speaker_splits` gives
``{"train", "test"}`` with no speaker in both, from three layouts:

``corpus``
  The embedded espeak-ng corpus (:mod:`jaxtag.data.corpus`; its speakers are synthetic voices).
  ``train`` = the corpus's training speakers, ``test`` = its validation and test speakers.
``speech_commands``
  A folder in the Speech Commands layout (``<word>/<speaker>_nohash_<n>.wav`` with
  ``validation_list.txt``/``testing_list.txt``), such as a protected copy of the corpus; the same
  speaker rule: ``test`` = the listed validation and test clips' speakers.
``speaker_folders``
  ``<root>/<speaker>/<utterance>.wav``, utterances possibly nested deeper
  (``<speaker>/<session>/<utt>.wav``, VoxCeleb style), of any length (TIMIT style exports). The
  test speakers are ``<root>/test_speakers.txt`` (one id per line) when it exists, else a
  ``test_fraction`` of the speakers drawn from ``split_seed``.

Every utterance is brought to ``clip_seconds`` (cropped, keeping the start, or zero-padded).
Utterances shorter than ``min_seconds`` and speakers with fewer than ``min_utterances`` utterances
are errors that name the file or the speaker folder: a speaker model cannot enrol from them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from jaxtag.audio import io as audio_io
from jaxtag.data.dataset import AudioDataset, DatasetError, concatenate

logger = logging.getLogger(__name__)

KINDS = ("corpus", "speech_commands", "speaker_folders")
TEST_SPEAKERS_FILE = "test_speakers.txt"


@dataclasses.dataclass(frozen=True)
class SpeakerSource:
  """Where a speaker-verification dataset lives and how to read it.

  Attributes:
    kind: ``corpus`` | ``speech_commands`` | ``speaker_folders`` (module doc).
    root: the folder (``speech_commands``, ``speaker_folders``), or the corpus cache folder
      (``corpus``; None: the default cache).
    preset: corpus size preset (``corpus`` only).
    corpus_seed: corpus synthesis seed (``corpus`` only).
    sample_rate: every utterance is resampled to it.
    clip_seconds: every utterance is cropped (keeping the start) or zero-padded to this length.
    min_seconds: an utterance shorter than this is an error naming the file.
    min_utterances: a speaker with fewer utterances is an error naming the speaker.
    test_fraction: ``speaker_folders`` without ``test_speakers.txt``: fraction of the speakers
      held out (unseen in training), at least one.
    split_seed: the draw of those held-out speakers.
    mono: a multi-channel file raises (``error``) or its channels are averaged (``mean``).
    max_workers: reader threads (None: the reader's default).
  """

  kind: str = "corpus"
  root: str | None = None
  preset: str = "default"
  corpus_seed: int = 0
  sample_rate: int = 16000
  clip_seconds: float = 1.0
  min_seconds: float = 0.3
  min_utterances: int = 2
  test_fraction: float = 0.2
  split_seed: int = 0
  mono: str = "error"
  max_workers: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise DatasetError(f"SpeakerSource.kind must be one of {KINDS}; got {self.kind!r}.")
    if self.kind != "corpus" and not self.root:
      raise DatasetError(f"SpeakerSource.root is required for kind={self.kind!r}.")
    if not 0 < self.min_seconds <= self.clip_seconds:
      raise DatasetError("SpeakerSource.min_seconds must be in (0, clip_seconds]; got "
                         f"{self.min_seconds} with clip_seconds={self.clip_seconds}.")
    if self.min_utterances < 2:
      raise DatasetError("SpeakerSource.min_utterances must be >= 2 (enrolment and a trial need "
                         f"two utterances); got {self.min_utterances}.")
    if not 0 < self.test_fraction < 1:
      raise DatasetError(f"SpeakerSource.test_fraction must be in (0, 1); got "
                         f"{self.test_fraction}.")

  @property
  def clip_samples(self) -> int:
    return int(round(self.clip_seconds * self.sample_rate))


def by_speaker(ds: AudioDataset, split: str | None = None) -> AudioDataset:
  """``ds`` relabelled by speaker: classes = its speaker ids (sorted), labels index them."""
  if ds.speaker_ids is None:
    raise DatasetError(f"split {ds.split!r} has no speaker ids; a speaker dataset needs them.")
  ids = np.asarray(ds.speaker_ids).astype(str)
  names = tuple(sorted(set(ids.tolist())))
  index = {s: i for i, s in enumerate(names)}
  metadata = {**ds.metadata, "word": np.asarray([ds.class_names[i] for i in ds.labels])}
  return AudioDataset(ds.waveforms, np.asarray([index[s] for s in ids], np.int32), names,
                      ds.sample_rate, split=split or ds.split, speaker_ids=ids, paths=ds.paths,
                      metadata=metadata, info=ds.info)


def check_speakers(ds: AudioDataset, *, min_utterances: int, where: str) -> None:
  """Raises when a speaker of ``ds`` has fewer than ``min_utterances`` utterances."""
  counts = np.bincount(ds.labels, minlength=len(ds.class_names))
  few = [(ds.class_names[i], int(c)) for i, c in enumerate(counts) if c < min_utterances]
  if few:
    shown = ", ".join(f"{s!r} ({c})" for s, c in few[:8])
    raise DatasetError(
        f"{where}: {len(few)} speaker(s) with fewer than {min_utterances} utterances: {shown}. "
        "Enrolment and verification need several utterances per speaker; remove these speakers "
        "or add utterances.")


def load_speaker_splits(source: SpeakerSource, *, progress: bool = True
                        ) -> dict[str, AudioDataset]:
  """``{"train", "test"}`` speaker datasets of ``source``; no speaker is in both.

  Raises:
    DatasetError: a missing folder, a speaker with too few utterances, an utterance shorter than
      ``min_seconds`` (each message names the speaker or file), or a speaker in both splits.
    AudioFileError: an unreadable file.
  """
  if source.kind == "speaker_folders":
    splits = _load_speaker_folders(source, progress=progress)
  else:
    splits = _load_word_layout(source, progress=progress)
  where = source.root or f"the {source.preset} corpus"
  for name, ds in splits.items():
    check_speakers(ds, min_utterances=source.min_utterances, where=f"{where} ({name} speakers)")
  both = set(splits["train"].class_names) & set(splits["test"].class_names)
  if both:
    raise DatasetError(f"{where}: speakers {sorted(both)[:8]} are in both train and test; test "
                       "speakers must be unseen in training.")
  return splits


def data_source(source: SpeakerSource):
  """The classifier-side :class:`jaxtag.data.sources.DataSource` of a word-layout source."""
  from jaxtag.data import sources
  kind = "corpus" if source.kind == "corpus" else "speech_commands"
  return sources.DataSource(kind=kind, root=source.root, preset=source.preset,
                            corpus_seed=source.corpus_seed, sample_rate=source.sample_rate,
                            clip_samples=source.clip_samples, mono=source.mono,
                            max_workers=source.max_workers)


def _load_word_layout(source: SpeakerSource, *, progress: bool) -> dict[str, AudioDataset]:
  from jaxtag.data import sources
  loaded = sources.load_splits(data_source(source), progress=progress)
  held_out = [loaded[s] for s in ("validation", "test") if s in loaded]
  if not held_out:
    raise DatasetError(f"{source.root or 'the corpus'}: no validation_list.txt or "
                       "testing_list.txt, so no held-out speakers for the test split.")
  return {"train": by_speaker(loaded["train"], "train"),
          "test": by_speaker(concatenate(held_out, split="test"), "test")}


def speaker_folder_files(root: str | os.PathLike) -> dict[str, list[str]]:
  """``{speaker: [relative utterance paths]}`` of a ``<root>/<speaker>/**/*.wav`` folder, sorted."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DatasetError(f"{root}: no such speaker folder (expected <root>/<speaker>/<utt>.wav).")
  out = {}
  for entry in sorted(os.scandir(root), key=lambda e: e.name):
    if not entry.is_dir() or entry.name.startswith(("_", ".")):
      continue
    files = sorted(p.relative_to(root).as_posix() for p in pathlib.Path(entry.path).rglob("*")
                   if p.is_file() and p.suffix.lower() == ".wav" and not p.name.startswith("."))
    if files:
      out[entry.name] = files
  if not out:
    raise DatasetError(f"{root}: no speaker folders with .wav files (expected "
                       "<root>/<speaker>/<utterance>.wav).")
  return out


def _test_speakers(source: SpeakerSource, speakers: Sequence[str]) -> set[str]:
  listed = pathlib.Path(source.root).expanduser() / TEST_SPEAKERS_FILE
  if listed.is_file():
    names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    unknown = sorted(set(names) - set(speakers))
    if unknown:
      raise DatasetError(f"{listed}: speakers {unknown[:8]} have no folder under {source.root}.")
    if len(set(names)) >= len(speakers):
      raise DatasetError(f"{listed} lists every speaker; leave some for training.")
    return set(names)
  if len(speakers) < 2:
    raise DatasetError(f"{source.root}: one speaker only; a train/test split needs two or more.")
  count = min(len(speakers) - 1, max(1, int(round(source.test_fraction * len(speakers)))))
  rng = np.random.default_rng(np.random.SeedSequence([source.split_seed, 0x5B]))
  return {speakers[i] for i in rng.permutation(len(speakers))[:count]}


def _check_durations(root: pathlib.Path, files: Sequence[str], min_seconds: float) -> None:
  import soundfile as sf
  for rel in files:
    try:
      info = sf.info(os.fspath(root / rel))
    except (sf.LibsndfileError, RuntimeError) as e:
      raise audio_io.AudioFileError(f"{root / rel}: not a readable audio file ({e}).") from e
    seconds = info.frames / max(info.samplerate, 1)
    if seconds < min_seconds:
      raise DatasetError(
          f"{root / rel}: utterance is {seconds:.3f} s, shorter than min_seconds={min_seconds} "
          "(too short for a speaker embedding); remove it or lower SpeakerSource.min_seconds.")


def _load_speaker_folders(source: SpeakerSource, *, progress: bool) -> dict[str, AudioDataset]:
  root = pathlib.Path(source.root).expanduser()
  files = speaker_folder_files(root)
  speakers = sorted(files)
  test = _test_speakers(source, speakers)
  out = {}
  for split, members in (("train", [s for s in speakers if s not in test]),
                         ("test", [s for s in speakers if s in test])):
    rel = [f for s in members for f in files[s]]
    _check_durations(root, rel, source.min_seconds)
    waveforms, kept, _ = audio_io.read_wav_files(
        [root / f for f in rel], num_samples=source.clip_samples, sample_rate=source.sample_rate,
        mono=source.mono, max_workers=source.max_workers, progress=progress)
    ids = np.asarray([f.split("/", 1)[0] for f in rel])
    index = {s: i for i, s in enumerate(members)}
    out[split] = AudioDataset(waveforms, np.asarray([index[s] for s in ids], np.int32),
                              tuple(members), source.sample_rate, split=split, speaker_ids=ids,
                              paths=tuple(rel), info={"root": str(root)})
  return out


def write_speaker_folders(root: str | os.PathLike, utterances: Mapping[str, np.ndarray],
                          sample_rate: int) -> None:
  """Writes ``{relative path: waveform}`` as WAV files under ``root`` (tests and examples)."""
  for rel, audio in utterances.items():
    audio_io.write_wav(pathlib.Path(root) / rel, np.asarray(audio, np.float32), sample_rate)


def input_root(source: SpeakerSource) -> pathlib.Path:
  """The folder that holds ``source``'s files (the corpus cache folder for ``corpus``)."""
  if source.kind == "speaker_folders":
    return pathlib.Path(source.root).expanduser()
  from jaxtag.data import publish
  return publish.input_root(data_source(source))


def publish_changed(source: SpeakerSource, changed: Mapping[str, np.ndarray],
                    destination: str | os.PathLike, *, owner: str | None = None,
                    stage: str = "cbw_protect", name: str = "output_dir") -> dict:
  """Publishes a copy of ``source``'s dataset at ``destination`` in the same layout, where the
  utterances ``changed`` (relative path -> waveform at ``source.sample_rate``) are replaced and
  every other file is copied byte for byte.

  The rules of :mod:`jaxtag.data.publish` hold: never over the input or a user's files, written
  into a locked temporary sibling and renamed into place whole, marked with a manifest. A word
  layout (``corpus``, ``speech_commands``) goes through :func:`jaxtag.data.publish.export_splits`
  (so its read-back check runs and the copy is a ``speech_commands`` folder); speaker folders
  keep their own tree (changed files written as 16-bit WAV at ``sample_rate``).

  Returns:
    ``{"destination", "changed", "copied"}``.
  """
  from jaxtag.data import publish, sources
  destination = pathlib.Path(destination).absolute()
  if source.kind != "speaker_folders":
    word = data_source(source)
    clean = sources.load_splits(word, progress=False)
    splits = {}
    for split, ds in clean.items():
      rows = [i for i, p in enumerate(ds.paths) if p in changed]
      waveforms = np.array(ds.waveforms, copy=True)
      for i in rows:
        waveforms[i] = audio_io.fit_length(changed[ds.paths[i]], waveforms.shape[1])
      splits[split] = dataclasses.replace(ds, waveforms=waveforms)
    found = sum(1 for ds in clean.values() for p in ds.paths if p in changed)
    if found != len(changed):
      raise DatasetError(f"{len(changed) - found} changed utterance(s) are not in "
                         f"{input_root(source)}.")
    counts = {s: sum(1 for p in ds.paths if p in changed) for s, ds in clean.items()}
    published = publish.export_splits(word, splits, destination, clean=clean, owner=owner,
                                      stage=stage, max_error_lsb=1.0, max_changed=counts,
                                      name=name)
    return {"destination": str(destination), "changed": len(changed),
            "copied": len(published.copied)}
  root = input_root(source)
  publish.remove_stale(destination)
  publish.check_destination(destination, input_folder=root, owner=owner, name=name)
  manifest = {"stage": stage, "owner": owner, "kind": source.kind, "input_root": str(root)}
  with publish.staging(destination, manifest) as tmp:
    for rel, audio in changed.items():
      if not (root / rel).is_file():
        raise DatasetError(f"{root / rel}: changed utterance is not in the input dataset.")
      audio_io.write_wav(tmp / rel, np.asarray(audio, np.float32), source.sample_rate)
    copied, _, _ = publish.copy_input_files(source.kind, root, tmp)
    publish.write_marker(tmp, {**manifest, "state": "complete", "changed": sorted(changed),
                               "files": {p: s for p, s in publish.listing(tmp).items()
                                         if p != publish.MARKER}})
    publish.replace(tmp, destination)
  return {"destination": str(destination), "changed": len(changed), "copied": len(copied)}
