"""Which kernel variants run: ISA choice (cpuid in C, preference and override here), threads,
and the per-layer choice of the spmm tile."""
import os

from . import _kernels

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
    return previous


def isa_id(name):
    return _NAMES.index(name)


# --- threads -------------------------------------------------------------------------------

def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_num_threads = _default_threads() if _kernels.OPENMP else 1


def get_num_threads():
    """Threads a call uses when it is not given num_threads (1 in a build without OpenMP)."""
    return _num_threads


def set_num_threads(n):
    """Default thread count for all calls; OMP_NUM_THREADS sets it at import."""
    from ._validate import count
    global _num_threads
    _num_threads = count(n, "n") if _kernels.OPENMP else 1


def resolve_threads(num_threads):
    if num_threads is None:
        return _num_threads
    from ._validate import count
    count(num_threads, "num_threads")
    return num_threads if _kernels.OPENMP else 1


# --- spmm variants -------------------------------------------------------------------------

def spmm_kernels(isa=None):
    """Names of the spmm variants of `isa` (default: the active one)."""
    isa = _active if isa is None else _check_isa(isa, "isa")
    return [k[0] for k in _kernels.spmm_kernels(isa_id(isa))]


# Spatial tile (MR) per (ISA, block size): MR/VLEN * NR (* unroll) accumulators of 8 or more
# keep two FMA ports busy through a 4-cycle latency with registers to spare.
_PREFERRED_MR = {
    ("avx512", 1): 64, ("avx512", 2): 32, ("avx512", 4): 32, ("avx512", 8): 16,
    ("avx2", 1): 32, ("avx2", 2): 16, ("avx2", 4): 16, ("avx2", 8): 8,
    ("sse2", 1): 16, ("sse2", 2): 8, ("sse2", 4): 8, ("sse2", 8): 4,
    ("neon", 1): 32, ("neon", 2): 16, ("neon", 4): 16, ("neon", 8): 8,
    ("scalar", 1): 8, ("scalar", 2): 8, ("scalar", 4): 8, ("scalar", 8): 4,
}


def spmm_kernel_index(isa, block_size, name=None):
    """Index in `isa`'s table of the variant to run for blocks of `block_size` rows."""
    table = _kernels.spmm_kernels(isa_id(isa))
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"kernel must be a str, got {type(name).__name__}")
        for i, (kname, _, nr, _) in enumerate(table):
            if kname == name:
                if nr != block_size:
                    raise ValueError(f"kernel {name} needs block_size {nr}, the matrix has "
                                     f"block_size {block_size}")
                return i
        raise ValueError(f"kernel {name!r} is not an spmm kernel of ISA {isa}; "
                         f"choose from {[k[0] for k in table]}")
    want = _PREFERRED_MR.get((isa, block_size))
    candidates = [(i, mr) for i, (_, mr, nr, _) in enumerate(table) if nr == block_size]
    for i, mr in candidates:
        if mr == want:
            return i
    return candidates[0][0]
