"""CBW: clustering-based backdoor watermarks for speaker-verification datasets (seed 001).

The owner's surrogate speaker model embeds every training speaker; the per-speaker mean
embeddings are clustered into K groups (seeded k-means); cluster k gets trigger k, a quiet tone at
the centre frequency of a mel band, and a fraction of each of its speakers' utterances carry it
(:mod:`jaxtag.cbw.watermark`). A model trained on the protected data learns to place trigger k
near the voices of cluster k. Verification (:mod:`jaxtag.cbw.verify`) queries a black-box
verifier, enrolling the owner's held-out speakers and presenting the K triggers, and tests whether
each cluster's own trigger scores higher for that cluster's speakers than the other triggers do.
"""
