"""SparseMatrix packing, block choice and magnitude pruning."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastsparse as fs
from fastsparse.sparse import choose_block_size
from _helpers import make_weights


@given(rows=st.integers(1, 40), cols=st.integers(1, 40),
       pattern=st.sampled_from(["random", "all_zero", "one_nonzero", "empty_rows", "dense", "block"]),
       density=st.sampled_from([0.05, 0.3, 0.9]), block=st.sampled_from([None, 1, 2, 4, 8]),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip_and_counts(rows, cols, pattern, density, block, seed):
    rng = np.random.default_rng(seed)
    w = make_weights(rng, rows, cols, pattern, density, block=block or 4)
    W = fs.SparseMatrix.from_dense(w, block_size=block)
    assert W.shape == (rows, cols)
    np.testing.assert_array_equal(W.to_dense(), w)
    assert W.nnz == int((w != 0).sum())
    assert W.sparsity == pytest.approx(1 - W.nnz / w.size)
    assert W.stored >= W.nnz
    assert W.block_size in (1, 2, 4, 8)
    if block is not None:
        assert W.block_size == block
    assert W.nbytes == W.stored * 4 + W._packed.nnzmap.nbytes + W._packed.columns.nbytes


def test_from_dense_accepts_conv_weight_and_does_not_alias():
    w = np.arange(12, dtype=np.float64).reshape(3, 4, 1, 1)
    W = fs.SparseMatrix.from_dense(w)
    np.testing.assert_array_equal(W.to_dense(), w.reshape(3, 4).astype(np.float32))
    w[:] = 0  # the packed copy is independent of the caller's array
    assert W.nnz == 11


def test_packed_arrays_are_read_only():
    W = fs.SparseMatrix.from_dense(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError):
        W._packed.values[0] = 5.0


def test_auto_block_size_rule():
    rng = np.random.default_rng(0)
    # Whole b-row blocks kept or dropped: b-blocks are full, larger blocks are not.
    w4 = make_weights(rng, 64, 64, "block", 0.2, block=4)
    assert choose_block_size(w4 != 0) == 4
    w8 = make_weights(rng, 64, 64, "block", 0.2, block=8)
    assert choose_block_size(w8 != 0) == 8
    w2 = make_weights(rng, 64, 64, "block", 0.2, block=2)
    assert choose_block_size(w2 != 0) == 2
    unstructured = make_weights(rng, 64, 64, "random", 0.2)
    assert choose_block_size(unstructured != 0) == 1
    assert choose_block_size(np.zeros((8, 8), bool)) == 1
    # 4-blocks with one zero in ten: fill 0.9 is enough; one in five is not.
    mask = np.repeat(rng.random((16, 64)) < 0.3, 4, axis=0)
    holes = mask.copy()
    idx = np.argwhere(holes)
    holes[tuple(idx[::10].T)] = False
    assert choose_block_size(holes) == 4
    holes[tuple(idx[::5].T)] = False
    assert choose_block_size(holes) in (1, 2)


def test_leftover_rows_become_single_row_blocks():
    rng = np.random.default_rng(1)
    w = make_weights(rng, 11, 9, "random", 0.5)
    W = fs.SparseMatrix.from_dense(w, block_size=4)
    assert W._packed.nnzmap.shape == (11 // 4 + 11 % 4,)
    np.testing.assert_array_equal(W.to_dense(), w)


@given(shape=st.sampled_from([(1,), (7,), (5, 3), (16, 8), (9, 4, 1, 1), (6, 3, 3, 3)]),
       sparsity=st.sampled_from([0.0, 0.1, 0.5, 0.7, 0.9, 0.95, 1.0]),
       block=st.sampled_from([1, 2, 3, 4, 8]), seed=st.integers(0, 2**32 - 1),
       ties=st.booleans())
def test_magnitude_pruning_matches_reference(shape, sparsity, block, seed, ties):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    if ties:
        w = np.round(w)  # many equal magnitudes and existing zeros
    before = w.copy()
    out = fs.prune.magnitude(w, sparsity, block_size=block)
    np.testing.assert_array_equal(w, before)  # input untouched
    np.testing.assert_array_equal(out, fs.reference.prune.magnitude(w, sparsity, block_size=block))
    assert out.dtype == np.float32 and out.shape == w.shape
    assert (out == 0).sum() >= round(sparsity * w.size)
    kept = out != 0
    np.testing.assert_array_equal(out[kept], w[kept])


def test_magnitude_pruning_is_block_aligned():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((32, 40)).astype(np.float32)
    out = fs.prune.magnitude(w, 0.9, block_size=4)
    blocks = (out != 0).reshape(8, 4, 40)
    assert np.all(blocks.all(axis=1) == blocks.any(axis=1))
    assert fs.SparseMatrix.from_dense(out).block_size >= 4
    assert abs((out == 0).mean() - 0.9) < 0.01
