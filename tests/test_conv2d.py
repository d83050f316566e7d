"""conv2d (the dense first layer): both strides, NCHW and NHWC input, every ISA."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import fastsparse as fs
from _helpers import (ACTIVATIONS, CHW_EDGE_SIZES, assert_close_to_reference, dense_magnitude,
                      padding_forms, padding_span)


def check_conv(x, w, bias, stride, padding, activation, threads, layout="NCHW", what=""):
    snapshot = [a.tobytes() if a is not None else None for a in (x, w, bias)]
    out = fs.conv2d(x, w, bias=bias, stride=stride, padding=padding, activation=activation,
                    layout=layout, num_threads=threads)
    assert [a.tobytes() if a is not None else None for a in (x, w, bias)] == snapshot, \
        "inputs were modified"
    ref = fs.reference.conv2d(x, w, bias=bias, stride=stride, padding=padding,
                              activation=activation, layout=layout)
    assert out.shape == ref.shape and out.dtype == np.float32 and out.flags.c_contiguous
    mag = dense_magnitude(x, w, stride, padding, layout)
    extra = np.abs(bias.astype(np.float64))[None, :, None, None] if bias is not None else 0.0
    assert_close_to_reference(out, ref, mag, extra_abs=extra, nnz_per_row=w.shape[1] * 9,
                              what=f"isa={fs.isa()} stride={stride} padding={padding} "
                                   f"x.shape={x.shape} layout={layout} w.shape={w.shape} "
                                   f"activation={activation} threads={threads} {what}")
    return out


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@given(data=st.data())
def test_matches_reference(isa, stride, layout, data):
    h = data.draw(st.one_of(st.sampled_from(CHW_EDGE_SIZES), st.integers(1, 40)), label="H")
    w = data.draw(st.one_of(st.sampled_from(CHW_EDGE_SIZES), st.integers(1, 70)), label="W")
    padding = data.draw(padding_forms(3), label="padding")
    pt, pl, pb, pr = padding_span(padding)
    assume(h + pt + pb >= 3 and w + pl + pr >= 3)
    n = data.draw(st.sampled_from([1, 2]), label="N")
    cin = data.draw(st.sampled_from([3, 3, 1, 2, 4]), label="Cin")
    cout = data.draw(st.one_of(st.integers(1, 9), st.sampled_from([16, 32])), label="Cout")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    wt = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32) if data.draw(st.booleans(), label="bias") else None
    check_conv(x, wt, bias, stride, padding, data.draw(st.sampled_from(ACTIVATIONS)),
               data.draw(st.sampled_from([1, 2]), label="threads"), layout)


@pytest.mark.parametrize("stride", [1, 2])
def test_every_width_both_layouts(isa, stride):
    """Every W from 1 to 67 (tails of every vector length), input in a NaN-guarded buffer."""
    rng = np.random.default_rng(stride)
    wt = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    for w in range(1, 68):
        for padding in [1, (0, 0, 1, 1), (1, 2, 0, 0)]:
            pt, pl, pb, pr = padding_span(padding)
            if w + pl + pr < 3:
                continue
            buf = np.full(3 * 4 * w + 64, np.nan, dtype=np.float32)
            x = buf[32:32 + 3 * 4 * w].reshape(1, 3, 4, w)
            x[...] = rng.standard_normal(x.shape)
            nchw = check_conv(x, wt, None, stride, padding, "relu", 1)
            nhwc = check_conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), wt, None, stride,
                              padding, "relu", 1, layout="NHWC")
            assert nchw.tobytes() == nhwc.tobytes()


def test_first_layer_shape_and_threads(isa):
    """MobileNet's first layer (3 -> 32, stride 2) on a 224 x 224 image; bands of rows per
    thread give bit-identical results."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    wt = rng.standard_normal((32, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    out = check_conv(x, wt, b, 2, 1, "relu6", 1)
    assert out.shape == (2, 32, 112, 112)
    for t in (2, 3):
        assert fs.conv2d(x, wt, b, 2, 1, "relu6", num_threads=t).tobytes() == out.tobytes()


def test_large_cin_is_correct(isa):
    """Not the first-layer case: correct (and slower)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 24, 9, 10)).astype(np.float32)
    wt = rng.standard_normal((7, 24, 3, 3)).astype(np.float32)
    check_conv(x, wt, None, 1, 1, None, 2)


BAD = [
    (dict(x=np.ones((1, 3, 8, 8))), TypeError, "x must have dtype float32"),
    (dict(x=np.ones((3, 8, 8), np.float32)), ValueError, "x must have 4 dimensions"),
    (dict(w=np.ones((4, 3, 5, 5), np.float32)), ValueError, "3x3 kernels only"),
    (dict(w=np.ones((4, 3, 2, 2), np.float32)), ValueError, "3x3 kernels only"),
    (dict(w=np.ones((4, 3, 9), np.float32)), ValueError, "w must have shape (Cout, Cin, 3, 3)"),
    (dict(w=np.ones((4, 2, 3, 3), np.float32)), ValueError, "w expects 2 input channels but x"),
    (dict(w=np.ones((4, 3, 3, 3), np.float32), layout="NHWC"), ValueError, "w expects 3 input channels but x (NHWC) has 8"),
    (dict(w=np.full((4, 3, 3, 3), np.inf)), ValueError, "w must be finite"),
    (dict(stride=3), ValueError, "stride must be 1 or 2"),
    (dict(padding=-2), ValueError, "padding must be >= 0"),
    (dict(padding=(0, 0, 0, -1)), ValueError, "padding[3] must be >= 0"),
    (dict(layout="CHW"), ValueError, "layout must be 'NCHW' or 'NHWC'"),
    (dict(layout=None), TypeError, "layout must be 'NCHW' or 'NHWC'"),
    (dict(bias=np.ones(3)), ValueError, "bias must have shape (4,)"),
    (dict(activation=("clamp", 2, 1)), ValueError, "lo <= hi"),
    (dict(num_threads=1.5), TypeError, "num_threads must be an int"),
]


@pytest.mark.parametrize("kwargs,exc,words", BAD, ids=[b[2] for b in BAD])
def test_bad_input_names_the_argument(kwargs, exc, words):
    args = dict(x=np.ones((1, 3, 8, 8), np.float32), w=np.ones((4, 3, 3, 3), np.float32))
    args.update(kwargs)
    with pytest.raises(exc) as info:
        fs.conv2d(args.pop("x"), args.pop("w"), **args)
    assert words in str(info.value)
