#!/usr/bin/env bash
# Builds fastsparse's extension with AddressSanitizer + UndefinedBehaviorSanitizer (gcc) in a
# temporary copy of this checkout and runs the kernel and model test suites against it.
# Any sanitizer report aborts the Python process, so pytest exits non-zero and so does this.
#
#   tools/sanitize.sh [extra pytest args]
#
# Needs: gcc, the Python that runs the tests (with numpy, cython, setuptools, pytest,
# hypothesis importable), i.e. run it inside the project's venv. Every ISA this CPU runs is
# exercised: the tests parametrize over fastsparse.available_isas().
#
# Environment:
#   FASTSPARSE_HYPOTHESIS_PROFILE  hypothesis profile (default "sanitize": few examples, the
#                                  instrumented build is 2-5x slower)
#   SANITIZE_KEEP=1                keep the temporary build directory
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
start=$(date +%s)
: "${PYTHON:=python}"

work="$(mktemp -d)"
if [ "${SANITIZE_KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi
echo "== sanitize: copying the checkout to $work"
# shellcheck source=tools/neon/lib.sh
source "$repo/tools/neon/lib.sh"
(cd "$repo" && fs_copy_checkout "$work")
cd "$work"

# -g1: line tables are all a report's stack trace needs; full -g triples the build time.
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g1"
# The flags go into CC so that every compile and link gets them, the OpenMP probe's
# executable included (distutils passes LDFLAGS to shared-library links only).
# -UNDEBUG: Python's CFLAGS carry -DNDEBUG; the kernels' precondition asserts should fire here.
export CC="gcc $san"
export CFLAGS="-UNDEBUG"
# -O1 (ASan's recommended level) instead of -O3: the unrolled, instrumented kernels take
# minutes per ISA to build at -O3 on a 2-core machine.
export FASTSPARSE_CFLAGS="${FASTSPARSE_CFLAGS:--O1}"
echo "== sanitize: building the extension in place with $CC $CFLAGS $FASTSPARSE_CFLAGS"
"$PYTHON" setup.py -q build_ext --inplace 2>&1 | grep -E "fastsparse build|error|warning: .*sanitize" || true
so=$(ls src/fastsparse/_kernels*.so)
# (grep -c, not grep -q: an early exit of grep would fail the pipe under pipefail)
if [ "$(nm -D "$so" | grep -c __asan_report)" = 0 ]; then
    echo "sanitize: $so is not instrumented" >&2
    exit 1
fi

libasan="$(gcc -print-file-name=libasan.so)"
# detect_leaks=0: CPython itself does not free everything at exit (not our leak to find;
# tests/test_robust.py measures RSS growth instead). allocator_may_return_null=1: a huge
# request from a MemoryError test returns NULL to NumPy instead of aborting in ASan.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$work/src"
export FASTSPARSE_HYPOTHESIS_PROFILE="${FASTSPARSE_HYPOTHESIS_PROFILE:-sanitize}"
# Make sure the tests import this instrumented build, not an installed fastsparse.
LD_PRELOAD="$libasan" "$PYTHON" -c "
import fastsparse, sys
assert fastsparse.__file__.startswith('$work'), fastsparse.__file__
print('sanitize: testing', fastsparse.__file__, 'ISAs', fastsparse.available_isas())"

# --capture=sys: a report is written to file descriptor 2 by the sanitizer runtime and then
# the process aborts; pytest's default fd capture would swallow it.
# Left out: the torch oracle tests (torch's libraries are not built for ASan) and the RSS
# checks (ASan's quarantine holds freed memory, so RSS grows by design).
echo "== sanitize: running the kernel and model tests under ASan + UBSan"
LD_PRELOAD="$libasan" "$PYTHON" -m pytest -q -p no:cacheprovider -x --capture=sys --durations=15 \
    tests/test_spmm.py tests/test_dwconv.py tests/test_conv2d.py tests/test_pool_add.py \
    tests/test_sparse_matrix.py tests/test_bad_input.py tests/test_dispatch.py \
    tests/test_models.py tests/test_steps.py tests/test_fuzz.py tests/test_robust.py \
    -k "not pytorch and not resident_memory" "$@"

echo "== sanitize: no sanitizer report; finished in $(( $(date +%s) - start )) s"
