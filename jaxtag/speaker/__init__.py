"""Speaker verification for CBW: speaker datasets (:mod:`jaxtag.speaker.data`), speaker-embedding
models, the GE2E loss and training, EER metrics, an embedder loaded from a trained workdir, and
the black boxes (local or HTTP) that verification queries (:mod:`jaxtag.speaker.blackbox`).

    from jaxtag import speaker
    summary = speaker.run_speaker_train_job(speaker.SpeakerTrainJob(), "workdirs/speaker",
                                            splits={"train": train, "test": test})
    embedder = speaker.load_embedder("workdirs/speaker")
"""

from jaxtag.speaker.data import SpeakerSource, load_speaker_splits
from jaxtag.speaker.embedder import SpeakerEmbedder, load_embedder
from jaxtag.speaker.ge2e import ge2e_loss, init_ge2e_params
from jaxtag.speaker.job import SpeakerTrainJob, run_speaker_train_job
from jaxtag.speaker.metrics import (cosine_scores, eer, enrol, verification_eer,
                                    verification_trials)
from jaxtag.speaker.model import PRESETS, SpeakerModelConfig, build_speaker_model
from jaxtag.speaker.train import SpeakerTrainConfig, train_speaker_model

__all__ = ["PRESETS", "SpeakerEmbedder", "SpeakerModelConfig", "SpeakerTrainConfig",
           "SpeakerSource", "SpeakerTrainJob", "build_speaker_model", "load_speaker_splits", "cosine_scores", "eer", "enrol",
           "ge2e_loss", "init_ge2e_params", "load_embedder", "run_speaker_train_job",
           "train_speaker_model", "verification_eer", "verification_trials"]
