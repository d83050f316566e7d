"""The functional API: validation and routing in Python, the work in the C kernels."""
import numpy as np

from . import _dispatch, _kernels
from ._validate import (activation_bounds, bias_vector, float32_array, line_aligned_empty,
                        weights_float32)
from .sparse import SparseMatrix


def _sparse_matrix(W, name="W"):
    if not isinstance(W, SparseMatrix):
        raise TypeError(f"{name} must be a fastsparse.SparseMatrix (use SparseMatrix.from_dense), "
                        f"got {type(W).__name__}")
    return W


def _output(out, shape, inputs):
    """A fresh output array, or the caller's `out` after checking it can be written safely."""
    if out is None:
        return line_aligned_empty(shape)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError("out must be a numpy.ndarray of float32")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if not (out.flags.c_contiguous and out.flags.aligned and out.flags.writeable):
        raise ValueError("out must be C-contiguous, aligned and writeable")
    for name, a in inputs:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"out must not overlap {name}")
    return out


# The kernels address an input row by an int32 byte offset from the image's first row.
_IMAGE_BYTES_LIMIT = 2**31 - 1


def _check_image_size(W, hw, name):
    if W.shape[1] * hw * 4 > _IMAGE_BYTES_LIMIT:
        raise ValueError(
            f"{name}: {W.shape[1]} input channels x {hw} positions exceed the 2 GiB per-image "
            "limit of the packed format (int32 byte offsets); split the image or the batch")


def _spmm(x3, W, bias, residual3, lo, hi, num_threads, kernel, out=None):
    """out (N, rows, HW) = clamp(W @ x3[n] + bias + residual3[n]) with the active ISA."""
    isa, hw = _dispatch.isa(), x3.shape[2]
    if out is None:
        out = line_aligned_empty((x3.shape[0], W.shape[0], hw))
    # The tile follows the shape only, never the arrays' addresses: tiles may sum in another
    # order (unrolling, input-channel parts), and a result must not depend on where NumPy put
    # the input.
    key = (isa, kernel, hw)
    choice = W._kernel_cache.get(key)
    if choice is None:
        choice = _dispatch.spmm_step_kernel(isa, W.block_size, hw, kernel,
                                            out_bytes=4 * W.shape[0] * hw,
                                            in_bytes=4 * W.shape[1] * hw)
        W._kernel_cache[key] = choice
    _kernels.spmm(choice[0], choice[1], W._packed, x3, bias, residual3, out, lo, hi,
                  _dispatch.resolve_threads(num_threads), choice[2])
    return out


def sparse_conv1x1(x, W, bias=None, activation=None, residual=None, num_threads=None,
                   kernel=None, out=None):
    """1x1 convolution with sparse weights on NCHW float32 input.

    y[n, o] = act(sum_i W[o, i] * x[n, i] + bias[o] + residual[n, o]), everything after the
    product fused into the kernel's single pass over the output.

    x          float32 (N, Cin, H, W); a non-contiguous or misaligned array is copied first.
    W          SparseMatrix of shape (Cout, Cin).
    bias       None or (Cout,) real numbers.
    activation None | "relu" | "relu6" | ("clamp", lo, hi), applied after the residual.
    residual   None or float32 (N, Cout, H, W), added before the activation.
    num_threads  None (fastsparse.get_num_threads()) or an int >= 1.
    kernel     None (chosen per layer) or the name of a variant from fastsparse.spmm_kernels().
    out        None, or a float32 C-contiguous (N, Cout, H, W) array to write the result into
               (it must not overlap x, residual or bias); returned.

    Zero weights are skipped, not multiplied: a NaN or inf in x reaches the outputs whose
    weight on that channel is non-zero (or stored inside a block), where the dense product
    would make every output NaN. For finite x the two agree.
    """
    W = _sparse_matrix(W)
    if isinstance(x, np.ndarray) and x.ndim == 4:
        _check_image_size(W, x.shape[2] * x.shape[3], "x")  # before x may be copied
    x = float32_array(x, "x", ndim=4)
    cout, cin = W.shape
    n, c, h, w = x.shape
    if c != cin:
        raise ValueError(f"x has {c} channels but W expects {cin} (W.shape={W.shape})")
    lo, hi = activation_bounds(activation)
    b = bias_vector(bias, cout)
    r3 = None
    if residual is not None:
        residual = float32_array(residual, "residual", ndim=4)
        if residual.shape != (n, cout, h, w):
            raise ValueError(f"residual must have shape {(n, cout, h, w)}, got {residual.shape}")
        r3 = residual.reshape(n, cout, h * w)
    y = _output(out, (n, cout, h, w), (("x", x), ("residual", residual), ("bias", b)))
    _spmm(x.reshape(n, c, h * w), W, b, r3, lo, hi, num_threads, kernel,
          y.reshape(n, cout, h * w))
    return y


def linear(x2d, W, bias=None, activation=None, num_threads=None):
    """y = act(x2d @ W.T + bias) for x2d (N, Cin) float32 and W a SparseMatrix or a dense
    (Cout, Cin) array of finite real numbers (as SparseMatrix.from_dense takes); returns
    (N, Cout) float32. Sparse W runs the spmm kernels with the batch as the spatial axis."""
    if isinstance(W, SparseMatrix) and isinstance(x2d, np.ndarray) and x2d.ndim == 2:
        _check_image_size(W, x2d.shape[0], "x2d")  # the batch is the spatial axis; before a copy
    x2d = float32_array(x2d, "x2d", ndim=2)
    lo, hi = activation_bounds(activation)
    if isinstance(W, SparseMatrix):
        cout, cin = W.shape
        if x2d.shape[1] != cin:
            raise ValueError(f"x2d has {x2d.shape[1]} features but W expects {cin} (W.shape={W.shape})")
        b = bias_vector(bias, cout)
        xt = np.ascontiguousarray(x2d.T)[None]  # (1, Cin, N): features become channel rows
        return np.ascontiguousarray(_spmm(xt, W, b, None, lo, hi, num_threads, None)[0].T)
    if not isinstance(W, np.ndarray):
        raise TypeError(f"W must be a SparseMatrix or a numpy.ndarray, got {type(W).__name__}")
    _dispatch.resolve_threads(num_threads)  # checked as on the sparse path (NumPy's sgemm runs)
    Wd = weights_float32(W, "W", 2, "(Cout, Cin)")
    if x2d.shape[1] != Wd.shape[1]:
        raise ValueError(f"x2d has {x2d.shape[1]} features but W expects {Wd.shape[1]} (W.shape={Wd.shape})")
    b = bias_vector(bias, Wd.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN as the kernels give them
        y = x2d @ Wd.T
    if b is not None:
        y += b
    if lo != -np.inf or hi != np.inf:
        np.clip(y, lo, hi, out=y)
    return y
