#!/usr/bin/env bash
# NEON tier 1 (every CI run; see shared NEON.md). Three checks, each self-contained:
#
#  a) real AArch64 code under qemu: the C driver tools/neon/test_kernels.c, cross-compiled with
#     aarch64-linux-gnu-gcc -static together with the scalar and NEON kernel units, compares
#     every NEON variant with the scalar one (qemu-aarch64-static): spmm, depthwise, first conv,
#     global average pooling, add.
#  b) the NEON source through SIMDe on x86: a test build (FASTSPARSE_SIMDE_NEON=1) that adds
#     "neon" as a dispatch target; the whole pytest suite runs with FASTSPARSE_ISA=neon.
#  c) the no-AVX2 fallback: the release build's whole suite (small hypothesis profile) under
#     qemu-x86_64-static -cpu Nehalem; dispatch must pick SSE2, and an AVX instruction in
#     baseline code would die with SIGILL.
#
# Usage: tools/neon_tier1.sh [a] [b] [c]     (default: all three)
# Needs root on a machine without the packages (it installs them); Python 3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/neon/lib.sh
source tools/neon/lib.sh

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(a b c)
want() { [[ " ${steps[*]} " == *" $1 "* ]]; }

CSRC=src/fastsparse/csrc
PYTHON="${FS_HOST_PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tier_start=$(date +%s)

fs_step "tier 1: packages"
fs_apt_install "${FS_TIER1_PACKAGES[@]}"
fs_step_done

if want a; then
  fs_step "tier 1a: NEON kernels vs scalar on AArch64 (qemu-aarch64-static)"
  # The same flags as setup.py gives each unit (-O3 -std=c11 -ffp-contract=off + per-ISA).
  # Kernel units of the two ISAs, then the ISA-independent sources (dispatch; more as ops land).
  CC=aarch64-linux-gnu-gcc
  CFLAGS=(-O3 -std=c11 -ffp-contract=off -Wall -Wextra -Werror -I"$CSRC" -Itools/neon)
  "$CC" "${CFLAGS[@]}" -fno-tree-vectorize -c "$CSRC/kernels_scalar.c" -o "$work/kernels_scalar.o"
  "$CC" "${CFLAGS[@]}" -c "$CSRC/kernels_neon.c" -o "$work/kernels_neon.o"
  "$CC" "${CFLAGS[@]}" -static -DFS_HAVE_NEON "$CSRC/dispatch.c" tools/neon/*.c \
    "$work/kernels_scalar.o" "$work/kernels_neon.o" -lm -o "$work/test_kernels"
  qemu-aarch64-static "$work/test_kernels" --require neon
  fs_step_done
fi

if want b || want c; then
  fs_step "tier 1: a Python environment for the test builds"
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet --upgrade pip
  "$work/venv/bin/python" -m pip install --quiet numpy pytest hypothesis "cython>=3.0" wheel \
    "setuptools>=64"
  fs_step_done
fi

if want b; then
  fs_step "tier 1b: whole test suite with the NEON source through SIMDe (FASTSPARSE_ISA=neon)"
  fs_copy_tree "$work/simde"
  FASTSPARSE_SIMDE_NEON=1 "$work/venv/bin/python" -m pip install --quiet --no-build-isolation \
    --no-deps --force-reinstall "$work/simde"
  (
    cd "$work/simde"
    export FASTSPARSE_ISA=neon
    "$work/venv/bin/python" -c "
import fastsparse as fs
assert fs.isa() == 'neon', fs.isa()
print('SIMDe test build:', fs.available_isas(), 'active', fs.isa(),
      len(fs._dispatch.spmm_kernels('neon')), 'neon spmm variants')"
    FASTSPARSE_HYPOTHESIS_PROFILE="${FASTSPARSE_HYPOTHESIS_PROFILE:-small}" \
      "$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests
  )
  fs_step_done
fi

if want c; then
  fs_step "tier 1c: the no-AVX2 fallback (qemu-x86_64-static -cpu Nehalem)"
  fs_copy_tree "$work/release"
  "$work/venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps \
    --force-reinstall "$work/release"
  (
    cd "$work/release"
    unset FASTSPARSE_ISA
    nehalem=(qemu-x86_64-static -cpu Nehalem "$work/venv/bin/python")
    "${nehalem[@]}" -c "
import fastsparse as fs
assert fs.isa() == 'sse2' and fs.available_isas() == ['sse2', 'scalar'], fs.available_isas()
print('Nehalem: available', fs.available_isas(), 'active', fs.isa())"
    FASTSPARSE_HYPOTHESIS_PROFILE=small "${nehalem[@]}" -m pytest -q -p no:cacheprovider \
      "${FS_EMULATED_PYTEST_SKIP[@]}" tests
  )
  fs_step_done
fi

echo "== tier 1 finished in $(( $(date +%s) - tier_start )) s"
printf '%s' "${FS_TIMES:-}"
