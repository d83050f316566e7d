# Helpers shared by tools/neon_tier1.sh and tools/neon_tier2.sh (sourced, not run).

# fs_step NAME: prints a banner and starts the step's clock; fs_step_done prints its time.
fs_step() {
  FS_STEP_NAME="$1"
  FS_STEP_START=$(date +%s)
  echo "== $FS_STEP_NAME"
}
fs_step_done() {
  local t=$(( $(date +%s) - FS_STEP_START ))
  echo "== $FS_STEP_NAME: done in ${t} s"
  FS_TIMES="${FS_TIMES:-}${FS_STEP_NAME}: ${t} s"$'\n'
}

# The Debian packages each tier installs (.ci/run installs both lists before it runs the tiers
# side by side: two apt-get runs at once would fight over dpkg's lock).
FS_TIER1_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static libsimde-dev)
FS_TIER2_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static debootstrap)

# fs_apt_install PKG...: installs the Debian packages that are missing (apt-get update first),
# nothing when all are there. CI may run on a fresh machine: the scripts bring what they use.
fs_apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "apt: $* already installed"; return 0; }
  if [ "$(id -u)" != 0 ]; then
    echo "ERROR: missing Debian packages ${missing[*]} and not root to install them" >&2
    return 1
  fi
  echo "apt: installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >/dev/null
}

# fs_copy_checkout DEST: the files git knows about in the checkout at the current directory,
# with their working-tree contents (uncommitted edits included; tracked files deleted there are
# skipped), into DEST.
fs_copy_checkout() {
  git ls-files -z --cached --others --exclude-standard |
    xargs -0 cp --parents -t "$1" 2>/dev/null || true
}

# fs_copy_tree DEST: the package sources and tests, without build products, so that a build
# with other settings never reuses this checkout's build/ (setuptools skips "up-to-date"
# extensions).
fs_copy_tree() {
  mkdir -p "$1"
  cp -r setup.py pyproject.toml MANIFEST.in README.md src tests "$1"/
  rm -rf "$1"/src/*.egg-info "$1"/src/fastsparse/*.so "$1"/src/fastsparse/_kernels.c
  find "$1" -name __pycache__ -prune -exec rm -rf {} +
}

# Under emulation (qemu) Python runs 10-100x slower: the suite there checks the ISA code paths
# and skips what is ISA-independent Python (the fuzzed API, hostile files and leak checks, the
# benchmark harness), all of which the native run of .ci/run covers, and the 136x136 network
# test of tall row pieces, whose pieces the step tests cover on every ISA.
FS_EMULATED_PYTEST_SKIP=(-k "not test_fuzz and not test_robust and not test_bench_e2e and not test_tall_row_pieces_in_networks")
