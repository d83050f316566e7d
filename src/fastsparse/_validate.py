"""Argument checks shared by the public API and the reference: one place for the messages."""
import numbers
import operator

import numpy as np

_INF = float("inf")
_F32 = np.dtype(np.float32)


def activation_bounds(activation, name="activation"):
    """(lo, hi) clamp bounds of None | "relu" | "relu6" | ("clamp", lo, hi)."""
    if activation is None:
        return -_INF, _INF
    if isinstance(activation, str):
        if activation == "relu":
            return 0.0, _INF
        if activation == "relu6":
            return 0.0, 6.0
    elif (isinstance(activation, tuple) and len(activation) == 3 and activation[0] == "clamp"):
        _, lo, hi = activation
        if not (isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real)):
            raise TypeError(f"{name}: clamp bounds must be real numbers, got {lo!r}, {hi!r}")
        try:
            lo, hi = float(lo), float(hi)
        except OverflowError:  # an int beyond the double range, e.g. 10**400
            raise ValueError(f"{name}: clamp bounds must fit in a float, got {lo!r}, {hi!r}") \
                from None
        if lo != lo or hi != hi or lo > hi:
            raise ValueError(f"{name}: clamp bounds must satisfy lo <= hi, got ({lo}, {hi})")
        return lo, hi
    raise ValueError(
        f"{name} must be None, 'relu', 'relu6' or ('clamp', lo, hi), got {activation!r}")


def count(value, name, minimum=1):
    """An int >= minimum (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def thread_count(value, name="num_threads"):
    if type(value) is int and value >= 1:
        return value
    return count(value, name)


def float32_array(a, name, ndim=None):
    """`a` as an aligned C-contiguous float32 ndarray; the caller's array is never modified.

    Only float32 is accepted: converting a large activation tensor silently would hide a copy
    and a precision change from the caller."""
    if type(a) is np.ndarray and a.dtype == _F32 and (ndim is None or a.ndim == ndim):
        flags = a.flags
        if flags.c_contiguous and flags.aligned:
            return a  # the common case, checked without np.require's overhead
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.require(a, requirements=("C", "A"))


def real_array(a, name):
    """A finite-or-not array of real numbers converted to float32 (weights, biases)."""
    try:
        arr = np.asarray(a)
    except Exception as exc:  # e.g. ragged nested lists
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating)
                                 or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def finite_float32(a, name):
    """Weights: real numbers, finite after conversion to float32."""
    arr = real_array(a, name)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(arr, dtype=np.float32, order="C")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite in float32 (found NaN, inf or an overflow)")
    return out


def weights_float32(w, name, ndim, shape_hint):
    """Dense weights of `ndim` dimensions, as finite_float32, but a float32 C-contiguous
    array is only checked, not copied."""
    if isinstance(w, np.ndarray) and w.dtype == _F32:
        if not np.isfinite(w).all():
            raise ValueError(f"{name} must be finite in float32 (found NaN, inf or an overflow)")
        w = np.ascontiguousarray(w)
    else:
        w = finite_float32(w, name)
    if w.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_hint}, got {w.shape}")
    return w


def bias_vector(bias, rows, name="bias"):
    if bias is None:
        return None
    if (type(bias) is np.ndarray and bias.dtype == _F32 and bias.shape == (rows,)
            and bias.flags.c_contiguous):
        return bias
    b = real_array(bias, name)
    if b.shape != (rows,):
        raise ValueError(f"{name} must have shape ({rows},), got {b.shape}")
    return np.ascontiguousarray(b, dtype=np.float32)


def line_aligned_empty(shape):
    """An uninitialized float32 array of `shape` starting on a 64-byte boundary (NumPy only
    promises 16 bytes): channel planes of whole 64-byte lines start on lines only if the
    array does, and the widest vector loads split no line."""
    floats = int(np.prod(shape))
    raw = np.empty(floats + 15, dtype=np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + floats].reshape(shape)


def hugepage_empty(floats):
    """An uninitialized float32 array of `floats` on 2 MiB pages where the OS hands them out
    (Linux transparent huge pages in "madvise" mode) and it takes 1 MiB or more, else 64-byte
    aligned. A network's
    activations touch thousands of 4 KiB pages per call; once other work has flushed the TLB,
    each costs a page walk (a 112x112 1x1 layer ran 3x slower after other layers than in a
    loop)."""
    huge = 2 << 20
    if floats * 4 < huge // 2:  # mostly empty huge pages would waste memory
        return line_aligned_empty(floats)
    try:
        import mmap
        advice = mmap.MADV_HUGEPAGE
    except (ImportError, AttributeError):  # not Linux
        return line_aligned_empty(floats)
    # Private: mmap's default for anonymous memory is MAP_SHARED, which a fork() would share
    # between parent and child (both writing the same activations) and which gets no
    # transparent huge pages (shmem has its own setting).
    mem = mmap.mmap(-1, floats * 4 + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mem.madvise(advice)  # before the first touch, so faults can map whole huge pages
    except OSError:
        pass
    raw = np.frombuffer(mem, dtype=np.uint8)  # keeps the mapping alive
    skip = -raw.ctypes.data % huge
    return raw[skip:skip + floats * 4].view(np.float32)
