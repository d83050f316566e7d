"""sparse_conv1x1 and linear: every spmm variant of every ISA against the NumPy reference."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastsparse as fs
from _helpers import (assert_close_to_reference, build_spmm_inputs, make_weights, spmm_case,
                      spmm_kernel_params)

KERNELS = spmm_kernel_params()


def _check_spmm(case, block_size, kernel=None):
    wd, x, bias, res = build_spmm_inputs(case, block_size)
    W = fs.SparseMatrix.from_dense(wd, block_size=block_size)
    snapshot = [a.tobytes() if a is not None else None for a in (x, bias, res)]
    out = fs.sparse_conv1x1(x, W, bias=bias, activation=case["activation"], residual=res,
                            num_threads=case["threads"], kernel=kernel)
    assert [a.tobytes() if a is not None else None for a in (x, bias, res)] == snapshot, \
        "inputs were modified"
    ref = fs.reference.sparse_conv1x1(x, W, bias=bias, activation=case["activation"],
                                      residual=res)
    assert out.shape == ref.shape and out.dtype == np.float32
    n, cin, h, w = x.shape
    mag = np.einsum("oc,ncp->nop", np.abs(wd.astype(np.float64)),
                    np.abs(x.astype(np.float64)).reshape(n, cin, h * w)).reshape(ref.shape)
    extra = np.zeros_like(mag)
    if bias is not None:
        extra += np.abs(bias.astype(np.float64))[None, :, None, None]
    if res is not None:
        extra += np.abs(res.astype(np.float64))
    k = (wd != 0).sum(axis=1)[None, :, None, None]
    assert_close_to_reference(out, ref, mag, extra_abs=extra, nnz_per_row=k,
                              what=f"kernel={kernel} block={block_size} case={case}")


@pytest.mark.parametrize("isa_name,kernel,block_size", KERNELS,
                         ids=[k[1] for k in KERNELS])
@given(data=st.data())
def test_every_variant_matches_reference(isa_name, kernel, block_size, data):
    previous = fs.set_isa(isa_name)
    try:
        _check_spmm(data.draw(spmm_case(block_size)), block_size, kernel)
    finally:
        fs.set_isa(previous)


@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
@given(data=st.data())
def test_default_kernel_choice_matches_reference(isa, block_size, data):
    _check_spmm(data.draw(spmm_case(block_size)), block_size)


ONE_POSITION = [k for k in KERNELS if "_1x1__" in k[1]]


@pytest.mark.skipif(not ONE_POSITION, reason="no ISA with a gather here")
@pytest.mark.parametrize("isa_name,kernel,block_size", ONE_POSITION,
                         ids=[k[1] for k in ONE_POSITION])
def test_one_position_variant_every_row_length(isa_name, kernel, block_size):
    """The gather variant (MR = 1) walks each row's non-zeros a vector at a time: rows of 0
    to past three vectors of non-zeros (both chains, the single vector, the masked tail),
    on 1 to 3 positions, with bias, residual, an active clamp, and a NaN input that must
    reach exactly the rows that read it."""
    previous = fs.set_isa(isa_name)
    try:
        rng = np.random.default_rng(17)
        cin = 70
        counts = list(range(0, 52)) + [64, 69, 70]
        wd = np.zeros((len(counts), cin), np.float32)
        for r, c in enumerate(counts):
            wd[r, rng.choice(cin, c, replace=False)] = rng.standard_normal(c)
        W = fs.SparseMatrix.from_dense(wd)
        bias = rng.standard_normal(len(counts)).astype(np.float32)
        for hw in (1, 2, 3):
            x = rng.standard_normal((1, cin, 1, hw)).astype(np.float32)
            res = rng.standard_normal((1, len(counts), 1, hw)).astype(np.float32)
            out = fs.sparse_conv1x1(x, W, bias=bias, residual=res,
                                    activation=("clamp", -3.0, 3.0), kernel=kernel)
            ref = fs.reference.sparse_conv1x1(x, W, bias=bias, residual=res,
                                              activation=("clamp", -3.0, 3.0))
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4,
                                       err_msg=f"{kernel} hw={hw}")
        x[0, 5, 0, 1] = np.nan
        out = fs.sparse_conv1x1(x, W, activation="relu6", kernel=kernel)
        assert np.array_equal(np.isnan(out[0, :, 0, 1]), wd[:, 5] != 0)
        assert not np.isnan(out[0, :, 0, 0]).any() and not np.isnan(out[0, :, 0, 2]).any()
    finally:
        fs.set_isa(previous)


@pytest.mark.parametrize("isa_name,kernel,block_size", KERNELS,
                         ids=[k[1] for k in KERNELS])
def test_every_spatial_tail(isa_name, kernel, block_size):
    """Every H*W from 1 to two tiles past the widest MR, for each variant, with a residual
    and an active clamp: the tail paths and the masked stores."""
    previous = fs.set_isa(isa_name)
    try:
        rng = np.random.default_rng(7)
        cout, cin = 2 * block_size + 1, 19
        wd = make_weights(rng, cout, cin, "random", 0.4, block=block_size)
        W = fs.SparseMatrix.from_dense(wd, block_size=block_size)
        bias = rng.standard_normal(cout).astype(np.float32)
        for hw in range(1, 2 * 64 + 3):
            x = rng.standard_normal((1, cin, 1, hw)).astype(np.float32)
            res = rng.standard_normal((1, cout, 1, hw)).astype(np.float32)
            # Guard values just past the end catch writes beyond the last row.
            buf = np.full(cout * hw + 32, 7.25, np.float32)
            out = fs.sparse_conv1x1(x, W, bias=bias, residual=res,
                                    activation=("clamp", -1.0, 1.0), kernel=kernel,
                                    out=buf[:cout * hw].reshape(1, cout, 1, hw))
            assert np.all(buf[cout * hw:] == 7.25), f"{kernel} hw={hw} wrote past its output"
            ref = fs.reference.sparse_conv1x1(x, W, bias=bias, residual=res,
                                              activation=("clamp", -1.0, 1.0))
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * cin,
                                       err_msg=f"{kernel} hw={hw}")
    finally:
        fs.set_isa(previous)


@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
@pytest.mark.parametrize("rows,cols", [(37, 45), (45, 37)])
def test_thread_count_does_not_change_results(isa, block_size, rows, cols):
    """Threads split whole tiles, so any thread count gives bit-identical output (more output
    than input channels: by output blocks up to SPMM_CHANNEL_SPLIT_MAX_HW positions)."""
    rng = np.random.default_rng(3)
    wd = make_weights(rng, rows, cols, "random", 0.2)
    W = fs.SparseMatrix.from_dense(wd, block_size=block_size)
    for shape in [(1, cols, 1, 1), (1, cols, 7, 7), (3, cols, 14, 14), (2, cols, 56, 57),
                  (1, cols, 40, 40), (1, cols, 91, 91)]:
        x = rng.standard_normal(shape).astype(np.float32)
        base = fs.sparse_conv1x1(x, W, activation="relu", num_threads=1)
        for t in (2, 3, 8):
            out = fs.sparse_conv1x1(x, W, activation="relu", num_threads=t)
            assert out.tobytes() == base.tobytes(), (shape, t)


@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
@given(data=st.data())
def test_sweeps_give_the_bytes_of_tiles(isa, block_size, data):
    """A 1x1 swept in groups of rows, each over all positions (spmm_sweep_rows), sums every
    output as tiles over all rows do: the same bytes on 1-3 threads (positions split from
    256 on), for groups that do not divide the rows, rows left over as blocks of one, empty
    rows, positions at the tile edges, input channels in several parts; and close to the
    reference."""
    from fastsparse import _dispatch, _kernels
    rows = data.draw(st.integers(1, 40))
    cols = data.draw(st.one_of(st.integers(1, 30), st.integers(190, 260)))
    hw = data.draw(st.sampled_from([1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200, 400, 784]))
    n, threads = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    sweep = data.draw(st.sampled_from([1, 3, 4, 8, 13, 64]))
    pattern = data.draw(st.sampled_from(["random", "empty_rows", "all_zero", "dense"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    wd = make_weights(rng, rows, cols, pattern, 0.3, block=block_size)
    W = fs.SparseMatrix.from_dense(wd, block_size=block_size)
    x = rng.standard_normal((n, cols, hw)).astype(np.float32)
    res = rng.standard_normal((n, rows, hw)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    kisa, k = _dispatch.spmm_kernel(fs.isa(), block_size, hw)
    part_bytes = data.draw(st.sampled_from([_kernels.SPMM_PART_BYTES, 1024]))
    outs = []
    saved, _kernels.SPMM_PART_BYTES = _kernels.SPMM_PART_BYTES, part_bytes
    try:
        for t, g in ((1, 0), (threads, sweep)):
            y = np.full((n, rows, hw), np.nan, np.float32)
            _kernels.spmm(kisa, k, W._packed, x, bias, res, y, -2.0, 2.0, t, g)
            outs.append(y)
    finally:
        _kernels.SPMM_PART_BYTES = saved
    assert outs[0].tobytes() == outs[1].tobytes(), (rows, cols, hw, n, threads, sweep)
    ref = fs.reference.sparse_conv1x1(x.reshape(n, cols, 1, hw), wd, bias=bias,
                                      residual=res.reshape(n, rows, 1, hw),
                                      activation=("clamp", -2.0, 2.0))
    np.testing.assert_allclose(outs[1].reshape(ref.shape), ref, rtol=1e-5, atol=1e-5 * cols)


def test_stand_alone_1x1_sweeps_blocks_that_stream_more_than_l2(monkeypatch):
    """sparse_conv1x1 sweeps a matrix in blocks of at least 4 rows whose input and output
    exceed L2 (with the plain variant), never single rows, 2x1 blocks or what fits in L2;
    the bytes are those of tiles."""
    from fastsparse import _dispatch
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 24, 24)).astype(np.float32)
    assert _dispatch.spmm_sweep_rows(4, 0) == 0
    for block_size in (1, 2, 4, 8):
        wd = make_weights(rng, 40, 16, "random", 0.3, block=block_size)
        outs, sweeps = [], []
        for l2 in (1 << 40, 4096):
            monkeypatch.setattr(_dispatch, "_l2", l2)
            W = fs.SparseMatrix.from_dense(wd, block_size=block_size)  # a fresh kernel cache
            outs.append(fs.sparse_conv1x1(x, W, activation="relu6").tobytes())
            (choice,) = W._kernel_cache.values()
            sweeps.append(choice[2])
            name = fs.spmm_kernels(_dispatch._NAMES[choice[0]])[choice[1]]
            assert not (choice[2] and "_prefetch" in name), name
        assert outs[0] == outs[1]
        assert sweeps == [0, _dispatch.SPMM_SWEEP_ROWS if block_size >= 4 else 0], block_size


def test_batch_matches_single_images(isa):
    rng = np.random.default_rng(5)
    W = fs.SparseMatrix.from_dense(make_weights(rng, 24, 16, "random", 0.3))
    x = rng.standard_normal((4, 16, 9, 11)).astype(np.float32)
    out = fs.sparse_conv1x1(x, W, num_threads=2)
    for i in range(4):
        assert out[i].tobytes() == fs.sparse_conv1x1(x[i:i + 1], W, num_threads=1)[0].tobytes()


def test_non_contiguous_and_misaligned_inputs_are_handled(isa):
    rng = np.random.default_rng(11)
    W = fs.SparseMatrix.from_dense(make_weights(rng, 8, 6, "random", 0.5))
    base = rng.standard_normal((2, 6, 10, 12)).astype(np.float32)
    ref = fs.reference.sparse_conv1x1(base, W)
    # A transposed view, a strided slice, a negatively strided view, an unaligned buffer.
    views = [np.ascontiguousarray(base.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
             np.repeat(base, 2, axis=3)[..., ::2],
             base[:, :, ::-1, :][:, :, ::-1, :]]
    raw = np.empty(base.nbytes + 1, dtype=np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=np.float32, count=base.size, offset=1)
    unaligned = unaligned.reshape(base.shape)
    unaligned[...] = base
    views.append(unaligned)
    for v in views:
        np.testing.assert_allclose(fs.sparse_conv1x1(v, W), ref, rtol=1e-5, atol=1e-5)


def test_nan_in_activations_propagates_through_nonzero_weights(isa):
    """A NaN meets only the non-zero weights of its channel: those outputs are NaN whatever
    the activation (the clamp must not hide it); channels with a zero weight there skip it,
    as any sparse product does, instead of computing 0 * NaN like the dense reference."""
    W = fs.SparseMatrix.from_dense(np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32))
    x = np.array([[[[np.nan, 1.0]], [[3.0, 4.0]]]], dtype=np.float32)
    for act in (None, "relu", "relu6", ("clamp", -1.0, 1.0)):
        out = fs.sparse_conv1x1(x, W, activation=act)
        assert np.isnan(out[0, 0, 0, 0]), act
        finite = np.array([[[[0.0, 1.0]], [[3.0, 4.0]]]], dtype=np.float32)
        ref = fs.reference.sparse_conv1x1(finite, W, activation=act)
        np.testing.assert_array_equal(out[0, 0, 0, 1], ref[0, 0, 0, 1])
        np.testing.assert_array_equal(out[0, 1], ref[0, 1])


@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
@given(n=st.integers(1, 40), cin=st.integers(1, 70), cout=st.integers(1, 40),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 2**32 - 1),
       activation=st.sampled_from([None, "relu", ("clamp", -1.0, 0.5)]),
       bias=st.booleans(), sparse=st.booleans())
def test_linear_matches_reference(isa, block_size, n, cin, cout, density, seed, activation,
                                  bias, sparse):
    rng = np.random.default_rng(seed)
    wd = make_weights(rng, cout, cin, "random", density) if density else np.zeros((cout, cin), np.float32)
    x = rng.standard_normal((n, cin)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    W = fs.SparseMatrix.from_dense(wd, block_size=block_size) if sparse else wd
    out = fs.linear(x, W, bias=b, activation=activation)
    ref = fs.reference.linear(x, wd, bias=b, activation=activation)
    assert out.shape == (n, cout) and out.dtype == np.float32 and out.flags.c_contiguous
    mag = np.abs(x.astype(np.float64)) @ np.abs(wd.astype(np.float64)).T
    extra = np.abs(b.astype(np.float64))[None, :] if b is not None else 0.0
    # The dense path is BLAS sgemm: its blocking may sum in any order, bounded by cin terms.
    assert_close_to_reference(out, ref, mag, extra, nnz_per_row=cin, what="linear")


@pytest.mark.parametrize("part_bytes", [4, 300, 4096])
@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
@given(data=st.data())
def test_k_blocked_parts_match_reference(isa, block_size, part_bytes, data, monkeypatch):
    """Inputs split in parts of input channels (K-blocking; 4 bytes = one channel per part):
    the first part adds bias and residual, the last one clamps."""
    from fastsparse import _kernels
    monkeypatch.setattr(_kernels, "SPMM_PART_BYTES", part_bytes)
    _check_spmm(data.draw(spmm_case(block_size)), block_size)


@pytest.mark.parametrize("block_size", [1, 4])
def test_k_blocked_results_do_not_depend_on_threads(isa, block_size, monkeypatch):
    from fastsparse import _kernels
    monkeypatch.setattr(_kernels, "SPMM_PART_BYTES", 1024)
    rng = np.random.default_rng(4)
    W = fs.SparseMatrix.from_dense(make_weights(rng, 37, 150, "random", 0.2),
                                   block_size=block_size)
    x = rng.standard_normal((2, 150, 13, 17)).astype(np.float32)
    base = fs.sparse_conv1x1(x, W, activation="relu6", num_threads=1)
    for t in (2, 3):
        assert fs.sparse_conv1x1(x, W, activation="relu6", num_threads=t).tobytes() \
            == base.tobytes()


@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
def test_split_parts_add_up_to_the_matrix(block_size):
    rng = np.random.default_rng(block_size)
    wd = make_weights(rng, 21, 30, "random", 0.3, block=block_size)
    wd[3] = 0
    W = fs.SparseMatrix.from_dense(wd, block_size=block_size)
    for count in (1, 2, 7, 30):
        parts = W._packed.split(count)
        assert len(parts) == count
        total = np.zeros_like(wd)
        for i, p in enumerate(parts):
            dense = fs.SparseMatrix(p, 0).to_dense()
            lo, hi = 30 * i // count, 30 * (i + 1) // count
            assert not dense[:, :lo].any() and not dense[:, hi:].any()
            assert p.nr == W._packed.nr
            total += dense
        assert total.tobytes() == wd.tobytes()
    with pytest.raises(ValueError, match="count must be in"):
        W._packed.split(31)


PREFETCHING = [k for k in KERNELS if "_prefetch__" in k[1]]


@pytest.mark.skipif(not PREFETCHING, reason="no _prefetch variant for this CPU's ISAs")
@pytest.mark.parametrize("isa_name,kernel,block_size", PREFETCHING,
                         ids=[k[1] for k in PREFETCHING])
def test_prefetch_variant_gives_the_bits_of_its_twin(isa_name, kernel, block_size):
    """A _prefetch variant only adds prefetches: on several full tiles and a tail, with a
    leftover channel, bias, residual and an active clamp, its output is byte for byte that
    of the variant without the suffix."""
    previous = fs.set_isa(isa_name)
    try:
        rng = np.random.default_rng(11)
        cout, cin = 3 * block_size + 1, 21
        W = fs.SparseMatrix.from_dense(make_weights(rng, cout, cin, "random", 0.3,
                                                    block=block_size), block_size=block_size)
        bias = rng.standard_normal(cout).astype(np.float32)
        x = rng.standard_normal((2, cin, 1, 3 * 128 + 5)).astype(np.float32)
        res = rng.standard_normal((2, cout, 1, x.shape[3])).astype(np.float32)
        a, b = (fs.sparse_conv1x1(x, W, bias=bias, residual=res, activation=("clamp", -1, 1),
                                  kernel=k).tobytes()
                for k in (kernel, kernel.replace("_prefetch__", "__")))
        assert a == b
    finally:
        fs.set_isa(previous)
