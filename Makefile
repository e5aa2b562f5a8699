# jaxtag: the two commands of the README, and a few helpers.
#   make demo   set up .venv if needed, then run the pipeline end to end on the embedded corpus
#   make test   set up .venv (with the test extras) if needed, then run the whole test suite
#   make demo-cbw  CBW (speaker-verification dataset ownership) end to end on the embedded corpus
#   make smoke312  set up .venv312 (Python 3.12, jax 0.11.x) if needed, then run tests/smoke.sh
# Both are idempotent: the virtualenv is reinstalled only when setup.cfg or pyproject.toml change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# quality: PESQ/STOI of the poisons in the craft report and the demo (jaxtag.audio.quality).
EXTRAS ?= test,tfds,quality
WORKDIR ?= workdirs/demo
DEMO_CONFIG ?= launch/configs/demo.py
PYTEST_ARGS ?=
# PyTorch + transformers as test references (HF AST import check). `auto` installs them only when a
# torch 2.13.0 wheel is reachable without the network (pip find-links), so a machine without one
# never pulls gigabytes of CUDA wheels; the tests that need them then skip and say why.
REFERENCE ?= auto

STAMP := $(VENV)/.jaxtag-installed-$(EXTRAS)

.PHONY: demo demo-cbw test venv bench clean-venv smoke312 venv312

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

CBW_WORKDIR ?= workdirs/cbw_demo
CBW_CONFIG ?= launch/configs/cbw_demo.py

demo-cbw: $(STAMP)
	$(PY) -m launch.cbw_demo --config=$(CBW_CONFIG) --workdir=$(CBW_WORKDIR)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_dsp.py

clean-venv:
	rm -rf $(VENV)

# The second interpreter: Python 3.12 with jax 0.11.x (the GPU image's line), CPU only, for the
# smoke job (tests/smoke.sh). No python3.12 is a failure, not a skip: a CI that silently skipped
# this job would report jax 0.11 as tested when it was not. PYTHON312=/path/to/python3.12 overrides.
PYTHON312 ?= python3.12
PYENV312 ?= 3.12.1
VENV312 ?= .venv312
JAX312 ?= jax>=0.11,<0.12
STAMP312 := $(VENV312)/.jaxtag-installed-smoke312

$(STAMP312): setup.cfg pyproject.toml
	@if ! PYENV_VERSION=$(PYENV312) $(PYTHON312) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2; \
	  echo "!! make smoke312: no Python 3.12 at '$(PYTHON312)' (PYENV_VERSION=$(PYENV312)). The"  >&2; \
	  echo "!! jax 0.11 smoke job cannot run. Install it (pyenv install 3.12.1) or pass"          >&2; \
	  echo "!! PYTHON312=/path/to/python3.12. Failing rather than skipping."                     >&2; \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2; \
	  exit 1; fi
	@echo "[smoke312 $$(date -u +%H:%M:%S)] creating $(VENV312)"
	@test -x $(VENV312)/bin/python || PYENV_VERSION=$(PYENV312) $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(VENV312)/bin/python -m pip install --quiet -e ".[test]" "$(JAX312)"
	@$(VENV312)/bin/python -m pip list 2>/dev/null | grep -E '^(jax|jaxlib|flax|optax|numpy) '
	@rm -f $(VENV312)/.jaxtag-installed-*
	@touch $@
	@echo "[smoke312 $$(date -u +%H:%M:%S)] $(VENV312) ready"

venv312: $(STAMP312)

smoke312: $(STAMP312)
	tests/smoke.sh $(VENV312)/bin/python
