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

STAMP := $(VENV)/.jaxtag-installed-$(EXTRAS)

.PHONY: demo test venv bench clean-venv

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@# audax is a cross-check reference only (unmaintained; declares no dependencies).
	$(PY) -m pip install --quiet --no-deps "audax==0.0.3"
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
