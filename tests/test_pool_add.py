"""global_avg_pool and add: every ISA against the NumPy reference."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastsparse as fs
from _helpers import ACTIVATIONS, CHW_EDGE_SIZES, assert_close_to_reference


@given(n=st.sampled_from([1, 2]), c=st.integers(1, 9),
       h=st.one_of(st.sampled_from(CHW_EDGE_SIZES), st.integers(1, 30)),
       w=st.one_of(st.sampled_from(CHW_EDGE_SIZES), st.integers(1, 30)),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**32 - 1))
def test_global_avg_pool_matches_reference(isa, n, c, h, w, scale, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) * scale).astype(np.float32)
    snapshot = x.tobytes()
    out = fs.global_avg_pool(x)
    assert x.tobytes() == snapshot
    ref = fs.reference.global_avg_pool(x)
    assert out.shape == (n, c) and out.dtype == np.float32
    # A float32 sum of H*W terms, then one multiplication by 1/(H*W) (itself rounded).
    mag = np.abs(x.astype(np.float64)).mean(axis=(2, 3))
    assert_close_to_reference(out, ref, mag, nnz_per_row=h * w + 2,
                              what=f"isa={isa} x.shape={x.shape}")


def test_global_avg_pool_every_length(isa):
    rng = np.random.default_rng(0)
    for hw in range(1, 140):
        buf = np.full(3 * hw + 64, np.nan, dtype=np.float32)
        x = buf[32:32 + 3 * hw].reshape(1, 3, 1, hw)
        x[...] = rng.standard_normal(x.shape)
        np.testing.assert_allclose(fs.global_avg_pool(x), fs.reference.global_avg_pool(x),
                                   rtol=1e-5, atol=1e-6, err_msg=f"hw={hw}")


@given(shape=st.one_of(
           st.tuples(st.sampled_from([1, 2]), st.integers(1, 5),
                     st.sampled_from(CHW_EDGE_SIZES), st.sampled_from(CHW_EDGE_SIZES)),
           st.tuples(st.integers(0, 300))),
       activation=st.sampled_from(ACTIVATIONS), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_add_matches_reference(isa, shape, activation, threads, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    snap = (a.tobytes(), b.tobytes())
    out = fs.add(a, b, activation=activation, num_threads=threads)
    assert (a.tobytes(), b.tobytes()) == snap
    ref = fs.reference.add(a, b, activation=activation)
    assert out.shape == a.shape and out.dtype == np.float32
    # One float32 addition: correctly rounded, so equal to the float64 sum rounded to float32.
    np.testing.assert_array_equal(out, ref)


def test_add_large_with_threads(isa):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(300_001).astype(np.float32)
    b = rng.standard_normal(300_001).astype(np.float32)
    np.testing.assert_array_equal(fs.add(a, b, "relu6", num_threads=2),
                                  fs.reference.add(a, b, "relu6"))


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fs.global_avg_pool(np.ones((2, 3, 4, 4))), TypeError, "x must have dtype float32"),
    (lambda: fs.global_avg_pool(np.ones((3, 4, 4), np.float32)), ValueError, "x must have 4 dimensions"),
    (lambda: fs.global_avg_pool(np.ones((1, 3, 0, 4), np.float32)), ValueError, "H, W >= 1"),
    (lambda: fs.add(np.ones(3, np.float32), np.ones(4, np.float32)), ValueError, "same shape"),
    (lambda: fs.add(np.ones(3, np.float32), np.ones(3)), TypeError, "b must have dtype float32"),
    (lambda: fs.add([1.0], np.ones(1, np.float32)), TypeError, "a must be a numpy.ndarray"),
    (lambda: fs.add(np.ones(3, np.float32), np.ones(3, np.float32), "tanh"), ValueError, "activation"),
])
def test_bad_input_names_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
