"""Audio datasets: the AudioDataset type, folder and TFDS loaders, the embedded corpus, input pipelines."""

from jaxtag.data.dataset import AudioDataset, DatasetError, SplitNotFoundError, concatenate
from jaxtag.data.esc50 import export_esc50, load_esc50
from jaxtag.data.pipeline import batches, index_batches, steps_per_epoch
from jaxtag.data.sources import DataSource, class_names, load_split, load_splits
from jaxtag.data.speechcommands import (export_speech_commands, load_background_noise,
                                        load_speech_commands)

# jaxtag.data.tfds (tensorflow-datasets) and jaxtag.data.corpus (espeak-ng) are imported on demand.
__all__ = [
    "AudioDataset", "DataSource", "DatasetError", "batches", "class_names", "concatenate",
    "export_esc50", "export_speech_commands", "index_batches", "load_background_noise",
    "SplitNotFoundError", "load_esc50", "load_speech_commands", "load_split", "load_splits",
    "steps_per_epoch",
]
