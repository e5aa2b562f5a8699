#!/usr/bin/env bash
# Smoke job for a second interpreter / jax line (CI: Python 3.12 with jax 0.11.x, `make smoke312`).
# Not the test suite: the demo chain on the tiny config, crafting with rolled and unrolled loops,
# the CBW demo chain on the tiny corpus,
# a re-run of the demo on the same workdir (resume), verify, the XLA:CPU deadlock test, a few
# fast test files and the HTTP server tests. Every step runs under a timeout and prints a timestamped line; every step runs
# even when an earlier one failed (one log shows everything); the exit status is 1 if any failed.
#
#   tests/smoke.sh [PYTHON]        # default: .venv312/bin/python; work files under $SMOKE_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PY:-.venv312/bin/python}}
# A work dir of our own (no $SMOKE_DIR given) is removed after a clean run and kept, with its
# path printed, after a failure: CI runs leave nothing behind in /tmp unless there is a log to read.
OWN_DIR=0
if [ -z "${SMOKE_DIR:-}" ]; then SMOKE_DIR=$(mktemp -d -t jaxtag-smoke-XXXXXX); OWN_DIR=1; fi
STEP_TIMEOUT=${STEP_TIMEOUT:-600}
W=$SMOKE_DIR/work
export JAXTAG_DATA=$SMOKE_DIR/data JAX_PLATFORMS=cpu XLA_FLAGS=${XLA_FLAGS:-}
failed=()
t0=$(date +%s)

say() { echo "[smoke $(date -u +%H:%M:%S) +$(( $(date +%s) - t0 ))s] $*"; }

step() {   # step NAME CMD...: run CMD under the timeout, log its start, end and status
  local name=$1; shift
  say "START $name: $*"
  local s=$(date +%s)
  timeout --kill-after=10 "$STEP_TIMEOUT" "$@"
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    say "PASS  $name ($(( $(date +%s) - s ))s)"
  else
    [ "$rc" -eq 124 ] && say "TIMEOUT after ${STEP_TIMEOUT}s: $name (a hang?)"
    say "FAIL  $name (exit $rc, $(( $(date +%s) - s ))s)"
    failed+=("$name")
  fi
}

say "python $PY, work dir $SMOKE_DIR"
step versions "$PY" -c "import sys, jax, jaxlib, flax; from jaxtag.taggants import step as s; \
print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, \
'flax', flax.__version__, 'devices', jax.devices(), 'default unroll', s.CraftConfig().loop_unroll())"

# The XLA:CPU FFT deadlock (issue 16) first: it has its own timeout and message.
step deadlock-test "$PY" -m pytest -q -p no:cacheprovider tests/test_craft_deadlock.py

step demo "$PY" -m launch.demo --config=launch/configs/demo.py:tiny --workdir="$W/demo"

craft_args=(--config=launch/configs/craft.py:tiny --config.budget=0.25
            --config.surrogate="$W/demo/surrogate" --config.key_file="$W/demo/keys/keys.npz")
step craft-rolled "$PY" -m launch.craft "${craft_args[@]}" --workdir="$W/craft_rolled" \
  --config.craft.unroll=1
# Unrolled: the default `unroll` (None) under the XLA_FLAGS that make it unroll. On jaxlib >= 0.11
# that takes --xla_cpu_multi_thread_eigen=false (unrolled loops deadlock XLA:CPU there otherwise:
# BUILD.md), exactly the workaround BUILD.md documents; the flag field takes ints only, so `true`
# cannot be passed on the command line. The first command checks that it resolves to unrolled.
unrolled_flags=$("$PY" -c "from jaxtag.taggants import step as s; \
print('--xla_cpu_multi_thread_eigen=false' if s.cpu_fft_can_deadlock() else '')")
say "unrolled craft with XLA_FLAGS='$XLA_FLAGS $unrolled_flags'"
step craft-unrolled-default env XLA_FLAGS="$XLA_FLAGS $unrolled_flags" "$PY" -c \
  "from jaxtag.taggants import step as s; u = s.CraftConfig().loop_unroll(); print('unroll', u); \
assert u is True, u"
step craft-unrolled env XLA_FLAGS="$XLA_FLAGS $unrolled_flags" "$PY" -m launch.craft \
  "${craft_args[@]}" --workdir="$W/craft_unrolled"

step verify "$PY" -m launch.verify --config=launch/configs/verify.py --workdir="$W/verify" \
  --config.target="$W/demo/suspect" --config.key_file="$W/demo/keys/keys.npz"

# Re-running the demo on a finished workdir must resume (reuse every finished stage).
step demo-rerun "$PY" -m launch.demo --config=launch/configs/demo.py:tiny --workdir="$W/demo"

# CBW on the tiny corpus: speaker models, protect, verify in both modes, false positives.
step cbw-demo "$PY" -m launch.cbw_demo --config=launch/configs/cbw_demo.py:tiny \
  --workdir="$W/cbw_demo"

step fast-tests "$PY" -m pytest -q -p no:cacheprovider -x tests/test_configs.py \
  tests/test_stats.py tests/test_audio_stft.py tests/test_augment.py tests/test_sharding.py \
  tests/test_cbw.py tests/test_speaker_blackbox.py

# The HTTP server on this interpreter's asyncio (Python 3.12 changed Server.wait_closed): ~35 s.
step serve-tests "$PY" -m pytest -q -p no:cacheprovider -x tests/test_serve.py \
  tests/test_serve_load.py

say "done in $(( $(date +%s) - t0 ))s; failed: ${failed[*]:-none}"
if [ "${#failed[@]}" -ne 0 ]; then
  say "work files kept for inspection: $SMOKE_DIR"
  exit 1
fi
[ "$OWN_DIR" -eq 1 ] && rm -rf "$SMOKE_DIR"
exit 0
