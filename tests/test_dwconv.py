"""depthwise_conv2d: every kernel (k, stride) of every ISA against the NumPy reference."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import fastsparse as fs
from fastsparse import _dispatch, _kernels
from _helpers import (ACTIVATIONS, CHW_EDGE_SIZES, assert_close_to_reference, dw_magnitude,
                      padding_forms, padding_span)


def _fits(h, w, k, padding):
    pt, pl, pb, pr = padding_span(padding)
    return h + pt + pb >= k and w + pl + pr >= k


def check_dwconv(x, w, bias, stride, padding, activation, threads, what=""):
    snapshot = [a.tobytes() if a is not None else None for a in (x, w, bias)]
    out = fs.depthwise_conv2d(x, w, bias=bias, stride=stride, padding=padding,
                              activation=activation, num_threads=threads)
    assert [a.tobytes() if a is not None else None for a in (x, w, bias)] == snapshot, \
        "inputs were modified"
    ref = fs.reference.depthwise_conv2d(x, w, bias=bias, stride=stride, padding=padding,
                                        activation=activation)
    assert out.shape == ref.shape and out.dtype == np.float32 and out.flags.c_contiguous
    mag = dw_magnitude(x, w, stride, padding)
    extra = np.abs(bias.astype(np.float64))[None, :, None, None] if bias is not None else 0.0
    k = w.shape[2]
    assert_close_to_reference(out, ref, mag, extra_abs=extra, nnz_per_row=k * k,
                              what=f"isa={fs.isa()} k={k} stride={stride} padding={padding} "
                                   f"x.shape={x.shape} activation={activation} "
                                   f"threads={threads} {what}")
    return out


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@given(data=st.data())
def test_matches_reference(isa, k, stride, data):
    h = data.draw(st.one_of(st.sampled_from(CHW_EDGE_SIZES), st.integers(1, 40)), label="H")
    w = data.draw(st.one_of(st.sampled_from(CHW_EDGE_SIZES), st.integers(1, 70)), label="W")
    padding = data.draw(padding_forms(k), label="padding")
    assume(_fits(h, w, k, padding))
    n = data.draw(st.sampled_from([1, 2]), label="N")
    c = data.draw(st.integers(1, 5), label="C")
    scale = data.draw(st.sampled_from([1e-3, 1.0, 1e3]), label="scale")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((c, 1, k, k)) * scale).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32) if data.draw(st.booleans(), label="bias") else None
    check_dwconv(x, wt, bias, stride, padding, data.draw(st.sampled_from(ACTIVATIONS)),
                 data.draw(st.sampled_from([1, 2]), label="threads"))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_width_and_padding(isa, k, stride):
    """Every W from 1 to past two 32-float stride-2 pairs, every left/right padding up to k:
    the copy tails, the deinterleave with both parities and the masked output stores. The
    image sits in a NaN-filled buffer, so a read outside it would poison the result."""
    rng = np.random.default_rng(k * 10 + stride)
    wt = rng.standard_normal((2, 1, k, k)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    for w in range(1, 68):
        for pl, pr in [(0, 0), (k // 2, k // 2), (1, 2), (2, 1), (0, k), (k, 0)]:
            h, pt, pb = 3, k // 2, (k + 1) // 2
            if not _fits(h, w, k, (pt, pl, pb, pr)):
                continue
            size = 2 * 2 * h * w
            buf = np.full(size + 64, np.nan, dtype=np.float32)
            x = buf[32:32 + size].reshape(2, 2, h, w)
            x[...] = rng.standard_normal(x.shape)
            check_dwconv(x, wt, bias, stride, (pt, pl, pb, pr), ("clamp", -2.0, 2.0), 1,
                         what="(guarded buffer)")


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_kernel_writes_only_its_output(isa, k, stride):
    """Direct kernel call into an output with guard values on both sides."""
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (5, 7), (9, 17), (4, 33)]:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        wt = rng.standard_normal((3, k * k)).astype(np.float32)
        oh = (h + 2 * (k // 2) - k) // stride + 1
        ow = (w + 2 * (k // 2) - k) // stride + 1
        buf = np.full(3 * oh * ow + 64, 7.0, dtype=np.float32)
        out = buf[32:32 + 3 * oh * ow].reshape(1, 3, oh, ow)
        _kernels.dwconv2d(_dispatch.isa_id(isa), x, wt, None, out, k, stride, k // 2, k // 2,
                          -np.inf, np.inf, 1)
        assert np.all(buf[:32] == 7.0) and np.all(buf[32 + 3 * oh * ow:] == 7.0)
        ref = fs.reference.depthwise_conv2d(x, wt.reshape(3, 1, k, k), stride=stride,
                                            padding=k // 2)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_flat_path_edges(isa, k):
    """Stride 1 with "same" padding runs on the flattened plane (dwconv_impl.h): widths around
    every vector length (columns wrap inside a vector) and with lane masks repeating every 2
    to 16 vectors (read from the table the first plane builds) or later, heights on both
    sides of the 32 rows up to which the plane is copied into scratch and of the rows the top
    and bottom vectors' taps reach, plane sizes around vector multiples. The images sit back to back in a
    NaN-filled buffer, so a read outside a plane poisons an output; every activation."""
    rng = np.random.default_rng(k)
    wt = rng.standard_normal((2, 1, k, k)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    widths = [1, 2, 3, 4, 5, 7, 8, 9, 14, 15, 16, 17, 28, 31, 32, 33, 56, 112]
    heights = [1, 2, 3, 5, 7, 16, 31, 32, 33, 34, 40]
    for i, (h, w) in enumerate((h, w) for h in heights for w in widths):
        size = 2 * 2 * h * w
        buf = np.full(size + 64, np.nan, dtype=np.float32)
        x = buf[32:32 + size].reshape(2, 2, h, w)
        x[...] = rng.standard_normal(x.shape)
        check_dwconv(x, wt, bias if i % 2 else None, 1, k // 2,
                     ACTIVATIONS[i % len(ACTIVATIONS)], 1 + i % 2, what="(guarded buffer)")


@pytest.mark.parametrize("k", [3, 5])
def test_flat_path_rows_and_ranges_give_the_same_bits(isa, k):
    """Planes at least 48 floats wide compute their whole rows in blocks of rows
    (fs_dw_rows_s1, dwconv_impl.h) and the partial rows at a range's ends in flat spans.
    Threads cut one image's planes at 16-float positions, mid-row (2-5 threads where each
    gets 128 positions or more), so the same output falls to either path: the bits must not
    change, nor differ from the reference. Three channels per image (each thread's scratch
    serves every plane of its range); heights around the block of rows (3 on AVX2, 4
    elsewhere) and the 32 staged rows, widths around 48 and 16-float multiples; NaN guards
    of two rows and more around the image catch reads outside it."""
    rng = np.random.default_rng(40 + k)
    cut = 0
    for i, (h, w) in enumerate((h, w) for h in (3, 4, 5, 7, 8, 9, 31, 33, 37)
                               for w in (47, 48, 49, 56, 63, 65, 112)):
        guard = 2 * w + 64
        buf = np.full(3 * h * w + 2 * guard, np.nan, dtype=np.float32)
        x = buf[guard:guard + 3 * h * w].reshape(1, 3, h, w)
        x[...] = rng.standard_normal(x.shape)
        wt = rng.standard_normal((3, 1, k, k)).astype(np.float32)
        bias = rng.standard_normal(3).astype(np.float32)
        act = ACTIVATIONS[i % len(ACTIVATIONS)]
        base = check_dwconv(x, wt, bias, 1, k // 2, act, 1, what="(guarded buffer)")
        for t in (2, 3, 5):
            out = fs.depthwise_conv2d(x, wt, bias, stride=1, padding=k // 2, activation=act,
                                      num_threads=t)
            assert out.tobytes() == base.tobytes(), (k, h, w, t)
            cut += h * w >= 128 * t
    assert cut >= 100  # (shape, threads) pairs whose planes the threads cut


def test_fma_isas_give_the_same_stride1_bits():
    """The stride-1 "same" paths run the same FMAs in the same order on every FMA ISA: AVX2
    with unaligned tap loads, AVX-512 on planes 7, 14 and 28 wide with lane shifts of aligned
    loads (fs_vshift) instead. Their bytes must agree, on widths around those (one
    path or the other) and heights around the 32 staged rows, thread cuts included."""
    fma = [i for i in ("avx2", "avx512") if i in fs.available_isas()]
    if len(fma) < 2:
        pytest.skip("needs AVX2 and AVX-512 on this CPU")
    rng = np.random.default_rng(11)
    previous = fs.isa()
    try:
        for k in (3, 5):
            for h in (1, 2, 7, 14, 28, 32, 33):
                for w in (6, 7, 8, 13, 14, 15, 27, 28, 29):
                    x = rng.standard_normal((1, 4, h, w)).astype(np.float32)
                    wt = rng.standard_normal((4, 1, k, k)).astype(np.float32)
                    bias = rng.standard_normal(4).astype(np.float32)
                    outs = set()
                    for name in fma:
                        fs.set_isa(name)
                        for t in (1, 3):
                            outs.add(fs.depthwise_conv2d(x, wt, bias, padding=k // 2,
                                                         activation="relu6",
                                                         num_threads=t).tobytes())
                    assert len(outs) == 1, (k, h, w)
    finally:
        fs.set_isa(previous)


def test_stride2_narrow_outputs_pair_rows(isa):
    """3x3 stride-2 outputs at most 8 wide from rows of at most 16 floats run two output rows
    per vector on AVX-512 (fs_dw_s2_pairs), an odd last row alone, with PyTorch's padding and
    TensorFlow's "same" (none on top and left): each output row must keep its bytes however
    the rows pair up (the image with two zero rows below it pairs its rows differently when
    oh is odd), and match the reference. Images in NaN guards."""
    rng = np.random.default_rng(12)
    wt = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    for padding in (1, (0, 0, 1, 1)):
        for h in range(1, 18):
            for w in range(1, 18):
                if not _fits(h, w, 3, padding):
                    continue
                buf = np.full(3 * (h + 2) * w + 64, np.nan, dtype=np.float32)
                x = buf[32:32 + 3 * h * w].reshape(1, 3, h, w)
                x[...] = rng.standard_normal(x.shape)
                out = check_dwconv(x, wt, bias, 2, padding, "relu6", 1, what="(guarded buffer)")
                taller = np.zeros((1, 3, h + 2, w), np.float32)
                taller[:, :, :h] = x
                more = fs.depthwise_conv2d(taller, wt, bias, stride=2, padding=padding,
                                           activation="relu6")
                assert more[:, :, :out.shape[2]].tobytes() == out.tobytes(), (padding, h, w)


def test_flat_path_writes_only_its_output(isa):
    """Direct kernel calls of the flat path into outputs with guard values on both sides, the
    plane sizes around multiples of 16 floats."""
    rng = np.random.default_rng(5)
    for k in (3, 5):
        for h, w in [(1, 1), (1, 15), (1, 17), (3, 5), (4, 4), (5, 13), (7, 7), (17, 1), (8, 8),
                     (33, 3), (34, 31)]:
            x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
            wt = rng.standard_normal((3, k * k)).astype(np.float32)
            buf = np.full(3 * h * w + 64, 7.0, dtype=np.float32)
            out = buf[32:32 + 3 * h * w].reshape(1, 3, h, w)
            _kernels.dwconv2d(_dispatch.isa_id(isa), x, wt, None, out, k, 1, k // 2, k // 2,
                              -np.inf, np.inf, 1)
            assert np.all(buf[:32] == 7.0) and np.all(buf[32 + 3 * h * w:] == 7.0), (k, h, w)
            ref = fs.reference.depthwise_conv2d(x, wt.reshape(3, 1, k, k), padding=k // 2)
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5, err_msg=f"k={k} {h}x{w}")


@pytest.mark.parametrize("k", [3, 5])
def test_quarter_path_edges(isa, k):
    """Stride 2 on even sizes with padding k//2 (PyTorch) or k//2 - 1 on top/left (TensorFlow
    "same") and outputs up to 32 wide runs on four quarter planes in scratch (dwconv_impl.h,
    fs_kernels.h): output widths around every vector length (columns wrap inside a vector) and
    past 32 (the row path), output planes around vector multiples, input rows with and without
    a gap after them (the row stride), odd sizes (the row path). Large planes run in bands of
    output rows, each copying its halo rows again. The images sit back to back in a NaN-filled
    buffer, so a read outside a plane poisons an output; every activation. (Where vec_<isa>.h
    sets FS_DW_S2_DIRECT, AVX2 and AVX-512, the 3x3 cases run the in-register path instead:
    the same edges for it.)"""
    rng = np.random.default_rng(20 + k)
    wt = rng.standard_normal((2, 1, k, k)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    p = k // 2
    pads = [p, (p - 1, p - 1, p, p), (p, p, p - 1, p - 1)]
    half_widths = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33]  # 33: past FS_DW_QUARTER_MAX_OW
    half_heights = [1, 2, 3, 7, 8, 17]
    cases = [(2 * oh, 2 * ow) for oh in half_heights for ow in half_widths] + [(6, 5), (5, 6)]
    # Planes of more than one band (FS_DW_BAND_FLOATS output floats): whole and partial last
    # bands.
    cases += [(80, 64), (200, 32), (140, 62), (2200, 2)]
    for i, (h, w) in enumerate(cases):
        gap = 3 if i % 3 == 0 else 0
        size = 2 * 2 * h * (w + gap)
        buf = np.full(size + 64, np.nan, dtype=np.float32)
        x = buf[32:32 + size].reshape(2, 2, h, w + gap)[..., :w]
        x[...] = rng.standard_normal(x.shape)
        check_dwconv(x, wt, bias if i % 2 else None, 2, pads[i % 3],
                     ACTIVATIONS[i % len(ACTIVATIONS)], 1 + i % 2, what="(guarded buffer)")


def test_quarter_path_writes_only_its_output(isa):
    """Direct kernel calls of the stride-2 quarter path (for 3x3 on AVX-512: the in-register
    path) into outputs with guard values on both sides, both paddings it takes, plane sizes
    around multiples of 16 floats."""
    rng = np.random.default_rng(6)
    for k in (3, 5):
        for h, w in [(2, 2), (2, 30), (2, 34), (4, 4), (6, 10), (14, 14), (16, 32), (34, 2)]:
            for pad in (k // 2, k // 2 - 1):
                oh, ow = h // 2, w // 2
                x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
                wt = rng.standard_normal((3, k * k)).astype(np.float32)
                size = 3 * oh * ow
                buf = np.full(size + 64, 7.0, dtype=np.float32)
                out = buf[32:32 + size].reshape(1, 3, oh, ow)
                _kernels.dwconv2d(_dispatch.isa_id(isa), x, wt, None, out, k, 2, pad, pad,
                                  -np.inf, np.inf, 1)
                assert np.all(buf[:32] == 7.0) and np.all(buf[32 + size:] == 7.0), (k, h, w)
                ref = fs.reference.depthwise_conv2d(
                    x, wt.reshape(3, 1, k, k), stride=2,
                    padding=(pad, pad, k - 2 - pad, k - 2 - pad))
                np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5,
                                           err_msg=f"k={k} {h}x{w} pad={pad}")


@pytest.mark.parametrize("k", [3, 5])
def test_stride2_wide_rows(isa, k):
    """Stride 2 on rows wider than the quarter path takes (and, for 3x3 where vec_<isa>.h sets
    FS_DW_S2_DIRECT, every stride-2 shape): widths around where a column of output vectors
    stops needing bounded loads (2 x0 + 2 vector lengths), around outputs of whole vectors
    (the column entering the last vector's shifted taps: zeros, or with no right padding,
    summed from past ow: widths 65 and 81), output heights 1 to 9 (blocks of 3, 2 and 1
    rows), rows with a gap after them, a NaN-filled buffer around the images."""
    rng = np.random.default_rng(40 + k)
    wt = rng.standard_normal((2, 1, k, k)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    p = k // 2
    widths = [m + d for m in (64, 80, 96, 112, 128) for d in (-1, 0, 1)]
    pads = [p, (p - 1, p - 1, p, p), (p, p - 1, p, p - 1), (p - 1, p, p - 1, p)]
    for i, w in enumerate(widths):
        for j, pad in enumerate(pads):
            h = 2 * (1 + (i + 3 * j) % 9) - (i + j) % 2
            gap = 5 if (i + j) % 3 == 0 else 0
            size = 2 * 2 * h * (w + gap)
            buf = np.full(size + 64, np.nan, dtype=np.float32)
            x = buf[32:32 + size].reshape(2, 2, h, w + gap)[..., :w]
            x[...] = rng.standard_normal(x.shape)
            if not _fits(h, w, k, pad):
                continue
            check_dwconv(x, wt, bias if j % 2 else None, 2, pad,
                         ACTIVATIONS[(i + j) % len(ACTIVATIONS)], 1 + i % 2,
                         what=f"(guarded buffer, W={w}, H={h}, gap={gap})")


def test_keras_same_padding_stride2(isa):
    """TF/Keras 'same' with stride 2 on even sizes pads only bottom/right: (0, 0, 1, 1)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 8, 10)).astype(np.float32)
    wt = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    out = check_dwconv(x, wt, None, 2, (0, 0, 1, 1), None, 1)
    assert out.shape == (1, 4, 4, 5)  # ceil(8 / 2), ceil(10 / 2)


def test_thread_count_does_not_change_results(isa):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7, 13, 29)).astype(np.float32)
    wt = rng.standard_normal((7, 1, 5, 5)).astype(np.float32)
    base = fs.depthwise_conv2d(x, wt, stride=2, padding=2, num_threads=1)
    for t in (2, 3, 8):
        assert fs.depthwise_conv2d(x, wt, stride=2, padding=2, num_threads=t).tobytes() == \
            base.tobytes()


def test_non_contiguous_input_and_weights(isa):
    rng = np.random.default_rng(4)
    base = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    wt = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    ref = fs.reference.depthwise_conv2d(base, wt)
    view = np.repeat(base, 2, axis=3)[..., ::2]
    wview = np.repeat(wt, 2, axis=3)[..., ::2]
    np.testing.assert_allclose(fs.depthwise_conv2d(view, wview), ref, rtol=1e-5, atol=1e-5)
    # float64 weights are accepted (converted once); activations must be float32.
    np.testing.assert_allclose(fs.depthwise_conv2d(base, wt.astype(np.float64)), ref,
                               rtol=1e-5, atol=1e-5)


def test_nan_propagates_through_the_clamp(isa):
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = np.nan
    out = fs.depthwise_conv2d(x, np.ones((1, 1, 3, 3), np.float32), activation="relu6")
    assert np.isnan(out[0, 0, 1:4, 1:4]).all()
    assert not np.isnan(out[0, 0, 0]).any()


BAD = [
    (dict(x=np.ones((1, 2, 5, 5))), TypeError, "x must have dtype float32"),
    (dict(x=np.ones((2, 5, 5), np.float32)), ValueError, "x must have 4 dimensions"),
    (dict(x=[[[[1.0]]]]), TypeError, "x must be a numpy.ndarray"),
    (dict(w=np.ones((2, 1, 4, 4), np.float32)), ValueError, "kernel size must be 3 or 5"),
    (dict(w=np.ones((2, 1, 2, 2), np.float32)), ValueError, "kernel size must be 3 or 5"),
    (dict(w=np.ones((2, 1, 3, 5), np.float32)), ValueError, "w must have shape (C, 1, k, k)"),
    (dict(w=np.ones((2, 2, 3, 3), np.float32)), ValueError, "w must have shape (C, 1, k, k)"),
    (dict(w=np.ones((2, 3, 3), np.float32)), ValueError, "w must have shape"),
    (dict(w=np.ones((3, 1, 3, 3), np.float32)), ValueError, "w has 3 channels but x has 2"),
    (dict(w=np.full((2, 1, 3, 3), np.nan, np.float32)), ValueError, "w must be finite"),
    (dict(w=np.array([["a"]])), TypeError, "w must hold real numbers"),
    (dict(stride=3), ValueError, "stride must be 1 or 2"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=1.0), TypeError, "stride must be an int"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(padding=(1, 1, -1, 1)), ValueError, "padding[2] must be >= 0"),
    (dict(padding=(1, 1)), TypeError, "padding must be an int or a 4-tuple"),
    (dict(padding="same"), TypeError, "padding must be an int or a 4-tuple"),
    (dict(padding=True), TypeError, "padding must be an int or a 4-tuple"),
    (dict(bias=np.ones(3)), ValueError, "bias must have shape (2,)"),
    (dict(activation="gelu"), ValueError, "activation must be None"),
    (dict(num_threads=0), ValueError, "num_threads must be >= 1"),
    (dict(x=np.ones((1, 2, 1, 1), np.float32), padding=0), ValueError, "smaller than the 3x3 kernel"),
    (dict(x=np.ones((1, 2, 0, 4), np.float32)), ValueError, "x must have H, W >= 1"),
]


@pytest.mark.parametrize("kwargs,exc,words", BAD, ids=[b[2] for b in BAD])
def test_bad_input_names_the_argument(kwargs, exc, words):
    args = dict(x=np.ones((1, 2, 5, 5), np.float32), w=np.ones((2, 1, 3, 3), np.float32))
    args.update(kwargs)
    with pytest.raises(exc) as info:
        fs.depthwise_conv2d(args.pop("x"), args.pop("w"), **args)
    assert words in str(info.value)
