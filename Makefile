# jaxtag: the two commands of the README, and a few helpers.
#   make demo   set up .venv if needed, then run the pipeline end to end on the embedded corpus
#   make test   set up .venv (with the test extras) if needed, then run the whole test suite
# Both are idempotent: the virtualenv is reinstalled only when setup.cfg or pyproject.toml change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= test,tfds
WORKDIR ?= workdirs/demo
DEMO_CONFIG ?= launch/configs/demo.py
PYTEST_ARGS ?=
# PyTorch + transformers as test references (HF AST import check). `auto` installs them only when a
# torch 2.13.0 wheel is reachable without the network (pip find-links), so a machine without one
# never pulls gigabytes of CUDA wheels; the tests that need them then skip and say why.
REFERENCE ?= auto

STAMP := $(VENV)/.jaxtag-installed-$(EXTRAS)

.PHONY: demo test venv bench clean-venv

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@# audax is a cross-check reference only (unmaintained; declares no dependencies).
	$(PY) -m pip install --quiet --no-deps "audax==0.0.3"
ifeq ($(REFERENCE),auto)
	@if $(PY) -m pip install --quiet --no-index --no-deps "torch==2.13.0" 2>/dev/null; then \
	  $(PY) -m pip install --quiet "torch==2.13.0" "transformers>=5"; \
	else echo "note: no local torch 2.13.0 wheel; PyTorch reference tests will skip."; fi
endif
	@rm -f $(VENV)/.jaxtag-installed-*
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --config=$(DEMO_CONFIG) --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_dsp.py

clean-venv:
	rm -rf $(VENV)
