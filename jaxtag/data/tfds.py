"""TensorFlow Datasets interop: publish an AudioDataset as a TFDS dataset, and load TFDS audio.

:func:`export_tfds` writes the TFDS on-disk layout (``<data_dir>/<name>/<version>/`` holding
``dataset_info.json``, ``features.json``, ``metadata.json``, ``label.labels.txt`` and one
``<name>-<split>.array_record-00000-of-00001`` file per split) without TensorFlow: examples are
serialised by the features' own ``serialize_example`` (TFDS's TF-free ``tf.train.Example`` protos),
written with TFDS's ArrayRecord file adapter, and described by ``tfds.folder_dataset.
write_metadata``. Anyone can then read it with ``tfds.data_source(name, data_dir=...)``,
``tfds.builder_from_directory(path).as_data_source()`` or ``grain.MapDataset.source(...)``, with
or without TensorFlow.

One limitation of tensorflow-datasets 4.9.x: ``tfds.features.Audio`` imports TensorFlow in its
constructor (for ``tf.dtypes.as_dtype``), both when writing and when ``features.json`` is read
back. The waveform is therefore declared as a ``tfds.features.Tensor`` of shape ``(num_samples,)``,
which serialises to exactly the bytes an eager ``Audio`` feature of the same dtype and encoding
would write; the sample rate lives in ``metadata.json`` (``info.metadata["sample_rate"]``) and in
the feature's description. Pass ``audio_feature="audio"`` to declare a real ``Audio`` feature
where TensorFlow is installed (readers then need TensorFlow too). Samples are stored as raw
little-endian bytes (``encoding="bytes"``): 2 bytes per int16 sample, where TFDS's default varint
int64 list takes about 6 and is 80 times slower to serialise.

Feature names: ``audio`` (int16 by default, ``round(x * 32768)`` saturated, the convention of
``jaxtag.audio.io.write_wav``; or float32), ``label`` (``ClassLabel`` with the class names),
``speaker_id`` and ``path`` (``Text``, when the dataset has them) and ``metadata/<key>`` for
per-clip metadata (ESC-50 ``fold``...).

:func:`load_tfds` never downloads: it reads a dataset already prepared under ``data_dir`` (ours or
a catalogue one such as ``speech_commands``), through ``as_data_source`` for ArrayRecord datasets
(no TensorFlow) or ``as_dataset`` + ``tfds.as_numpy`` for TFRecord ones (TensorFlow needed).
"""

from __future__ import annotations

import logging
import os
import re
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtag.audio import io as audio_io
from jaxtag.data.dataset import AudioDataset, DatasetError, SplitNotFoundError

_INSTALL_HINT = "pip install 'jaxtag[tfds]' (tensorflow-datasets and array-record)"
_PCM16_SCALE = 32768.0
# Largest magnitude of each integer dtype TFDS audio is stored in. TFDS's default Audio dtype,
# int64, holds 16-bit PCM values (speech_commands, crema_d...), hence 2**15 for it.
_INT_SCALE = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31,
              np.dtype(np.int64): 2.0**15}
_READ_CHUNK = 512


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetError(f"TFDS interop needs tensorflow-datasets: {_INSTALL_HINT}.") from e
  return tfds


def _as_splits(datasets) -> dict[str, AudioDataset]:
  splits = {datasets.split: datasets} if isinstance(datasets, AudioDataset) else dict(datasets)
  if not splits:
    raise DatasetError("export_tfds: no dataset given.")
  first = next(iter(splits.values()))
  for split, ds in splits.items():
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
      raise DatasetError(
          f"export_tfds: split name {split!r} must use only letters, digits and '_' (TFDS uses "
          "'+', '[', ':' for split arithmetic).")
    if ds.class_names != first.class_names or ds.sample_rate != first.sample_rate:
      raise DatasetError(
          f"export_tfds: split {split!r} has other class names or sample rate than the first "
          "split; every split of a TFDS dataset shares one feature spec.")
    if ((ds.speaker_ids is None) != (first.speaker_ids is None)
        or (ds.paths is None) != (first.paths is None)
        or set(ds.metadata) != set(first.metadata)):
      raise DatasetError(
          f"export_tfds: split {split!r} has other per-clip fields (speaker_ids, paths, "
          "metadata keys) than the first split; give every split the same ones.")
  return splits


def _metadata_feature(tfds, values: np.ndarray):
  if values.dtype.kind in "biuf":
    return tfds.features.Tensor(shape=(), dtype=values.dtype)
  return tfds.features.Text()


def _features(tfds, splits: Mapping[str, AudioDataset], audio_dtype: np.dtype, audio_feature: str):
  """The FeaturesDict every split is written with."""
  first = next(iter(splits.values()))
  lengths = {ds.num_samples for ds in splits.values()}
  shape = (lengths.pop(),) if len(lengths) == 1 else (None,)
  doc = (f"mono waveform at {first.sample_rate} Hz"
         + (", int16 = round(x * 32768)" if audio_dtype == np.int16 else ", float32 in [-1, 1]"))
  if audio_feature == "audio":
    try:
      audio = tfds.features.Audio(shape=shape, dtype=audio_dtype, sample_rate=first.sample_rate,
                                  encoding="bytes", doc=doc)
    except ImportError as e:
      raise DatasetError(
          "export_tfds(audio_feature='audio') needs TensorFlow (tfds.features.Audio imports it); "
          "pip install tensorflow, or keep the default audio_feature='tensor'.") from e
  elif audio_feature == "tensor":
    audio = tfds.features.Tensor(shape=shape, dtype=audio_dtype, encoding="bytes", doc=doc)
  else:
    raise DatasetError(
        f"export_tfds: audio_feature must be 'tensor' or 'audio'; got {audio_feature!r}.")
  spec: dict[str, Any] = {
      "audio": audio, "label": tfds.features.ClassLabel(names=first.class_names)}
  if first.speaker_ids is not None:
    spec["speaker_id"] = tfds.features.Text()
  if first.paths is not None:
    spec["path"] = tfds.features.Text()
  if first.metadata:
    spec["metadata"] = tfds.features.FeaturesDict(
        {k: _metadata_feature(tfds, v) for k, v in sorted(first.metadata.items())})
  return tfds.features.FeaturesDict(spec)


def _quantize(waveforms: np.ndarray, audio_dtype: np.dtype) -> np.ndarray:
  if audio_dtype == np.float32:
    return np.clip(waveforms, -1.0, 1.0).astype(np.float32)
  return audio_io.to_pcm16(waveforms)


def _serialized_examples(features, ds: AudioDataset, audio_dtype: np.dtype):
  """Yields (key, serialized tf.Example) per clip, in dataset order."""
  for start in range(0, len(ds), _READ_CHUNK):
    audio = _quantize(ds.waveforms[start:start + _READ_CHUNK], audio_dtype)
    for j, clip in enumerate(audio):
      i = start + j
      example: dict[str, Any] = {"audio": clip, "label": int(ds.labels[i])}
      if ds.speaker_ids is not None:
        example["speaker_id"] = str(ds.speaker_ids[i])
      if ds.paths is not None:
        example["path"] = ds.paths[i]
      if ds.metadata:
        example["metadata"] = {k: v[i] if v.dtype.kind in "biuf" else str(v[i])
                               for k, v in ds.metadata.items()}
      yield i, features.serialize_example(example)


def export_tfds(datasets: AudioDataset | Mapping[str, AudioDataset], data_dir: str | os.PathLike,
                *, name: str = "jaxtag_protected", version: str = "1.0.0",
                description: str | None = None, audio_dtype: str = "int16",
                audio_feature: str = "tensor", overwrite: bool = False) -> str:
  """Writes splits of a dataset as a TFDS ArrayRecord dataset, without TensorFlow.

  The dataset is assembled in a temporary folder inside ``data_dir`` and renamed into place, so a
  crash never leaves a half-written ``<data_dir>/<name>/<version>``.

  Args:
    datasets: one AudioDataset (stored under its ``split``) or ``{split: AudioDataset}``; all
      splits must share class names, sample rate and per-clip fields.
    data_dir: TFDS data directory (the one passed to ``tfds.data_source(..., data_dir=)``).
    name: TFDS dataset name (lower snake case).
    version: ``MAJOR.MINOR.PATCH``.
    description: free text for ``dataset_info.json``.
    audio_dtype: ``"int16"`` (16-bit PCM, what a published WAV holds) or ``"float32"`` (exact).
    audio_feature: ``"tensor"`` (TF-free, see module docstring) or ``"audio"`` (needs TF).
    overwrite: replace an existing ``<data_dir>/<name>/<version>`` that holds only the files a
      TFDS export writes (anything else there is refused, never deleted).

  Returns:
    The dataset folder ``<data_dir>/<name>/<version>`` (for ``tfds.builder_from_directory``).

  Raises:
    DatasetError: bad name, version, split or dtype, inconsistent splits, an existing dataset
      without ``overwrite``, or tensorflow-datasets missing.
  """
  tfds = _import_tfds()
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top

  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise DatasetError(f"export_tfds: name {name!r} must be lower snake case, e.g. 'my_dataset'.")
  if not re.fullmatch(r"\d+\.\d+\.\d+", version):
    raise DatasetError(f"export_tfds: version {version!r} must look like '1.0.0'.")
  if audio_dtype not in ("int16", "float32"):
    raise DatasetError(
        f"export_tfds: audio_dtype must be 'int16' or 'float32'; got {audio_dtype!r}.")
  dtype = np.dtype(audio_dtype)
  splits = _as_splits(datasets)
  features = _features(tfds, splits, dtype, audio_feature)
  first = next(iter(splits.values()))

  data_dir = os.path.abspath(os.fspath(data_dir))
  final = os.path.join(data_dir, name, version)
  if os.path.exists(final) and not overwrite:
    raise DatasetError(f"export_tfds: {final} already exists; pass overwrite=True to replace it.")
  if os.path.exists(final):
    _check_only_export_files(final, name)
  from jaxtag.data import publish  # pylint: disable=g-import-not-at-top
  # A marked, locked temporary beside the version folder; a killed export's is removed next time.
  publish.remove_stale(final)
  with publish.staging(final, {"stage": "export_tfds", "owner": None}) as staged:
    tmp = os.fspath(staged)
    adapter = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat.ARRAY_RECORD]
    split_infos = []
    for split, ds in splits.items():
      path = os.path.join(tmp, f"{name}-{split}.array_record-00000-of-00001")
      adapter.write_examples(path, _serialized_examples(features, ds, dtype))
      split_infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=[len(ds)], num_bytes=os.path.getsize(path)))
    tfds.folder_dataset.write_metadata(
        data_dir=tmp, features=features, split_infos=split_infos, version=version,
        check_data=False,  # The check reads through tf.data, which needs TensorFlow.
        description=description or f"{name}: audio clips exported by jaxtag.",
        metadata=tfds.core.MetadataDict(
            sample_rate=first.sample_rate, audio_dtype=audio_dtype,
            audio_scale=_PCM16_SCALE if dtype == np.int16 else 1.0, exporter="jaxtag"))
    publish.replace(staged, pathlib.Path(final))
  return final


def _check_only_export_files(folder: str, name: str) -> None:
  """Refuses to replace a version folder holding anything but what a TFDS export writes."""
  pattern = re.compile(rf"^(\.jaxtag_publish\.json|dataset_info\.json|features\.json|"
                       rf"metadata\.json|.*\.labels\.txt|"
                       rf"{re.escape(name)}-\w+\.\w+-\d{{5}}-of-\d{{5}})$")
  if not os.path.isdir(folder):
    raise DatasetError(f"export_tfds: {folder} exists and is not a folder; remove it yourself.")
  foreign = sorted(e.name for e in os.scandir(folder)
                   if not (e.is_file(follow_symlinks=False) and pattern.match(e.name)))
  if foreign:
    raise DatasetError(
        f"export_tfds: overwrite=True replaces only a TFDS dataset, but {folder} also holds "
        f"{foreign[:5]}; move them away yourself, or export to another data_dir or name.")


def _builder(tfds, name: str, data_dir):
  where = f"data_dir={data_dir!r}" if data_dir else "the default data_dir (~/tensorflow_datasets)"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(
        f"load_tfds: no TFDS dataset {name!r} in {where} and no builder of that name. Check the "
        "name and data_dir, or write it with jaxtag.data.tfds.export_tfds.") from e
  except ImportError as e:
    raise DatasetError(
        f"load_tfds: TFDS dataset {name!r} needs a module that is not installed ({e}). TFDS "
        "catalogue audio datasets declare tfds.features.Audio, which imports TensorFlow: pip "
        "install tensorflow. Datasets written by export_tfds read without it.") from e
  except (AssertionError, ValueError) as e:  # TFDS asserts on unknown versions and configs.
    raise DatasetError(f"load_tfds: cannot open TFDS dataset {name!r} in {where}: {e}") from e
  if not builder.is_prepared():
    raise DatasetError(
        f"load_tfds: TFDS dataset {name!r} is not prepared under {builder.data_dir} and "
        f"load_tfds never downloads. Prepare it where there is internet (`tfds build {name} "
        "--data_dir ...`) and pass that data_dir.")
  return builder


def _records(tfds, builder, name: str, split: str):
  """Every example of the split as numpy dicts, in file order."""
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  if builder.info.file_format == file_adapters.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split=split)
    out = []
    for start in range(0, len(source), _READ_CHUNK):
      out.extend(source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source))))))
    return out
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError as e:
    raise DatasetError(
        f"load_tfds: {name!r} is stored as {builder.info.file_format.value}, which only "
        "TensorFlow reads: pip install tensorflow (or convert it to array_record).") from e
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _to_float(audio: np.ndarray) -> np.ndarray:
  if audio.dtype.kind == "f":
    return audio.astype(np.float32)
  if audio.dtype == np.uint8:
    return ((audio.astype(np.float32) - 128.0) / 128.0)
  scale = _INT_SCALE.get(audio.dtype)
  if scale is None:
    raise DatasetError(f"load_tfds: unsupported audio dtype {audio.dtype}.")
  return (audio.astype(np.float64) / scale).astype(np.float32)


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _column(values: list) -> np.ndarray:
  """Per-clip values of one feature as an array (TFDS returns Text as bytes)."""
  if values and isinstance(values[0], bytes):
    return np.asarray([_text(v) for v in values])
  return np.asarray(values)


def _source_rate(features, info, audio_key: str, target: int) -> int:
  rate = getattr(features[audio_key], "sample_rate", None)
  if not rate and info.metadata and info.metadata.get("sample_rate"):
    rate = info.metadata["sample_rate"]
  if not rate:
    logging.warning("load_tfds: feature %r declares no sample rate; assuming %d Hz.",
                    audio_key, target)
    rate = target
  return int(rate)


def _class_names(feature, labels: np.ndarray) -> tuple[str, ...]:
  names = getattr(feature, "names", None)
  if names:
    return tuple(names)
  return tuple(str(i) for i in range(int(labels.max()) + 1 if labels.size else 0))


def load_tfds(name: str, *, split: str, data_dir: str | os.PathLike | None = None,
              sample_rate: int = 16000, clip_samples: int | None = None,
              audio_key: str = "audio", label_key: str = "label") -> AudioDataset:
  """Loads one split of a prepared TFDS audio dataset as an AudioDataset (no download).

  Integer audio is scaled to [-1, 1] (int16 and TFDS's int64 16-bit PCM by 2**15, int32 by 2**31),
  multi-channel audio is averaged to mono, resampled to ``sample_rate`` when the dataset's rate
  (``Audio.sample_rate``, else ``info.metadata["sample_rate"]``, else assumed equal) differs, and
  cropped or zero-padded at the end to ``clip_samples``.

  Args:
    name: TFDS name, optionally with config and version (``"speech_commands"``,
      ``"jaxtag_protected:1.0.0"``).
    split: split name, TFDS slicing allowed (``"train"``, ``"test[:10%]"``).
    data_dir: TFDS data directory; None uses TFDS's default.
    sample_rate: sample rate of the returned waveforms.
    clip_samples: samples per clip; None pads every clip to the longest one.
    audio_key: name of the waveform feature.
    label_key: name of the label feature (``ClassLabel`` gives the class names).

  Returns:
    The split as an AudioDataset; ``speaker_ids`` from a ``speaker_id`` feature, ``paths`` from
    ``path`` or ``filename``, ``metadata`` from a ``metadata`` feature dict when present.

  Raises:
    SplitNotFoundError: the dataset has no split of that name.
    DatasetError: the dataset is not found or not prepared under ``data_dir``, a key is missing,
      it needs TensorFlow and TensorFlow is not installed, or tensorflow-datasets is missing.
  """
  tfds = _import_tfds()
  builder = _builder(tfds, name, data_dir)
  features, info = builder.info.features, builder.info
  for key in (audio_key, label_key):
    if key not in features:
      raise DatasetError(
          f"load_tfds: {name!r} has no feature {key!r}; its features are {sorted(features)}. "
          "Pass audio_key= / label_key=.")
  # The split names in a TFDS split expression ("train", "test[:10%]", "train+validation").
  named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_-]*", re.sub(r"\[[^\]]*\]", "", split)))
  absent = sorted(named - set(info.splits)) if info.splits else []
  if absent:
    raise SplitNotFoundError(
        f"load_tfds: {name!r} has no split {absent[0]!r} (splits: {sorted(info.splits)}).")
  try:
    records = _records(tfds, builder, name, split)
  except (KeyError, ValueError) as e:
    if isinstance(e, DatasetError):
      raise
    raise DatasetError(
        f"load_tfds: cannot read split {split!r} of {name!r} (splits: {sorted(info.splits)}): "
        f"{e}") from e
  rate = _source_rate(features, info, audio_key, sample_rate)
  clips = []
  for r in records:
    x = _to_float(np.asarray(r[audio_key]))
    if x.ndim == 2:
      x = x.mean(axis=1)
    clips.append(audio_io.resample(x, rate, sample_rate))
  num_samples = clip_samples or max((len(c) for c in clips), default=0)
  waveforms = np.stack([audio_io.fit_length(c, num_samples) for c in clips]) if clips else (
      np.zeros((0, num_samples), np.float32))
  labels = np.asarray([r[label_key] for r in records], dtype=np.int64)
  path_key = next((k for k in ("path", "filename") if k in features), None)
  metadata = {}
  if "metadata" in features and records:
    metadata = {k: _column([r["metadata"][k] for r in records]) for k in records[0]["metadata"]}
  return AudioDataset(
      waveforms=waveforms,
      labels=labels,
      class_names=_class_names(features[label_key], labels),
      sample_rate=sample_rate,
      split=split,
      speaker_ids=(_column([r["speaker_id"] for r in records]).astype(str)
                   if "speaker_id" in features else None),
      paths=tuple(_text(r[path_key]) for r in records) if path_key else None,
      metadata=metadata,
  )
