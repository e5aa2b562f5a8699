"""jaxtag: protect audio datasets and prove, from black-box answers, that a model was trained on them.

Submodules are imported on demand (``import jaxtag.audio``, ``from jaxtag.taggants import keys``)
so that ``import jaxtag`` stays cheap and pulls in no optional dependency.
"""

__version__ = "0.1.0"
