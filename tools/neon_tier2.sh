#!/usr/bin/env bash
# NEON tier 2 (see shared NEON.md): the real extension, cross-built for AArch64 on this host,
# and its test suite (small hypothesis profile) on real AArch64 CPython + numpy, inside a
# Debian arm64 chroot made by debootstrap and run under qemu through binfmt_misc.
#
# Nothing is cached: the chroot is made in a temporary directory and removed at the end.
# The Debian mirror is the one this machine's own apt sources use. Skipped (loudly, exit 0)
# only when binfmt_misc cannot be mounted or qemu cannot be registered with it.
#
# Usage: tools/neon_tier2.sh      (root; Debian host; Python 3 with venv)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/neon/lib.sh
source tools/neon/lib.sh
repo="$(pwd)"
PYTHON="${FS_HOST_PYTHON:-python3}"
tier_start=$(date +%s)

skip() {
  echo "############################################################################"
  echo "## NEON TIER 2 SKIPPED: $*"
  echo "## (the AArch64 chroot needs binfmt_misc to run arm64 binaries under qemu)"
  echo "############################################################################"
  exit 0
}

if [ "$(id -u)" != 0 ]; then
  echo "ERROR: tier 2 needs root (debootstrap, chroot, binfmt_misc)" >&2
  exit 1
fi

fs_step "tier 2: packages"
fs_apt_install "${FS_TIER2_PACKAGES[@]}"
fs_step_done

# What this script sets up it takes down at exit, so the machine is left as it was found.
work="$(mktemp -d /tmp/fastsparse-tier2.XXXXXX)"
root="$work/root"
mkdir -p "$root"
mounted_binfmt=0
registered_aarch64=0
binfmt=/proc/sys/fs/binfmt_misc
# Unmount whatever is mounted under the chroot (ours, or debootstrap's if it died), deepest
# first, and only then remove it; never remove a tree that still has a mount in it.
cleanup() {
  local m
  for m in $(awk -v r="$root" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  if awk -v r="$root" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    echo "warning: mounts left under $root; not removing $work" >&2
  else
    rm -rf --one-file-system "$work"
  fi
  [ "$registered_aarch64" = 1 ] && { echo -1 > "$binfmt/qemu-aarch64" || true; }
  [ "$mounted_binfmt" = 1 ] && { umount "$binfmt" || true; }
  return 0
}
trap cleanup EXIT

fs_step "tier 2: qemu-aarch64 in binfmt_misc"
if ! mountpoint -q "$binfmt"; then
  err="$(mount -t binfmt_misc binfmt_misc "$binfmt" 2>&1)" \
    || skip "cannot mount binfmt_misc on $binfmt: ${err:-mount failed}"
  mounted_binfmt=1
fi
if [ ! -e "$binfmt/qemu-aarch64" ]; then
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -r "$conf" ] || { echo "ERROR: $conf missing (qemu-user-static)" >&2; exit 1; }
  # The F flag in the entry makes the kernel keep the interpreter open: it works in a chroot.
  cat "$conf" > "$binfmt/register" || skip "cannot register qemu-aarch64 with binfmt_misc"
  registered_aarch64=1
fi
grep -q '^enabled' "$binfmt/qemu-aarch64" || skip "the qemu-aarch64 binfmt entry is disabled"
grep -q '^flags:.*F' "$binfmt/qemu-aarch64" \
  || echo "warning: qemu-aarch64 registered without the F flag; the chroot may not find it"
fs_step_done

fs_step "tier 2: debootstrap an arm64 Debian root (several minutes under qemu)"
# The mirror of this machine's own apt sources (deb822 .sources or one-line .list format).
mirror="$({
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ { print $2 }'
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p'
} | awk '!/-security/ { print; exit }' || true)"
[ -n "$mirror" ] || { echo "ERROR: no Debian mirror found in /etc/apt/sources*" >&2; exit 1; }
# shellcheck disable=SC1091
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[ -n "$suite" ] || { echo "ERROR: no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
echo "mirror $mirror, suite $suite"
debootstrap --arch=arm64 --variant=minbase --include=python3-venv,libpython3-dev,libgomp1 \
  "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log"; echo "ERROR: debootstrap failed" >&2; exit 1; }
# pip inside reaches the package index only through the host's TLS setup: its CA bundle and
# resolver configuration.
mkdir -p "$root/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
mount --bind /proc "$root/proc"
mount --bind /dev "$root/dev"
fs_step_done

# Runs a command in the chroot with a clean environment (plus the proxy settings, if any).
in_root() {
  local envs=(PATH=/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8
              SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
              PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
              PIP_DEFAULT_TIMEOUT=180)
  local v
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!v:-}" ] && envs+=("$v=${!v}")
  done
  chroot "$root" /usr/bin/env -i "${envs[@]}" "$@"
}

fs_step "tier 2: numpy, pytest, hypothesis in the arm64 root"
in_root uname -m | grep -qx aarch64
in_root /usr/bin/python3 -m venv /venv
in_root /venv/bin/python -m pip install --quiet numpy pytest hypothesis
in_root /venv/bin/python -c "import numpy, platform; print('arm64 root:', platform.machine(), \
'Python', platform.python_version(), 'numpy', numpy.__version__)"
fs_step_done

fs_step "tier 2: cross-build the extension for AArch64 on the host"
"$PYTHON" -m venv "$work/hostvenv"
"$work/hostvenv/bin/python" -m pip install --quiet "cython>=3.0" "setuptools>=64" wheel
fs_copy_tree "$work/pkg"
pyver="$(in_root /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pyinc="$root/usr/include/python$pyver"
[ -r "$pyinc/Python.h" ] || { echo "ERROR: no $pyinc/Python.h in the arm64 root" >&2; exit 1; }
(
  cd "$work/pkg"
  # CFLAGS replaces Python's own flags: -O2 here. The arm64 root's headers come first (its
  # pyconfig.h is AArch64's); the x86 kernel units are skipped by their compiler probes. The
  # extension uses no NumPy C API, so no numpy include directory is needed.
  CC=aarch64-linux-gnu-gcc LDSHARED="aarch64-linux-gnu-gcc -shared" \
    _PYTHON_HOST_PLATFORM=linux-aarch64 \
    CFLAGS="-O2 -I$pyinc -idirafter $root/usr/include" LDFLAGS="" \
    "$work/hostvenv/bin/python" setup.py -q build_ext --inplace > "$work/build.log" 2>&1 \
    || { cat "$work/build.log"; echo "ERROR: the cross-build failed" >&2; exit 1; }
)
grep '^fastsparse build' "$work/build.log"  # one line per ISA unit: the x86 ones are skipped
so=("$work"/pkg/src/fastsparse/_kernels*.so)
[ -f "${so[0]}" ] || { cat "$work/build.log"; echo "ERROR: no extension built" >&2; exit 1; }
# The host's suffix (cpython-3XY-x86_64-linux-gnu) -> the arm64 interpreter's.
suffix="$(in_root /usr/bin/python3 -c \
  'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
mv "${so[0]}" "$work/pkg/src/fastsparse/_kernels$suffix"
aarch64-linux-gnu-readelf -h "$work/pkg/src/fastsparse/_kernels$suffix" | grep -q AArch64 \
  || { echo "ERROR: the extension is not an AArch64 object" >&2; exit 1; }
echo "built src/fastsparse/_kernels$suffix (AArch64)"
mkdir -p "$root/fastsparse"
cp -r "$work/pkg/src" "$work/pkg/tests" "$root/fastsparse/"
fs_step_done

fs_step "tier 2: the test suite on AArch64 (qemu, small hypothesis profile)"
in_root /usr/bin/env PYTHONPATH=/fastsparse/src /venv/bin/python -c "
import fastsparse as fs
assert fs.available_isas() == ['neon', 'scalar'] and fs.isa() == 'neon', fs.available_isas()
print('AArch64:', fs.available_isas(), 'active', fs.isa(), fs._dispatch.spmm_kernels('neon'))"
in_root /usr/bin/env PYTHONPATH=/fastsparse/src \
  FASTSPARSE_HYPOTHESIS_PROFILE="${FASTSPARSE_HYPOTHESIS_PROFILE:-small}" \
  /venv/bin/python -m pytest -q -p no:cacheprovider "${FS_EMULATED_PYTEST_SKIP[@]}" \
  /fastsparse/tests
fs_step_done

echo "== tier 2 finished in $(( $(date +%s) - tier_start )) s"
printf '%s' "${FS_TIMES:-}"
