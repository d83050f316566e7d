"""CHW companion ops: depthwise convolution, the dense first-layer convolution, global
average pooling and elementwise add. Validation and routing here; the work in the C kernels
(dwconv_impl.h, chw_impl.h).

What is fast and what is only correct:
- depthwise_conv2d: every supported shape (k in {3, 5}, stride in {1, 2}, any padding, any
  H, W >= 1) runs the SIMD kernels.
- conv2d: 3x3, stride 1 or 2, any Cin and Cout, runs the SIMD kernel. It is built for the
  first layer (Cin = 3: the input rows of all channels stay in L1); with large Cin it stays
  correct but stages 3 * Cin padded rows per output row and is not cache-blocked, so a
  dense im2col/GEMM would be faster. Other kernel sizes, strides or groups are rejected
  with a ValueError.
"""
import numbers

import numpy as np

from . import _dispatch, _kernels
from ._validate import activation_bounds, bias_vector, count, float32_array, weights_float32
from .ops import _output


# Padding beyond this is refused: it only adds rows and columns of bias, and an unbounded one
# (padding=2**63) would overflow the sizes the kernel layer computes with (which refuses it
# too).
MAX_PADDING = _kernels.MAX_PADDING


def padding_tuple(padding, name="padding"):
    """(top, left, bottom, right) from an int (symmetric) or a 4-tuple of ints in
    [0, MAX_PADDING]."""
    if isinstance(padding, bool):
        raise TypeError(f"{name} must be an int or a 4-tuple (top, left, bottom, right) of "
                        f"ints, got {padding!r}")
    if isinstance(padding, numbers.Integral):
        p = _pad(padding, name)
        return p, p, p, p
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        return tuple(_pad(p, f"{name}[{i}]") for i, p in enumerate(padding))
    raise TypeError(f"{name} must be an int or a 4-tuple (top, left, bottom, right) of ints, "
                    f"got {padding!r}")


def _pad(p, name):
    p = count(p, name, minimum=0)
    if p > MAX_PADDING:
        raise ValueError(f"{name} must be <= {MAX_PADDING}, got {p}")
    return p


def stride_value(stride, name="stride"):
    s = count(stride, name)
    if s not in (1, 2):
        raise ValueError(f"{name} must be 1 or 2, got {s}")
    return s


def output_size(size, k, stride, pad_a, pad_b, axis):
    """floor((size + pads - k) / stride) + 1, which must be >= 1."""
    span = size + pad_a + pad_b
    if span < k:
        raise ValueError(f"x: {axis} = {size} plus padding {pad_a} + {pad_b} is smaller than "
                         f"the {k}x{k} kernel; the output would be empty")
    return (span - k) // stride + 1


def depthwise_conv2d(x, w, bias=None, stride=1, padding=1, activation=None, num_threads=None,
                     out=None):
    """Depthwise convolution of NCHW float32 x with w of shape (C, 1, k, k), k in {3, 5}.

    y[n, c] = act(sum_{ky,kx} w[c, 0, ky, kx] * x_padded[n, c, oy*s + ky, ox*s + kx] + bias[c])

    stride     1 or 2.
    padding    int (symmetric, PyTorch) or (top, left, bottom, right): TensorFlow/Keras "same"
               with stride 2 on an even size is (0, 0, 1, 1) for k = 3, (1, 1, 2, 2) for k = 5.
    bias       None or (C,) real numbers; activation None | "relu" | "relu6" | ("clamp", lo, hi).
    Output size per axis: (size + pads - k) // stride + 1, which must be >= 1 (an image smaller
    than the kernel works when the padding makes up the difference).
    out        None, or a float32 C-contiguous array of the output shape, not overlapping x,
               w or bias.
    """
    x = float32_array(x, "x", ndim=4)
    n, c, h, wd = x.shape
    w = weights_float32(w, "w", 4, "(C, 1, k, k)")
    k = w.shape[2]
    if w.shape[1] != 1 or w.shape[3] != k:
        raise ValueError(f"w must have shape (C, 1, k, k), got {w.shape}")
    if k not in (3, 5):
        raise ValueError(f"w: kernel size must be 3 or 5, got {k}x{k}")
    if w.shape[0] != c:
        raise ValueError(f"w has {w.shape[0]} channels but x has {c} (w.shape={w.shape})")
    s = stride_value(stride)
    pt, pl, pb, pr = padding_tuple(padding)
    lo, hi = activation_bounds(activation)
    b = bias_vector(bias, c)
    if h < 1 or wd < 1:
        raise ValueError(f"x must have H, W >= 1, got shape {x.shape}")
    oh = output_size(h, k, s, pt, pb, "H")
    ow = output_size(wd, k, s, pl, pr, "W")
    y = _output(out, (n, c, oh, ow), (("x", x), ("w", w), ("bias", b)))
    isa = _dispatch.isa()
    _kernels.dwconv2d(_dispatch.isa_id(isa), x, w.reshape(c, k * k), b, y, k, s, pt, pl, lo, hi,
                      _dispatch.resolve_threads(num_threads))
    return y


def _layout(layout):
    if not isinstance(layout, str):
        raise TypeError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def conv2d(x, w, bias=None, stride=2, padding=1, activation=None, layout="NCHW",
           num_threads=None, out=None):
    """Dense 3x3 convolution (the first layer of a MobileNet), output NCHW float32.

    x          float32 (N, Cin, H, W), or (N, H, W, Cin) with layout="NHWC": channels-last
               images are read in place, no transpose.
    w          (Cout, Cin, 3, 3) real numbers (PyTorch layout); only 3x3 is supported.
    stride     1 or 2; padding int or (top, left, bottom, right); bias, activation as in
               depthwise_conv2d. Fast for small Cin (3); correct but not tuned for large Cin.
    out        None, or a float32 C-contiguous (N, Cout, OH, OW) array, not overlapping x, w
               or bias.
    """
    layout = _layout(layout)
    x = float32_array(x, "x", ndim=4)
    if layout == "NHWC":
        n, h, wd, c = x.shape
    else:
        n, c, h, wd = x.shape
    w = weights_float32(w, "w", 4, "(Cout, Cin, 3, 3)")
    cout = w.shape[0]
    if w.shape[2:] != (3, 3):
        raise ValueError(f"w: conv2d supports 3x3 kernels only (the first layer), got "
                         f"{w.shape[2]}x{w.shape[3]}")
    if w.shape[1] != c:
        raise ValueError(f"w expects {w.shape[1]} input channels but x ({layout}) has {c} "
                         f"(w.shape={w.shape}, x.shape={x.shape})")
    if cout < 1 or c < 1:
        raise ValueError(f"w must have Cout, Cin >= 1, got {w.shape}")
    s = stride_value(stride)
    pt, pl, pb, pr = padding_tuple(padding)
    lo, hi = activation_bounds(activation)
    b = bias_vector(bias, cout)
    if h < 1 or wd < 1:
        raise ValueError(f"x must have H, W >= 1, got shape {x.shape}")
    oh = output_size(h, 3, s, pt, pb, "H")
    ow = output_size(wd, 3, s, pl, pr, "W")
    y = _output(out, (n, cout, oh, ow), (("x", x), ("w", w), ("bias", b)))
    isa = _dispatch.isa()
    _kernels.conv2d(_dispatch.isa_id(isa), x, layout == "NHWC", w.reshape(cout, c * 9), b, y,
                    s, pt, pl, lo, hi, _dispatch.resolve_threads(num_threads))
    return y


def global_avg_pool(x, out=None):
    """(N, C, H, W) float32 -> (N, C) float32: the mean over each channel's H*W positions.
    out: None, or a float32 C-contiguous (N, C) array."""
    x = float32_array(x, "x", ndim=4)
    n, c, h, wd = x.shape
    if h < 1 or wd < 1:
        raise ValueError(f"x must have H, W >= 1, got shape {x.shape}")
    y = _output(out, (n, c), (("x", x),))
    _kernels.gavgpool(_dispatch.isa_id(_dispatch.isa()), x.reshape(n, c, h * wd), y)
    return y


def add(a, b, activation=None, num_threads=None):
    """act(a + b) for float32 arrays of the same shape (any shape); a new array."""
    a = float32_array(a, "a")
    b = float32_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got a {a.shape} and b {b.shape}")
    lo, hi = activation_bounds(activation)
    y = np.empty(a.shape, dtype=np.float32)
    _kernels.vadd(_dispatch.isa_id(_dispatch.isa()), a.reshape(-1), b.reshape(-1),
                  y.reshape(-1), lo, hi, _dispatch.resolve_threads(num_threads))
    return y


def chw_kernels(isa=None):
    """Names of the CHW kernels of `isa` (default: the active one)."""
    isa = _dispatch.isa() if isa is None else _dispatch._check_isa(isa, "isa")
    return _kernels.chw_kernels(_dispatch.isa_id(isa))
