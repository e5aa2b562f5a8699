#!/usr/bin/env bash
# Fetches, into .whl/ (git-ignored), the Python 3.12 x86-64 wheels of what jaxtag needs and the
# lent GPU image lacks (BUILD.md lists them and why), for `benchmarks/gpu_check.py --wheels .whl`.
# Run from the repository root on a machine with PyPI access; about 16 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 soundfile==0.14.0 cffi==2.1.1 \
  pycparser==3.12 ml_collections==1.1.0 espeakng-loader==0.2.4
ls -1 .whl/*.whl
du -sh .whl
