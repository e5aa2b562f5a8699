"""PosCUDA: class-wise blurs of a short patch that make an audio dataset unlearnable (REFERENCE §3).

For each class c a secret key gives a 1-D filter f_c (k taps drawn from U(0, b)) and a patch
position pos(c); every training clip of class c is filtered with f_c inside [pos(c), pos(c) + p)
and left bit-identical elsewhere. A model trained on the result learns the class-wise blurs, a
shortcut that is absent from clean audio, and fails on clean test clips (Gokul & Dubnov, seeds
002/004).

    from jaxtag import poscuda
    spec = poscuda.PoscudaSpec(blur=0.3)
    secret = poscuda.make_filters(rng.stream(root_key, "poscuda"), spec, num_classes=35)
    protected = poscuda.protect_dataset(train_split, secret)   # host-side, fixed-size batches
    poscuda.save_filters(path, secret, class_names=..., provenance=poscuda.filter_provenance(key))

Modules:
  filters  the spec, the keyed draw of filters and positions (``make_filters``,
           ``active_window``), and their application (``apply_poscuda`` under jit + vmap,
           ``apply_in_batches``, ``protect_dataset``, ``snr_in_batches``); its docstring
           records the choices the paper leaves open and the measurements behind them.
  secret   the secret file: ``save_filters``, ``load_filters``, ``make_or_reuse_filters``,
           ``regenerate_and_check``.
  attack   ``random_patch_attack``: the attacker's random blurs or noise, without the secret.
  jobs     the stages as library jobs (imported on demand: they pull in training and
           publishing): ``ProtectJob``/``run_protect_job`` (protect and publish a dataset) and
           ``EvalJob``/``run_eval_job`` (Table 1 of the paper), behind ``launch/poscuda_*.py``.
  evaluate the evaluation's steps: ``protect_variants``, ``evaluate_model``, ``attack``, the
           ``mixed`` check, ``Predictor``, ``EvalRecipe``.
  report   ``format_report`` and ``plot_report``: Table 1 as text and as bars.

The quality metrics (SNR, Fréchet distance) are in ``jaxtag.audio.metrics``.
"""

from jaxtag.poscuda.attack import random_patch_attack
from jaxtag.poscuda.filters import (REFERENCE_RATE, PoscudaFilters, PoscudaSpec, active_window,
                                    apply_in_batches, apply_poscuda, filter_patch,
                                    filter_provenance, make_filters, protect_dataset,
                                    snr_in_batches)
from jaxtag.poscuda.secret import (SECRET_FILE, load_filters, make_or_reuse_filters,
                                   regenerate_and_check, save_filters)

__all__ = [
    "REFERENCE_RATE", "SECRET_FILE", "PoscudaFilters", "PoscudaSpec", "active_window",
    "apply_in_batches", "apply_poscuda", "filter_patch", "filter_provenance", "load_filters",
    "make_filters", "make_or_reuse_filters", "protect_dataset", "random_patch_attack",
    "regenerate_and_check", "save_filters", "snr_in_batches",
]
