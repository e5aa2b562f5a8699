"""Figures for reports: matplotlib without pyplot, written as PNG bytes.

Every plot jaxtag writes (craft, verify and PosCUDA reports, the benchmarks' maps) is a
``matplotlib.figure.Figure`` on the Agg canvas: no pyplot state, no display, no figure to close,
safe from threads, and the caller's own backend (a notebook's, say) is never switched. The PNG
bytes then go through whichever atomic writer the caller needs (``jaxtag.secrets.write_bytes``
for owner-only reports, ``jaxtag.audio.io.write_bytes_atomic`` otherwise).

  fig = plots.figure(figsize=(10, 4))
  ax_a, ax_b = fig.subplots(1, 2)
  ...
  png = plots.png_bytes(fig)
"""

from __future__ import annotations

import io
from typing import Any

DPI = 100


def figure(**kwargs: Any):
  """A new ``matplotlib.figure.Figure(**kwargs)`` attached to an Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def png_bytes(fig, *, dpi: int = DPI) -> bytes:
  """``fig`` rendered as PNG."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()


def color_cycle() -> list:
  """The colours of matplotlib's current property cycle (``C0``, ``C1``, ...), as it gives them."""
  import matplotlib

  return list(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
