"""Which kernel variants run: ISA choice (cpuid in C, preference and override here), threads,
and the per-layer choice of the spmm tile."""
import os

from . import _kernels
from ._validate import count, thread_count

_NAMES = _kernels.isa_names()  # index = the C enum fs_isa
_PREFERENCE = ("avx512", "avx2", "neon", "sse2", "scalar")


def available_isas():
    """ISAs this build has and this CPU runs, best first."""
    return [name for name in _PREFERENCE if _kernels.isa_supported(_NAMES.index(name))]


def _check_isa(name, what):
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if name not in _NAMES:
        raise ValueError(f"{what}={name!r} is not one of {', '.join(_NAMES)}")
    if name not in available_isas():
        raise ValueError(f"{what}={name!r} is not supported by this build and CPU; "
                         f"available: {', '.join(available_isas())}")
    return name


_forced = os.environ.get("FASTSPARSE_ISA")
_active = _check_isa(_forced, "FASTSPARSE_ISA") if _forced else available_isas()[0]


def isa():
    """The ISA whose kernels the public functions call."""
    return _active


def set_isa(name):
    """Use `name`'s kernels from now on (one of available_isas()); returns the previous one."""
    global _active
    previous, _active = _active, _check_isa(name, "isa")
    _kernels.config_changed()
    return previous


def isa_id(name):
    return _NAMES.index(name)


# --- threads -------------------------------------------------------------------------------

def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return _cpus()


# Thread counts above this are clamped to it: the kernels are compute bound, so more threads
# than CPUs only add overhead, and an unbounded request (num_threads=2**40) must neither
# overflow the C int the kernel layer takes nor ask OpenMP for a team it cannot create.
MAX_THREADS = max(64, 4 * _cpus())
_num_threads = min(_default_threads(), MAX_THREADS) if _kernels.OPENMP else 1


def get_num_threads():
    """Threads a call uses when it is not given num_threads (1 in a build without OpenMP)."""
    return _num_threads


def set_num_threads(n):
    """Default thread count for all calls; OMP_NUM_THREADS sets it at import."""
    global _num_threads
    _num_threads = min(count(n, "n"), MAX_THREADS) if _kernels.OPENMP else 1
    _kernels.config_changed()


def resolve_threads(num_threads):
    if num_threads is None:
        return _num_threads
    thread_count(num_threads)
    return min(int(num_threads), MAX_THREADS) if _kernels.OPENMP else 1


# --- spmm variants -------------------------------------------------------------------------

def spmm_kernels(isa=None):
    """Names of the spmm variants of `isa` (default: the active one)."""
    isa = _active if isa is None else _check_isa(isa, "isa")
    return [k[0] for k in _kernels.spmm_kernels(isa_id(isa))]


# Tile per (active ISA, block size), measured with tools/spmm_microbench.c and whole networks
# on the MobileNet layers (BENCHMARKS.md): (ISA of the variant, MR), or a function of H*W. The
# loop is bound by activation loads (one per FMA at block size 1). Planes start on 64-byte
# boundaries in the executor (fs_steps.h), and with aligned planes the 16-wide AVX-512 tile
# wins at every size (MobileNet v1 at 90 %: 5.4 -> 4.9 ms over the 8-wide AVX2 tile), while on
# misaligned planes (49 or 196 floats apart) the AVX2 tile is 1.2-1.3x faster below 1024
# positions. Above 64 positions the 128-wide tile: fewer passes over a row's non-zeros (14x14
# = 128 + 68, not 3 x 64 + 4) and over the per-row epilogue (v2 and v1 at 90 %: -2..3 %, 1 and
# 2 threads); 7x7 planes (64 floats) take the 64-wide one.
def _avx512_nr1(hw, aligned):
    if hw == 1:
        return ("avx512", 1)
    if hw <= 16 or (hw < 1024 and not aligned):
        return _avx2_nr1(hw, aligned)
    return ("avx512", 64) if hw <= 64 else ("avx512", 128)


def _avx2_nr1(hw, aligned):
    # One position (a batch-1 classifier): the dot-product variant, four scalar FMA chains
    # along each row's non-zeros, instead of vector tiles with one lane in use. Up to 16
    # positions, the unrolled tile's two FMA chains win.
    if hw == 1:
        return ("avx2", 1)
    return ("avx2", 16) if hw <= 16 else ("avx2", 64)


# AVX2 blocks of 4 rows: 3 vectors x 4 rows (12 of the 16 ymm registers as accumulators) beat
# 2 x 4 on every MobileNet shape at 90 % (tools/spmm_microbench.c, session 7: 196x512x512
# 107 -> 101 us, 3136x128x128 232-250 -> 190-202 us, 49x960x160 19.7 -> 18.8 us).
_PREFERRED = {
    ("avx512", 1): _avx512_nr1, ("avx512", 2): ("avx512", 64), ("avx512", 4): ("avx512", 64),
    ("avx512", 8): ("avx512", 32),
    ("avx2", 1): _avx2_nr1, ("avx2", 2): ("avx2", 32), ("avx2", 4): ("avx2", 24),
    ("avx2", 8): ("avx2", 8),
    ("sse2", 1): ("sse2", 16), ("sse2", 2): ("sse2", 8), ("sse2", 4): ("sse2", 8),
    ("sse2", 8): ("sse2", 4),
    # NEON (32 q registers): not measured on ARM hardware yet; 8-16 accumulators per tile.
    ("neon", 1): ("neon", 32), ("neon", 2): ("neon", 16), ("neon", 4): ("neon", 16),
    ("neon", 8): ("neon", 8),
    ("scalar", 1): ("scalar", 8), ("scalar", 2): ("scalar", 8), ("scalar", 4): ("scalar", 8),
    ("scalar", 8): ("scalar", 4),
}


_l2 = None


def l2_bytes():
    """Bytes of one core's L2 cache (Linux sysfs), or 1 MiB where the system does not say."""
    global _l2
    if _l2 is None:
        _l2 = 1 << 20
        try:
            base = "/sys/devices/system/cpu/cpu0/cache"
            for index in sorted(os.listdir(base)):
                with open(os.path.join(base, index, "level")) as f:
                    if f.read().strip() != "2":
                        continue
                with open(os.path.join(base, index, "size")) as f:
                    size = f.read().strip()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                _l2 = int(size.rstrip("KM")) * scale
                break
        except (OSError, ValueError):
            pass
    return _l2


# Rows per group when a 1x1 in blocks sweeps its output group by group (spmm_sweep_rows).
SPMM_SWEEP_ROWS = 8


def spmm_sweep_rows(block_size, stream_bytes):
    """Rows per group for a 1x1 step in blocks of `block_size` rows that reads and writes
    `stream_bytes` per image (0: tiles of positions, every row in each, as usual).

    Tile by tile, every output row takes a few lines per tile: with more rows than the
    hardware prefetchers follow, each store waits for its line, and what the step streams
    does not stay in L2. In groups of SPMM_SWEEP_ROWS rows, each over all positions, the
    stores run down a few rows in order, and each group re-reads the input rows its blocks
    use: few, as a block's rows share their columns (tools/spmm_microbench.c, 90 %, 4x1
    blocks, AVX-512 64x4: 12544x96x16 122 -> 95 us, 3136x144x24 45 -> 40, 12544x64x32 98 ->
    80, 12544x16x32 22 -> 19, 3136x24x144 25 -> 23; AVX2 24x4: 191 -> 113, 60 -> 46, 141
    -> 93; 8x1 blocks 152 -> 108, 51 -> 42; 784x256x256 and 3136x128x128 the same). Single
    rows read scattered columns in every group (block 1: 12544x96x16 128 -> 151 us), 2x1
    blocks lost on 3136x128x128 (148 -> 158), and steps that fit L2 gain nothing (196x384x64
    12 -> 12 us): those keep tiles."""
    return SPMM_SWEEP_ROWS if block_size >= 4 and stream_bytes > l2_bytes() else 0


def spmm_step_kernel(isa, block_size, hw, name=None, plane=None, out_bytes=0, in_bytes=None):
    """spmm_kernel's (ISA id, index) and spmm_sweep_rows' rows for a 1x1 step of its own that
    reads `in_bytes` and writes `out_bytes` per image (in_bytes None: no sweeps, as for a
    fused or K-split step); a swept step runs the plain variant, not the _prefetch one."""
    sweep = 0 if in_bytes is None else spmm_sweep_rows(block_size, in_bytes + out_bytes)
    return spmm_kernel(isa, block_size, hw, name, plane, 0 if sweep else out_bytes) + (sweep,)


def spmm_kernel(isa, block_size, hw, name=None, plane=None, out_bytes=0):
    """(ISA id, index in that ISA's table) of the spmm variant to run for blocks of
    `block_size` rows on images of `hw` positions whose channel planes start `plane` floats
    apart (default hw), writing `out_bytes` per image; `name` forces a variant of `isa`.

    An output larger than L2 takes the tile's _prefetch variant where there is one: 12544
    positions at 90 %, 96x16 and 64x32, ran 1.3-1.4x faster with it, while layers whose output
    stays in L2 ran 0-12 % slower (BENCHMARKS.md, session 7; measured with a 2 MiB L2)."""
    table = _kernels.spmm_kernels(isa_id(isa))
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"kernel must be a str, got {type(name).__name__}")
        for i, (kname, _, nr, _, _) in enumerate(table):
            if kname == name:
                if nr != block_size:
                    raise ValueError(f"kernel {name} needs block_size {nr}, the matrix has "
                                     f"block_size {block_size}")
                return isa_id(isa), i
        raise ValueError(f"kernel {name!r} is not an spmm kernel of ISA {isa}; "
                         f"choose from {[k[0] for k in table]}")
    choice = _PREFERRED.get((isa, block_size))
    if callable(choice):
        choice = choice(hw, (hw if plane is None else plane) % 16 == 0)
    if choice is not None and choice[0] in available_isas():
        want_isa, want_mr = choice
        variants = _kernels.spmm_kernels(isa_id(want_isa))
        tiles = [(i, prefetch) for i, (_, mr, nr, _, prefetch) in enumerate(variants)
                 if mr == want_mr and nr == block_size]
        if tiles:
            want_prefetch = out_bytes > l2_bytes()
            return isa_id(want_isa), next((i for i, p in tiles if p == want_prefetch), tiles[0][0])
    return isa_id(isa), next(i for i, k in enumerate(table) if k[2] == block_size)
