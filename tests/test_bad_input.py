"""Bad input raises ValueError/TypeError naming the argument; nothing crashes."""
import numpy as np
import pytest

import fastsparse as fs
from fastsparse.models import random_mobilenet_v1_weights

W = fs.SparseMatrix.from_dense(np.eye(4, 3, dtype=np.float32))
X = np.ones((1, 3, 5, 5), dtype=np.float32)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fs.sparse_conv1x1(X.astype(np.float64), W), TypeError, "x must have dtype float32"),
    (lambda: fs.sparse_conv1x1(X.astype(np.float16), W), TypeError, "x must have dtype"),
    (lambda: fs.sparse_conv1x1(X.tolist(), W), TypeError, "x must be a numpy.ndarray"),
    (lambda: fs.sparse_conv1x1(X[0], W), ValueError, "x must have 4 dimensions"),
    (lambda: fs.sparse_conv1x1(np.ones((1, 4, 5, 5), np.float32), W), ValueError, "channels"),
    (lambda: fs.sparse_conv1x1(X, np.eye(4, 3, dtype=np.float32)), TypeError, "W must be a fastsparse.SparseMatrix"),
    (lambda: fs.sparse_conv1x1(X, W, bias=np.ones(3)), ValueError, "bias must have shape (4,)"),
    (lambda: fs.sparse_conv1x1(X, W, bias=np.array(["a"] * 4)), TypeError, "bias must hold real numbers"),
    (lambda: fs.sparse_conv1x1(X, W, bias=np.ones(4, bool)), TypeError, "bias"),
    (lambda: fs.sparse_conv1x1(X, W, activation="gelu"), ValueError, "activation must be None"),
    (lambda: fs.sparse_conv1x1(X, W, activation=("clamp", 1.0, 0.0)), ValueError, "lo <= hi"),
    (lambda: fs.sparse_conv1x1(X, W, activation=("clamp", float("nan"), 0.0)), ValueError, "lo <= hi"),
    (lambda: fs.sparse_conv1x1(X, W, activation=("clamp", "a", 0.0)), TypeError, "clamp bounds"),
    (lambda: fs.sparse_conv1x1(X, W, activation=("clamp", 0.0)), ValueError, "activation"),
    (lambda: fs.sparse_conv1x1(X, W, residual=np.ones((1, 3, 5, 5), np.float32)), ValueError, "residual must have shape"),
    (lambda: fs.sparse_conv1x1(X, W, residual=np.ones((1, 4, 5, 5))), TypeError, "residual must have dtype float32"),
    (lambda: fs.sparse_conv1x1(X, W, num_threads=0), ValueError, "num_threads must be >= 1"),
    (lambda: fs.sparse_conv1x1(X, W, num_threads=-1), ValueError, "num_threads must be >= 1"),
    (lambda: fs.sparse_conv1x1(X, W, num_threads=1.5), TypeError, "num_threads must be an int"),
    (lambda: fs.sparse_conv1x1(X, W, num_threads=True), TypeError, "num_threads must be an int"),
    (lambda: fs.sparse_conv1x1(X, W, kernel="nope"), ValueError, "kernel 'nope'"),
    (lambda: fs.sparse_conv1x1(X, W, kernel=3), TypeError, "kernel must be a str"),
    (lambda: fs.linear(np.ones((2, 4), np.float32), W), ValueError, "x2d has 4 features"),
    (lambda: fs.linear(np.ones((2, 3), np.float64), W), TypeError, "x2d must have dtype float32"),
    (lambda: fs.linear(np.ones((2, 3), np.float32), "W"), TypeError, "W must be a SparseMatrix or"),
    (lambda: fs.linear(np.ones(3, np.float32), W), ValueError, "x2d must have 2 dimensions"),
    (lambda: fs.linear(np.ones((2, 3), np.float32), np.array([[1.0, np.nan, 0.0]], np.float32)),
     ValueError, "W must be finite"),
    (lambda: fs.linear(np.ones((2, 3), np.float32), np.ones(3)), ValueError, "W must have shape"),
    (lambda: fs.SparseMatrix.from_dense(np.array([[1.0, np.nan]])), ValueError, "w2d must be finite"),
    (lambda: fs.SparseMatrix.from_dense(np.array([[1.0, np.inf]])), ValueError, "w2d must be finite"),
    (lambda: fs.SparseMatrix.from_dense(np.array([[1e39]])), ValueError, "w2d must be finite"),
    (lambda: fs.SparseMatrix.from_dense(np.ones(3)), ValueError, "w2d must be 2-D"),
    (lambda: fs.SparseMatrix.from_dense(np.ones((0, 3))), ValueError, "at least one row"),
    (lambda: fs.SparseMatrix.from_dense(np.ones((2, 3), complex)), TypeError, "w2d must hold real"),
    (lambda: fs.SparseMatrix.from_dense(np.ones((2, 3), object)), TypeError, "w2d must hold real"),
    (lambda: fs.SparseMatrix.from_dense("abc"), TypeError, "w2d"),
    (lambda: fs.SparseMatrix.from_dense(np.ones((2, 3)), block_size=3), ValueError, "block_size must be one of"),
    (lambda: fs.SparseMatrix.from_dense(np.ones((2, 3)), block_size=True), ValueError, "block_size must be one of"),
    (lambda: fs.prune.magnitude(np.ones(4), -0.1), ValueError, "sparsity must be in [0, 1]"),
    (lambda: fs.prune.magnitude(np.ones(4), 1.5), ValueError, "sparsity must be in [0, 1]"),
    (lambda: fs.prune.magnitude(np.ones(4), float("nan")), ValueError, "sparsity must be in [0, 1]"),
    (lambda: fs.prune.magnitude(np.ones(4), "0.5"), TypeError, "sparsity must be a real number"),
    (lambda: fs.prune.magnitude(np.ones(4), 0.5, block_size=0), ValueError, "block_size must be >= 1"),
    (lambda: fs.prune.magnitude(np.array([1.0, np.nan]), 0.5), ValueError, "w must be finite"),
    (lambda: fs.set_num_threads(0), ValueError, "n must be >= 1"),
    (lambda: fs.set_isa("avx1024"), ValueError, "isa='avx1024' is not one of"),
    (lambda: fs.set_isa(None), TypeError, "isa must be a str"),
])
def test_bad_input_raises_clear_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


V1_WEIGHTS = random_mobilenet_v1_weights(width=0.25, num_classes=4)
NET = fs.MobileNetV1.from_dense(V1_WEIGHTS, sparsity=0.5)
IMG = np.zeros((1, 3, 32, 32), np.float32)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: setattr(NET, "num_threads", "2"), TypeError, "num_threads must be an int"),
    (lambda: setattr(NET, "num_threads", 0), ValueError, "num_threads must be >= 1"),
    (lambda: fs.MobileNetV1.from_dense(V1_WEIGHTS, num_threads=-3), ValueError,
     "num_threads must be >= 1"),
    (lambda: NET.summary((0, 0)), ValueError, "input_size must be >= 1"),
    (lambda: NET.summary((-5, 32)), ValueError, "input_size must be >= 1"),
    (lambda: NET.summary((8, 8)), ValueError, "too small for mobilenet_v1"),
    (lambda: NET.summary(224), TypeError, "input_size must be (H, W)"),
    (lambda: NET.summary(batch=0), ValueError, "batch must be >= 1"),
    (lambda: NET.profile(IMG, repeat=0), ValueError, "repeat must be >= 1"),
    (lambda: NET.profile(IMG, repeat=2.0), TypeError, "repeat must be an int"),
    (lambda: NET(IMG, layout=np.array(["NCHW"])), TypeError, "layout must be 'NCHW' or"),
    (lambda: NET(IMG, layout="nchw"), ValueError, "layout must be 'NCHW' or"),
])
def test_bad_network_arguments_raise_clear_errors(call, exc, words):
    NET(IMG), NET(IMG)  # a kept workspace: the fast path sees the arguments first
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)
    assert NET.num_threads is None


def test_kernel_with_wrong_block_size_is_refused():
    W2 = fs.SparseMatrix.from_dense(np.ones((4, 3), np.float32), block_size=2)
    name = [k for k in fs.spmm_kernels() if k.split("__")[0].endswith("x1")][0]
    with pytest.raises(ValueError, match="needs block_size 1"):
        fs.sparse_conv1x1(X, W2, kernel=name)


def test_zero_sized_batch_and_image_return_empty():
    assert fs.sparse_conv1x1(np.ones((0, 3, 5, 5), np.float32), W).shape == (0, 4, 5, 5)
    assert fs.sparse_conv1x1(np.ones((2, 3, 0, 5), np.float32), W).shape == (2, 4, 0, 5)
    assert fs.linear(np.ones((0, 3), np.float32), W).shape == (0, 4)


def test_private_kernel_layer_checks_its_arguments():
    """The Cython layer keeps the kernels in bounds even if called directly."""
    from fastsparse import _kernels
    isa = fs._dispatch.isa_id(fs.isa())
    out = np.empty((1, 4, 25), np.float32)
    x = X.reshape(1, 3, 25)
    with pytest.raises(ValueError):
        _kernels.spmm(isa, 10**6, W._packed, x, None, None, out, 0.0, 1.0, 1)
    with pytest.raises(ValueError):
        _kernels.spmm(isa, 0, W._packed, np.ones((1, 5, 25), np.float32), None, None, out, 0.0, 1.0, 1)
    with pytest.raises(ValueError):
        _kernels.spmm(isa, 0, W._packed, x, np.ones(2, np.float32), None, out, 0.0, 1.0, 1)
    with pytest.raises(ValueError):
        _kernels.spmm(isa, 0, W._packed, x, None, np.ones((1, 4, 24), np.float32), out, 0.0, 1.0, 1)
    with pytest.raises(ValueError):
        _kernels.spmm(isa, 0, W._packed, x, None, None, np.empty((1, 4, 24), np.float32), 0.0, 1.0, 1)
    with pytest.raises(ValueError):
        _kernels.SpmmWeights([1.0], [1], [5], 1, 3, 1)  # column out of range
    with pytest.raises(ValueError):
        _kernels.SpmmWeights([1.0, 2.0], [2], [1, 1], 1, 3, 1)  # not increasing
    with pytest.raises(ValueError):
        _kernels.SpmmWeights([1.0], [2], [0, 1], 1, 3, 1)  # too few values
    with pytest.raises(ValueError, match="2 GiB"):
        W._packed.offsets(2**29)
