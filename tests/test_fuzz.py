"""Fuzzed public API: every generated call returns a correct result or raises ValueError,
TypeError or MemoryError with a message; nothing else, never a crash, never a changed input.

Each test draws a *valid* call (consistent shapes, float32 arrays, legal keywords), then
mutates some of its arguments: the dtype (float16/64, ints, bool, object, complex), the
number of dimensions, one size (mismatched or zero), the memory layout (transposed, sliced,
negative strides, misaligned views from np.frombuffer at offset 1..3, read-only), the values
(NaN, inf), and the keywords (wrong types, num_threads 0/-1/huge, out= arrays that are wrong,
overlapping or read-only), with one of the CPU's ISAs active. Layout mutations keep a call valid; the rest make it invalid
unless they happen to leave it legal. A valid call must succeed and match
fastsparse.reference (or, for networks, the same call on a clean copy of the input); an
invalid one may succeed only if the reference accepts it too and agrees.

Examples per test: FASTSPARSE_FUZZ_EXAMPLES if set (the full run: 1000 per test, 11 tests
-> > 10,000 calls), else the hypothesis profile's count (CI: 80 per test). The number of
calls made is printed at the end of the session.
"""
import collections
import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsparse as fs
from fastsparse import reference
from fastsparse.models import random_mobilenet_v1_weights, random_mobilenet_v2_weights

from _helpers import EPS32, TINY32

CALLS = collections.Counter()  # calls made per target (reported by conftest)
_N = os.environ.get("FASTSPARSE_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_N), deadline=None,
                suppress_health_check=list(HealthCheck)) if _N else settings(
                    deadline=None, suppress_health_check=list(HealthCheck))
CLEAN = (ValueError, TypeError, MemoryError)


# --- outcomes ----------------------------------------------------------------------------------

def snapshot(objs):
    """Bytes, dtype, shape and strides of every array among `objs` (nested in lists/dicts)."""
    out = []

    def walk(o):
        if isinstance(o, np.ndarray):
            data = (None if o.nbytes > 1 << 26 else  # the 4 TiB broadcast views
                    repr(o.tolist()) if o.dtype == object else o.tobytes())
            out.append((id(o), o.dtype.str, o.shape, o.strides, o.flags.writeable, data))
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
    for o in objs:
        walk(o)
    return out


def attempt(target, fn, args, kwargs, protect=None):
    """Calls fn; returns (True, result) or (False, exception) for a clean error. Any other
    exception propagates (and fails the test). Inputs other than `out` must be unchanged."""
    CALLS[target] += 1
    watched = [a for a in list(args) + [v for k, v in kwargs.items() if k != "out"]]
    if protect is not None:
        watched = protect
    before = snapshot(watched)
    try:
        result = (True, fn(*args, **kwargs))
    except CLEAN as exc:
        assert str(exc).strip(), f"{target}: {type(exc).__name__} without a message"
        result = (False, exc)
    assert snapshot(watched) == before, f"{target} modified an input"
    return result


@contextlib.contextmanager
def some_isa(draw):
    """Runs the body with one of the ISAs this CPU supports active (drawn per example)."""
    previous = fs.set_isa(draw(st.sampled_from(fs.available_isas())))
    try:
        yield
    finally:
        fs.set_isa(previous)


def reference_or_none(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CLEAN:
        return None


def check_close(out, ref, mag, k, what):
    """|out - ref| <= (k + 4) * eps32 * |W|@|X| where everything is finite (see _helpers)."""
    assert out.dtype == np.float32 and out.shape == ref.shape, \
        f"{what}: got {out.dtype}{out.shape}, reference {ref.shape}"
    fin = np.isfinite(ref) & np.isfinite(mag)
    if not np.all(np.isfinite(mag)):
        return  # NaN/inf inputs: only the shape is checked (see sparse_conv1x1's docstring)
    tol = (k + 4) * (EPS32 * mag + TINY32)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    bad = fin & ~(diff <= tol)
    assert not bad.any(), f"{what}: {int(bad.sum())} outputs off the reference"


# --- argument generators -----------------------------------------------------------------------

BAD_DTYPES = [np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_, object,
              np.complex64]
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3e38], dtype=np.float32)


def values(seed, shape, scale=1.0):
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(shape) * scale, dtype=np.float32)


def relayout(a, how, rng):
    """`a` with the same values in another memory layout."""
    if a.ndim == 0:
        return a.copy()
    if how == "transposed":
        return np.ascontiguousarray(a.T).T
    if how == "sliced":
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "negative" and a.ndim:
        flipped = np.ascontiguousarray(a[..., ::-1])
        return flipped[..., ::-1]
    if how == "misaligned":
        off = int(rng.integers(1, 4))
        buf = bytearray(a.nbytes + off)
        view = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=off).reshape(a.shape)
        view[...] = a
        return view
    if how == "readonly":
        c = a.copy()
        c.flags.writeable = False
        return c
    if how == "fortran":
        return np.asfortranarray(a)
    return a


LAYOUTS = ["c", "c", "c", "transposed", "sliced", "negative", "misaligned", "readonly", "fortran"]


@st.composite
def mutation(draw, p_bad=0.25):
    """What to do to one array argument: (kind, detail). kind 'layout' keeps it valid."""
    if not draw(st.floats(0, 1)) < p_bad:
        return ("layout", draw(st.sampled_from(LAYOUTS)))
    return draw(st.one_of(
        st.tuples(st.just("dtype"), st.sampled_from(BAD_DTYPES)),
        st.tuples(st.just("ndim"), st.sampled_from([-1, 1])),
        st.tuples(st.just("size"), st.tuples(st.integers(0, 5), st.sampled_from([0, 1, -1, 7]))),
        st.tuples(st.just("special"), st.integers(0, len(SPECIALS) - 1)),
        st.tuples(st.just("type"), st.sampled_from(["list", "none", "str", "scalar", "huge"])),
    ))


def apply(a, mut, rng):
    """(mutated argument, still valid?). Specials keep validity for activations (data)."""
    kind, d = mut
    if kind == "layout":
        return relayout(a, d, rng), True
    if kind == "dtype":
        return (a.astype(d) if d is not object else a.astype(object)), False
    if kind == "ndim":
        if d == 1:
            return a[..., None], False
        if a.ndim >= 2:
            return a.reshape(a.shape[:-2] + (a.shape[-2] * a.shape[-1],)), False
        return (a.reshape(()) if a.size == 1 else a[..., None]), False
    if kind == "size":
        axis, new = d
        if a.ndim == 0:
            return a, True
        axis %= a.ndim
        shape = list(a.shape)
        shape[axis] = max(0, shape[axis] + new) if new in (1, -1) else new
        if tuple(shape) == a.shape:
            return a, True
        return values(int(rng.integers(1 << 30)), tuple(shape)), False
    if kind == "special":
        b = a.copy()
        if b.size:
            b.reshape(-1)[int(rng.integers(b.size))] = SPECIALS[d]
        return b, "special"
    if d == "list":
        return a.tolist(), False
    if d == "none":
        return None, False
    if d == "str":
        return "x", False
    if d == "scalar":
        return np.float32(1.0), False
    # A broadcast array claiming ~4 TiB: copying it must fail cleanly, not allocate.
    return np.broadcast_to(np.float32(1.0), (1, 1, 1 << 20, 1 << 20) if a.ndim == 4 else
                           (1 << 20, 1 << 20) if a.ndim == 2 else (1 << 40,)), False


THREADS = st.sampled_from([None, None, 1, 2, 3, 0, -1, 2**31, 2**63, 10**30, 1.5, "2", True,
                           np.int64(2)])
VALID_THREADS = (None, 1, 2, 3, 2**31, 2**63, 10**30)
ACTS = st.sampled_from([None, "relu", "relu6", ("clamp", -0.5, 0.25), ("clamp", 0, 0),
                        ("clamp", -np.inf, np.float32(1)), "gelu", ("clamp", 1.0, 0.0),
                        ("clamp", np.nan, 1.0), ("clamp", "a", 1.0), ("clamp", 10**400, 1.0),
                        ["clamp", 0.0, 1.0], 5, ("clamp", 0.0)])
VALID_ACTS = (None, "relu", "relu6", ("clamp", -0.5, 0.25), ("clamp", 0, 0),
              ("clamp", -np.inf, np.float32(1)))


def valid_threads(t):
    return any(t is v or (type(t) is int and t == v) for v in VALID_THREADS) or \
        isinstance(t, np.int64)


def valid_act(a):
    return any(a is v for v in VALID_ACTS)


@st.composite
def out_arg(draw):
    """None, a correct fresh array, or one of the wrong kinds."""
    return draw(st.sampled_from(["none", "none", "good", "dtype", "shape", "strided", "readonly",
                                 "overlap", "misaligned", "list"]))


def make_out(kind, shape, x, rng):
    """(out argument, valid?)"""
    if kind == "none":
        return None, True
    if kind == "good":
        return np.full(shape, np.nan, np.float32), True
    if kind == "dtype":
        return np.zeros(shape, np.float64), False
    if kind == "shape":
        return np.zeros(shape[:-1] + (shape[-1] + 1,), np.float32), False
    if kind == "strided":
        return np.zeros(shape[:-1] + (2 * shape[-1],), np.float32)[..., ::2], False
    if kind == "readonly":
        o = np.zeros(shape, np.float32)
        o.flags.writeable = False
        return o, False
    if kind == "misaligned":
        n = int(np.prod(shape))
        return np.frombuffer(bytearray(4 * n + 1), np.float32, n, 1).reshape(shape), False
    if kind == "overlap" and isinstance(x, np.ndarray) and x.dtype == np.float32 \
            and x.flags.writeable and x.size >= int(np.prod(shape)) and x.flags.c_contiguous:
        return x.reshape(-1)[: int(np.prod(shape))].reshape(shape), False
    return [0.0], False


# --- the ops -----------------------------------------------------------------------------------

@st.composite
def spatial_hw(draw):
    return draw(st.one_of(st.tuples(st.integers(1, 9), st.integers(1, 9)),
                          st.sampled_from([(1, 1), (4, 8), (8, 8), (7, 9), (1, 65), (16, 16),
                                           (33, 31), (64, 64)])))


@FUZZ
@given(st.data())
def test_fuzz_sparse_conv1x1(data):
    with some_isa(data.draw):
        _fuzz_sparse_conv1x1(data.draw)


def _fuzz_sparse_conv1x1(d):
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n = d(st.sampled_from([0, 1, 1, 2, 3]))
    cin, cout = d(st.integers(1, 40)), d(st.integers(1, 40))
    h, w = d(spatial_hw())
    block = d(st.sampled_from([1, 2, 4, 8]))
    wd = values(rng.integers(1 << 30), (cout, cin))
    wd[rng.random((cout, cin)) < d(st.sampled_from([0.0, 0.5, 0.9, 1.0]))] = 0
    W = fs.SparseMatrix.from_dense(wd, block_size=block)
    x, vx = apply(values(rng.integers(1 << 30), (n, cin, h, w)), d(mutation()), rng)
    bias, vb = None, True
    if d(st.booleans()):
        bias, vb = apply(values(rng.integers(1 << 30), (cout,)), d(mutation()), rng)
    res, vr = None, True
    if d(st.booleans()):
        res, vr = apply(values(rng.integers(1 << 30), (n, cout, h, w)), d(mutation()), rng)
    act, threads = d(ACTS), d(THREADS)
    kernel = d(st.sampled_from([None, None, None, "nope", 3] + fs.spmm_kernels()))
    kernel_ok = kernel is None or (isinstance(kernel, str) and kernel in fs.spmm_kernels()
                                   and kernel.split("__")[0].removesuffix("_prefetch")
                                   .endswith(f"x{block}"))
    out, vo = make_out(d(out_arg()), (n, cout, h, w), x, rng)
    Wd = d(st.sampled_from([W, W, W, wd, "W"]))
    kw = dict(bias=bias, activation=act, residual=res, num_threads=threads, kernel=kernel,
              out=out)
    ok, y = attempt("sparse_conv1x1", fs.sparse_conv1x1, (x, Wd), kw)
    valid = (vx is True and vb is True and vr is True and vo and Wd is W and valid_act(act)
             and valid_threads(threads) and kernel_ok)
    if valid:
        assert ok, f"a valid sparse_conv1x1 call failed: {y!r}"
    if ok:
        assert Wd is W
        if out is not None:
            assert y is out
        ref = reference_or_none(reference.sparse_conv1x1, x, W, bias, act, res)
        assert ref is not None or not valid
        if ref is not None:
            mag = np.einsum("oc,nchw->nohw", np.abs(wd.astype(np.float64)),
                            np.abs(np.asarray(x, np.float64)))
            extra = 0.0
            if bias is not None:
                extra = extra + np.abs(np.asarray(bias, np.float64))[None, :, None, None]
            if res is not None:
                extra = extra + np.abs(np.asarray(res, np.float64))
            check_close(y, ref, mag + extra, cin, "sparse_conv1x1")


@FUZZ
@given(st.data())
def test_fuzz_linear(data):
    with some_isa(data.draw):
        _fuzz_linear(data.draw)


def _fuzz_linear(d):
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n, cin, cout = d(st.integers(0, 40)), d(st.integers(1, 50)), d(st.integers(1, 30))
    wd = values(rng.integers(1 << 30), (cout, cin))
    wd[rng.random((cout, cin)) < 0.7] = 0
    dense = d(st.booleans())
    W = wd if dense else fs.SparseMatrix.from_dense(wd, block_size=d(st.sampled_from([None, 1, 2, 4, 8])))
    vw = True
    if dense:
        W, vw = apply(W, d(mutation()), rng)
    x, vx = apply(values(rng.integers(1 << 30), (n, cin)), d(mutation()), rng)
    bias, vb = None, True
    if d(st.booleans()):
        bias, vb = apply(values(rng.integers(1 << 30), (cout,)), d(mutation()), rng)
    act, threads = d(ACTS), d(THREADS)
    ok, y = attempt("linear", fs.linear, (x, W), dict(bias=bias, activation=act, num_threads=threads))
    valid = vx is True and vb is True and vw is True and valid_act(act) and valid_threads(threads)
    if valid:
        assert ok, f"a valid linear call failed: {y!r}"
    if ok:
        ref = reference_or_none(reference.linear, x, W, bias, act)
        assert ref is not None or not valid
        if ref is not None:
            wm = W.to_dense() if isinstance(W, fs.SparseMatrix) else W  # W as called
            mag = np.abs(np.asarray(x, np.float64)) @ np.abs(np.asarray(wm, np.float64)).T
            if bias is not None:
                mag = mag + np.abs(np.asarray(bias, np.float64))
            check_close(y, ref, mag, cin, "linear")


@FUZZ
@given(st.data())
def test_fuzz_depthwise_conv2d(data):
    with some_isa(data.draw):
        _fuzz_depthwise_conv2d(data.draw)


def _fuzz_depthwise_conv2d(d):
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n, c = d(st.sampled_from([0, 1, 1, 2])), d(st.integers(1, 12))
    h, w = d(spatial_hw())
    k = d(st.sampled_from([3, 5, 5, 1, 4]))
    stride = d(st.sampled_from([1, 2, 1, 2, 0, 3, -1, 1.0, True, "1", 2**70]))
    padding = d(st.one_of(st.integers(0, k), st.tuples(*[st.integers(0, k)] * 4),
                          st.sampled_from([-1, (1, 1), (1, 1, 1, -1), 1.5, "1", 2**70, 2**20,
                                           [1, 1, 1, 1], None])))
    x, vx = apply(values(rng.integers(1 << 30), (n, c, h, w)), d(mutation()), rng)
    wt, vw = apply(values(rng.integers(1 << 30), (c, 1, k, k)), d(mutation(0.15)), rng)
    bias, vb = None, True
    if d(st.booleans()):
        bias, vb = apply(values(rng.integers(1 << 30), (c,)), d(mutation()), rng)
    act, threads = d(ACTS), d(THREADS)
    pads = (padding,) * 4 if type(padding) is int else padding
    geom_ok = (k in (3, 5) and type(stride) is int and stride in (1, 2)
               and isinstance(pads, (tuple, list)) and len(pads) == 4
               and all(type(p) is int and 0 <= p <= k for p in pads)
               and h + pads[0] + pads[2] >= k and w + pads[1] + pads[3] >= k)
    oshape = (n, c, (h + pads[0] + pads[2] - k) // stride + 1,
              (w + pads[1] + pads[3] - k) // stride + 1) if geom_ok else (n, c, 1, 1)
    out, vo = make_out(d(out_arg()), oshape, x, rng)
    ok, y = attempt("depthwise_conv2d", fs.depthwise_conv2d, (x, wt),
                    dict(bias=bias, stride=stride, padding=padding, activation=act,
                         num_threads=threads, out=out))
    valid = (geom_ok and vx is True and vw is True and vb is True and vo and valid_act(act)
             and valid_threads(threads))
    if valid:
        assert ok, f"a valid depthwise_conv2d call failed: {y!r}"
    if ok:
        if out is not None:
            assert y is out
        ref = reference_or_none(reference.depthwise_conv2d, x, wt, bias, stride, padding, act)
        assert ref is not None or not valid
        if ref is not None:
            from _helpers import dw_magnitude
            mag = dw_magnitude(x, wt, stride, padding)
            if bias is not None:
                mag = mag + np.abs(np.asarray(bias, np.float64))[None, :, None, None]
            check_close(y, ref, mag, k * k, "depthwise_conv2d")


@FUZZ
@given(st.data())
def test_fuzz_conv2d(data):
    with some_isa(data.draw):
        _fuzz_conv2d(data.draw)


def _fuzz_conv2d(d):
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n, cin, cout = d(st.sampled_from([0, 1, 1, 2])), d(st.sampled_from([3, 3, 1, 4])), d(st.integers(1, 10))
    h, w = d(spatial_hw())
    layout = d(st.sampled_from(["NCHW", "NCHW", "NHWC", "nchw", 3, None]))
    stride = d(st.sampled_from([1, 2, 2, 0, 3, 1.0, "2"]))
    padding = d(st.one_of(st.integers(0, 3), st.tuples(*[st.integers(0, 3)] * 4),
                          st.sampled_from([-1, (1, 1), 1.5, 2**70])))
    k = d(st.sampled_from([3, 3, 3, 5]))
    xshape = (n, h, w, cin) if layout == "NHWC" else (n, cin, h, w)
    x, vx = apply(values(rng.integers(1 << 30), xshape), d(mutation()), rng)
    wt, vw = apply(values(rng.integers(1 << 30), (cout, cin, k, k)), d(mutation(0.15)), rng)
    bias, vb = None, True
    if d(st.booleans()):
        bias, vb = apply(values(rng.integers(1 << 30), (cout,)), d(mutation()), rng)
    act, threads = d(ACTS), d(THREADS)
    pads = (padding,) * 4 if type(padding) is int else padding
    geom_ok = (k == 3 and type(stride) is int and stride in (1, 2) and layout in ("NCHW", "NHWC")
               and isinstance(pads, tuple) and len(pads) == 4
               and all(type(p) is int and 0 <= p <= 3 for p in pads)
               and h + pads[0] + pads[2] >= 3 and w + pads[1] + pads[3] >= 3)
    oshape = (n, cout, (h + pads[0] + pads[2] - 3) // stride + 1,
              (w + pads[1] + pads[3] - 3) // stride + 1) if geom_ok else (n, cout, 1, 1)
    out, vo = make_out(d(out_arg()), oshape, x, rng)
    ok, y = attempt("conv2d", fs.conv2d, (x, wt),
                    dict(bias=bias, stride=stride, padding=padding, activation=act,
                         layout=layout, num_threads=threads, out=out))
    valid = (geom_ok and vx is True and vw is True and vb is True and vo and valid_act(act)
             and valid_threads(threads))
    if valid:
        assert ok, f"a valid conv2d call failed: {y!r}"
    if ok:
        if out is not None:
            assert y is out
        ref = reference_or_none(reference.conv2d, x, wt, bias, stride, padding, act, layout)
        assert ref is not None or not valid
        if ref is not None:
            from _helpers import dense_magnitude
            mag = dense_magnitude(x, wt, stride, padding, layout)
            if bias is not None:
                mag = mag + np.abs(np.asarray(bias, np.float64))[None, :, None, None]
            check_close(y, ref, mag, 9 * cin, "conv2d")


@FUZZ
@given(st.data())
def test_fuzz_global_avg_pool(data):
    with some_isa(data.draw):
        _fuzz_global_avg_pool(data.draw)


def _fuzz_global_avg_pool(d):
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n, c = d(st.sampled_from([0, 1, 2, 3])), d(st.integers(0, 20))
    h, w = d(st.one_of(spatial_hw(), st.sampled_from([(0, 3), (100, 200)])))
    x, vx = apply(values(rng.integers(1 << 30), (n, c, h, w)), d(mutation()), rng)
    out, vo = make_out(d(out_arg()), (n, c), x, rng)
    ok, y = attempt("global_avg_pool", fs.global_avg_pool, (x,), dict(out=out))
    valid = vx is True and vo and h * w > 0
    if valid:
        assert ok, f"a valid global_avg_pool call failed: {y!r}"
    if ok:
        ref = reference_or_none(reference.global_avg_pool, x)
        assert ref is not None or not valid
        if ref is not None:
            mag = np.abs(np.asarray(x, np.float64)).mean(axis=(2, 3))
            check_close(y, ref, mag, h * w, "global_avg_pool")


@FUZZ
@given(st.data())
def test_fuzz_add(data):
    with some_isa(data.draw):
        _fuzz_add(data.draw)


def _fuzz_add(d):
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    shape = d(st.one_of(st.lists(st.integers(0, 7), max_size=4).map(tuple),
                        st.sampled_from([(70000,), (3, 100, 257)])))
    a, va = apply(values(rng.integers(1 << 30), shape), d(mutation()), rng)
    b, vb = apply(values(rng.integers(1 << 30), shape), d(mutation()), rng)
    act, threads = d(ACTS), d(THREADS)
    ok, y = attempt("add", fs.add, (a, b), dict(activation=act, num_threads=threads))
    valid = va is True and vb is True and valid_act(act) and valid_threads(threads)
    if valid:
        assert ok, f"a valid add call failed: {y!r}"
    if ok:
        ref = reference_or_none(reference.add, a, b, act)
        assert ref is not None or not valid
        if ref is not None:
            mag = np.abs(np.asarray(a, np.float64)) + np.abs(np.asarray(b, np.float64))
            check_close(y, ref, mag, 0, "add")


@FUZZ
@given(st.data())
def test_fuzz_sparse_matrix_from_dense(data):
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    rows, cols = d(st.integers(0, 40)), d(st.integers(0, 40))
    shape = d(st.sampled_from([(rows, cols), (rows, cols), (rows, cols, 1, 1), (rows,),
                               (rows, cols, 3, 3), ()]))
    w = values(rng.integers(1 << 30), shape)
    w[rng.random(shape) < d(st.sampled_from([0.0, 0.5, 0.95, 1.0]))] = 0
    w, vw = apply(w, d(mutation()), rng)
    block = d(st.sampled_from([None, 1, 2, 4, 8, 3, 0, True, 2.0, "4", np.int64(4),
                               np.array([1, 2])]))
    ok, M = attempt("SparseMatrix.from_dense", fs.SparseMatrix.from_dense, (w,),
                    dict(block_size=block))
    valid = (vw is True and rows >= 1 and cols >= 1 and len(shape) in (2, 4)
             and shape[2:] in ((), (1, 1))
             and (block is None or (type(block) in (int, np.int64) and block in (1, 2, 4, 8))))
    if valid:
        assert ok, f"a valid from_dense call failed: {M!r}"
    if ok:
        dense = np.asarray(w, np.float32)
        dense = dense.reshape(dense.shape[:2])
        assert M.shape == dense.shape
        assert np.array_equal(M.to_dense(), dense)
        assert M.nnz == int(np.count_nonzero(dense))
        if block is not None:
            assert M.block_size == int(block)


@FUZZ
@given(st.data())
def test_fuzz_prune_magnitude(data):
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    shape = d(st.one_of(st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple),
                        st.just(())))
    w = values(rng.integers(1 << 30), shape)
    if d(st.booleans()):
        w = np.round(w)  # ties
    w, vw = apply(w, d(mutation()), rng)
    sparsity = d(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0, np.float32(0.7), -0.1, 1.5, np.nan,
                                  "0.5", None, 10**400, True]))
    block = d(st.sampled_from([1, 1, 2, 4, 3, 8, 100, 0, -1, 2.0, "2", 10**30, np.int64(2)]))
    ok, y = attempt("prune.magnitude", fs.prune.magnitude, (w, sparsity), dict(block_size=block))
    valid = (vw is True and len(shape) >= 1 and isinstance(sparsity, float) and 0 <= sparsity <= 1
             and type(block) in (int, np.int64) and block >= 1)
    if valid:
        assert ok, f"a valid prune.magnitude call failed: {y!r}"
    if ok:
        ref = reference.prune.magnitude(w, sparsity, block_size=block)
        assert y.dtype == np.float32 and y.shape == np.shape(w)
        assert y.tobytes() == ref.tobytes(), "prune.magnitude differs from the reference loop"


# --- networks ------------------------------------------------------------------------------

_NETS = {}


def small_net(arch):
    if arch not in _NETS:
        if arch == "v2":
            sd = random_mobilenet_v2_weights(width=0.25, num_classes=7, seed=3)
            _NETS[arch] = fs.MobileNetV2.from_dense(sd, sparsity=0.8)
        else:
            wt = random_mobilenet_v1_weights(width=0.25, num_classes=5, seed=4)
            _NETS[arch] = fs.MobileNetV1.from_dense(wt, sparsity=0.8, block_size=4)
    return _NETS[arch]


_SOURCES = {}


def source_weights(arch):
    if arch not in _SOURCES:
        _SOURCES[arch] = (random_mobilenet_v2_weights(width=0.25, num_classes=6, seed=5)
                          if arch == "v2" else
                          random_mobilenet_v1_weights(width=0.25, num_classes=6, seed=6))
    return _SOURCES[arch]


@FUZZ
@given(st.data())
def test_fuzz_network_from_dense(data):
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    arch = d(st.sampled_from(["v2", "v1"]))
    sd = dict(source_weights(arch))
    keys = sorted(sd)
    valid = True
    for key in d(st.lists(st.sampled_from(keys), max_size=2, unique=True)):
        kind = d(st.sampled_from(["drop", "mutate", "nan", "rename"]))
        valid = False
        if kind == "drop":
            sd.pop(key, None)
        elif kind == "rename":
            sd[key + "x"] = sd.pop(key, 0)
        elif kind == "nan":
            a = np.array(sd[key], np.float32)
            a.reshape(-1)[0] = d(st.sampled_from([np.nan, np.inf]))
            sd[key] = a
        elif isinstance(sd.get(key), np.ndarray):
            sd[key], _ = apply(sd[key], d(mutation(1.0)), rng)
    src = d(st.sampled_from([sd, sd, sd, "weights", None, list(sd.items())]))
    sparsity = d(st.sampled_from([None, 0.9, 0.5, -1.0, "x"]))
    block = d(st.sampled_from([None, 1, 4, 8, 3]))
    eps = d(st.sampled_from([None, None, 1e-3, -1.0, "x", np.nan, 10**400]))
    cls = fs.MobileNetV2 if arch == "v2" else fs.MobileNetV1
    kw = dict(sparsity=sparsity, block_size=block)
    if eps is not None:
        kw["bn_eps"] = eps
    ok, net = attempt(f"{cls.__name__}.from_dense", cls.from_dense, (src,), kw, protect=[sd])
    valid = (valid and src is sd and sparsity in (None, 0.9, 0.5) and block in (None, 1, 4, 8)
             and eps in (None, 1e-3))
    if valid:
        assert ok, f"a valid from_dense call failed: {net!r}"
    if ok:
        x = values(rng.integers(1 << 30), (1, 3, 32, 32))
        logits = net(x)
        assert logits.shape == (1, net.num_classes) and logits.dtype == np.float32


@FUZZ
@given(st.data())
def test_fuzz_network_call(data):
    with some_isa(data.draw):
        _fuzz_network_call(data.draw)


def _fuzz_network_call(d):
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    net = small_net(d(st.sampled_from(["v2", "v1"])))
    n = d(st.sampled_from([1, 1, 2, 0]))
    h, w = d(st.sampled_from([(1, 1), (2, 3), (7, 9), (16, 16), (33, 20), (0, 4)]))
    layout = d(st.sampled_from(["NCHW", "NCHW", "NHWC", "nhwc", 7]))
    c = d(st.sampled_from([3, 3, 3, 1, 4]))
    shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    clean = values(rng.integers(1 << 30), shape)
    x, vx = apply(clean, d(mutation()), rng)
    ok, y = attempt("network call", net, (x,), dict(layout=layout))
    # MobileNet v1's fixed (0, 0, 1, 1) stride-2 padding needs images of 31+ pixels (as
    # in Keras): smaller ones are refused with a ValueError.
    big_enough = net.arch == "mobilenet_v2" or min(h, w) >= 31
    valid = (vx is True and layout in ("NCHW", "NHWC") and c == 3 and min(n, h, w) >= 1
             and big_enough)
    if valid:
        assert ok, f"a valid network call failed: {y!r}"
        assert y.tobytes() == net(clean, layout=layout).tobytes(), \
            "the result depends on the input's memory layout"
    if ok:
        assert y.shape == (np.shape(x)[0], net.num_classes) and y.dtype == np.float32


# --- files ---------------------------------------------------------------------------------

_FILE = {}


def model_bytes(tmp_path_factory):
    if "bytes" not in _FILE:
        p = tmp_path_factory.mktemp("fuzzmodel") / "m.fsnet"
        net = fs.MobileNetV2.from_dense(random_mobilenet_v2_weights(width=0.1, num_classes=3),
                                        sparsity=0.9)
        net.save(p)
        _FILE["bytes"] = p.read_bytes()
    return _FILE["bytes"]


@FUZZ
@given(data=st.data())
def test_fuzz_load(data, tmp_path_factory):
    d = data.draw
    raw = bytearray(model_bytes(tmp_path_factory))
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    kind = d(st.sampled_from(["flip", "flips", "truncate", "splice", "junk", "header"]))
    if kind == "flip":
        bit = int(rng.integers(len(raw) * 8))
        raw[bit // 8] ^= 1 << (bit % 8)
    elif kind == "flips":
        for bit in rng.integers(len(raw) * 8, size=int(rng.integers(2, 40))):
            raw[bit // 8] ^= 1 << (int(bit) % 8)
    elif kind == "truncate":
        raw = raw[: int(rng.integers(len(raw)))]
    elif kind == "splice":
        i = int(rng.integers(len(raw)))
        raw[i:i + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    elif kind == "junk":
        raw = bytearray(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
    else:  # rewrite one number in the JSON header
        import re
        hlen = int.from_bytes(raw[8:12], "little")
        header = raw[12:12 + hlen].decode()
        nums = list(re.finditer(r"\d+", header))
        m = nums[int(rng.integers(len(nums)))]
        new = str(d(st.sampled_from([0, 1, 3, 63, 64, 2**31 - 1, 2**31, 2**32, 2**62, 10**30])))
        header = header[:m.start()] + new + header[m.end():]
        hb = header.encode()
        data_bytes = len(raw) - 12 - hlen
        raw = raw[:8] + len(hb).to_bytes(4, "little") + hb + raw[12 + hlen:12 + hlen + data_bytes]
    path = tmp_path_factory.getbasetemp() / f"fuzz{os.getpid()}.fsnet"
    path.write_bytes(bytes(raw))
    ok, net = attempt("load", fs.load, (str(path),), {})
    if ok:  # a corruption the format cannot see (a weight value): the network must still run
        x = values(1, (1, 3, 8, 8))
        ok2, y = attempt("network call", net, (x,), {})
        if ok2:
            assert y.shape == (1, net.num_classes)
