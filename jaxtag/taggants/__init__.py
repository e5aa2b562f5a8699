"""Data taggants: craft keyed perturbations, and verify them through a black box's top-k labels.

Submodules are imported on demand so that ``import jaxtag.taggants`` stays cheap:

    from jaxtag.taggants import blackbox
    box = blackbox.open_blackbox("workdirs/suspect")      # or "http://127.0.0.1:8080"
    labels = box.top_k(waveforms, k=5)                     # (N, 5) int32, best first
"""
