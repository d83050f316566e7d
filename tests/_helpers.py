"""Shared test helpers: tolerances from error analysis, input generators."""
import numpy as np
from hypothesis import strategies as st

import fastsparse as fs
from fastsparse import _dispatch, _kernels

EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).smallest_subnormal)


def assert_close_to_reference(out, ref, mag, extra_abs=0.0, nnz_per_row=None, what=""):
    """|out - ref| <= (k + 4) * eps32 * (|W| @ |X| + |extra|) elementwise.

    Summing k products in float32 (fused or not, in any order the kernel uses) errs by at most
    about (k + 1) * u * sum|terms| with u = eps32 / 2; bias, residual and the final rounding add
    a few u more. (k + 4) * eps32 keeps a factor ~2 of margin, and nothing more: a wrong index,
    a lost term or a doubled one is far outside it. The absolute term covers underflow.
    `mag` = |W| @ |X| is computed by the caller in float64."""
    scale = mag + np.abs(np.asarray(extra_abs, dtype=np.float64))
    k = nnz_per_row if nnz_per_row is not None else 0
    tol = (np.asarray(k, dtype=np.float64) + 4) * (EPS32 * scale + TINY32)
    out64 = out.astype(np.float64)
    ref64 = ref.astype(np.float64)
    bad = ~(np.abs(out64 - ref64) <= tol)
    same_nan = np.isnan(out64) & np.isnan(ref64)
    bad &= ~same_nan
    if bad.any():
        idx = tuple(int(i[0]) for i in np.nonzero(bad))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} outputs off; first at {idx}: "
            f"got {out64[idx]!r}, reference {ref64[idx]!r}, tolerance {tol[idx]!r}")


# Spatial sizes at tile multiples +-1 for every MR in use (4..64), plus small ones.
EDGE_SIZES = sorted({1, 2, 3, 5} | {m + d for m in (4, 8, 16, 32, 64, 96, 128) for d in (-1, 0, 1)})


@st.composite
def spatial(draw):
    """(H, W) with H * W near a tile multiple, or any small size."""
    hw = draw(st.one_of(st.sampled_from(EDGE_SIZES), st.integers(1, 300)))
    if draw(st.booleans()):
        return 1, hw
    # Factor hw as H x W when it has a divisor, otherwise keep it 1 x hw.
    divisors = [d for d in range(2, int(hw ** 0.5) + 1) if hw % d == 0]
    if not divisors:
        return 1, hw
    h = draw(st.sampled_from(divisors))
    return h, hw // h


PATTERNS = ("random", "all_zero", "one_nonzero", "empty_rows", "dense", "block")


def make_weights(rng, rows, cols, pattern, density, block=1, scale=1.0):
    """A float32 (rows, cols) matrix with the given zero pattern."""
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if pattern == "all_zero":
        return np.zeros_like(w)
    if pattern == "one_nonzero":
        out = np.zeros_like(w)
        i, j = rng.integers(rows), rng.integers(cols)
        out[i, j] = w[i, j] if w[i, j] != 0 else 1.0
        return out
    if pattern == "dense":
        w[w == 0] = 1.0
        return w
    if pattern == "block":
        nb = -(-rows // block)
        keep = rng.random((nb, cols)) < density
        return np.where(np.repeat(keep, block, axis=0)[:rows], w, 0).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0
    if pattern == "empty_rows":
        w[rng.random(rows) < 0.5] = 0
    return w


@st.composite
def spmm_case(draw, block_size):
    """Everything one sparse_conv1x1 call needs, as plain parameters (shrinks well)."""
    h, w = draw(spatial())
    return dict(
        n=draw(st.sampled_from([1, 1, 2, 3])),
        h=h, w=w,
        cin=draw(st.one_of(st.integers(1, 24), st.sampled_from([31, 32, 33, 96, 160]))),
        cout=draw(st.one_of(st.integers(1, 3 * block_size + 2),
                            st.sampled_from([block_size * 4 - 1, block_size * 4 + 1, 24]))),
        pattern=draw(st.sampled_from(PATTERNS)),
        density=draw(st.sampled_from([0.05, 0.1, 0.3, 0.7])),
        scale=draw(st.sampled_from([1e-3, 1.0, 1e3])),
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "relu", "relu6", ("clamp", -0.5, 0.25)])),
        threads=draw(st.sampled_from([1, 2, 3])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def build_spmm_inputs(case, block_size):
    rng = np.random.default_rng(case["seed"])
    wd = make_weights(rng, case["cout"], case["cin"], case["pattern"], case["density"],
                      block=block_size, scale=case["scale"])
    x = rng.standard_normal((case["n"], case["cin"], case["h"], case["w"])).astype(np.float32)
    bias = rng.standard_normal(case["cout"]).astype(np.float32) if case["bias"] else None
    res = (rng.standard_normal((case["n"], case["cout"], case["h"], case["w"])).astype(np.float32)
           if case["residual"] else None)
    return wd, x, bias, res


def spmm_kernel_params():
    """(isa, kernel name, block size) for every variant this CPU can run."""
    return [(isa, name, nr)
            for isa in fs.available_isas()
            for name, _, nr, _, _ in _kernels.spmm_kernels(_dispatch.isa_id(isa))]


# --- CHW ops ---------------------------------------------------------------------------------

ACTIVATIONS = [None, "relu", "relu6", ("clamp", -0.5, 0.25)]
# Widths around every vector length in use (1, 4, 8, 16) and the stride-2 pair width (32).
CHW_EDGE_SIZES = sorted({1, 2, 3, 4, 5, 6, 7} | {m + d for m in (8, 16, 32, 48) for d in (-1, 0, 1)})


def conv_magnitude(x, w, stride, padding, layout="NCHW"):
    """Taps of |x| and |w| in float64 with the reference's geometry: dw_magnitude and
    dense_magnitude contract them into |w| (*) |x|, the scale of the rounding error."""
    from fastsparse import reference
    x = np.abs(np.asarray(x, dtype=np.float64))
    if layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    w = np.abs(np.asarray(w, dtype=np.float64))
    k, s, oh, ow, xp = reference._conv_geometry(x, w, stride, padding, (3, 5))
    taps = reference._taps(xp, k, s, oh, ow)
    return taps, w


def dw_magnitude(x, w, stride, padding):
    taps, wa = conv_magnitude(x, w, stride, padding)
    return np.einsum("yxncij,cyx->ncij", taps, wa[:, 0])


def dense_magnitude(x, w, stride, padding, layout="NCHW"):
    taps, wa = conv_magnitude(x, w, stride, padding, layout)
    return np.einsum("yxncij,ocyx->noij", taps, wa)


def padding_span(padding):
    if isinstance(padding, int):
        return padding, padding, padding, padding
    return tuple(padding)


@st.composite
def padding_forms(draw, k):
    """An int (usually k // 2) or a 4-tuple, including the Keras 'same' stride-2 forms."""
    return draw(st.one_of(
        st.sampled_from([k // 2, 0, k - 1]),
        st.sampled_from([(0, 0, 1, 1), (1, 1, 2, 2), (k // 2,) * 4]),
        st.tuples(*[st.integers(0, k)] * 4)))
