"""jaxtag.plots: figures on the Agg canvas without pyplot, rendered to PNG bytes."""

import io
import subprocess
import sys

import matplotlib.colors
import matplotlib.image
import numpy as np

from jaxtag import plots


def test_png_bytes_renders_the_figure_at_its_size():
  fig = plots.figure(figsize=(3, 2))
  fig.subplots().plot([0, 1], [0, 1])
  png = plots.png_bytes(fig, dpi=50)
  assert png.startswith(b"\x89PNG\r\n\x1a\n")
  image = matplotlib.image.imread(io.BytesIO(png))
  assert image.shape[:2] == (100, 150)            # figsize x dpi, rows first
  assert np.ptp(image[..., :3]) > 0.5             # something was drawn
  colors = plots.color_cycle()
  assert len(colors) >= 2 and all(matplotlib.colors.is_color_like(c) for c in colors)


def test_plots_never_import_pyplot_nor_switch_the_backend():
  code = ("import matplotlib; before = matplotlib.get_backend(); from jaxtag import plots; "
          "f = plots.figure(); f.subplots().plot([0, 1]); plots.png_bytes(f); import sys; "
          "print('matplotlib.pyplot' in sys.modules, matplotlib.get_backend() == before)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"MPLBACKEND": "svg", "PATH": ""})
  assert out.stdout.split() == ["False", "True"], out
