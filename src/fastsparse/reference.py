"""Pure-NumPy twins of the public functions: same names, same semantics, float64 accumulation.

The oracle of the property tests, and a readable statement of what each op computes. Slow by
design; nothing here calls the compiled kernels.
"""
import types

import numpy as np

from ._validate import activation_bounds, count, finite_float32


def _dense(W):
    """A SparseMatrix (anything with to_dense()) or an array, as float64 (rows, cols)."""
    w = W.to_dense() if hasattr(W, "to_dense") else np.asarray(W)
    return np.asarray(w, dtype=np.float64)


def apply_activation(y, activation):
    lo, hi = activation_bounds(activation)
    if lo == -np.inf and hi == np.inf:
        return y
    return np.clip(y, lo, hi)


def sparse_conv1x1(x, W, bias=None, activation=None, residual=None, num_threads=None,
                   kernel=None, out=None):
    w = _dense(W)
    x = np.asarray(x, dtype=np.float64)
    n, c, h, wd = x.shape
    y = np.einsum("oc,ncp->nop", w, x.reshape(n, c, h * wd)).reshape(n, w.shape[0], h, wd)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    if residual is not None:
        y = y + np.asarray(residual, dtype=np.float64)
    y = apply_activation(y, activation).astype(np.float32)
    if out is not None:
        out[...] = y
        return out
    return y


def linear(x2d, W, bias=None, activation=None, num_threads=None):
    y = np.asarray(x2d, dtype=np.float64) @ _dense(W).T
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return apply_activation(y, activation).astype(np.float32)


def _conv_geometry(x, w, stride, padding, k_allowed):
    from .chw import output_size, padding_tuple, stride_value
    s = stride_value(stride)
    pt, pl, pb, pr = padding_tuple(padding)
    k = w.shape[2]
    if k not in k_allowed or w.shape[3] != k:
        raise ValueError(f"w: kernel size must be one of {k_allowed}, got {w.shape[2:]}")
    h, wd = x.shape[2], x.shape[3]
    oh = output_size(h, k, s, pt, pb, "H")
    ow = output_size(wd, k, s, pl, pr, "W")
    # Zero padding; extra padding at the bottom/right beyond what the output uses is harmless.
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    return k, s, oh, ow, xp


def _taps(xp, k, s, oh, ow):
    """xp[..., oy*s + ky, ox*s + kx] for every tap: shape (k, k, N, C, oh, ow)."""
    return np.stack([np.stack([xp[:, :, ky:ky + s * (oh - 1) + 1:s, kx:kx + s * (ow - 1) + 1:s]
                               for kx in range(k)]) for ky in range(k)])


def depthwise_conv2d(x, w, bias=None, stride=1, padding=1, activation=None, num_threads=None):
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    k, s, oh, ow, xp = _conv_geometry(x, w, stride, padding, (3, 5))
    y = np.einsum("yxncij,cyx->ncij", _taps(xp, k, s, oh, ow), w[:, 0])
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return apply_activation(y, activation).astype(np.float32)


def conv2d(x, w, bias=None, stride=2, padding=1, activation=None, layout="NCHW",
           num_threads=None):
    x = np.asarray(x, dtype=np.float64)
    if layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    w = np.asarray(w, dtype=np.float64)
    k, s, oh, ow, xp = _conv_geometry(x, w, stride, padding, (3,))
    y = np.einsum("yxncij,ocyx->noij", _taps(xp, k, s, oh, ow), w)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return apply_activation(y, activation).astype(np.float32)


def global_avg_pool(x):
    return np.asarray(x, dtype=np.float64).mean(axis=(2, 3)).astype(np.float32)


def add(a, b, activation=None, num_threads=None):
    y = np.asarray(a, dtype=np.float64) + np.asarray(b, dtype=np.float64)
    return apply_activation(y, activation).astype(np.float32)


def _magnitude(w, sparsity, block_size=1):
    """Block magnitude pruning, written as the plain loop over blocks (see fastsparse.prune)."""
    w = finite_float32(w, "w")
    b = count(block_size, "block_size")
    out = w.copy()
    if w.size == 0:
        return out
    flat = out.reshape(w.shape[0], -1) if w.ndim else out.reshape(1, 1)
    target = int(round(float(sparsity) * w.size))
    blocks = []  # (rms, position, row slice, column)
    for pos_r, r0 in enumerate(range(0, flat.shape[0], b)):
        rows = slice(r0, min(r0 + b, flat.shape[0]))
        for col in range(flat.shape[1]):
            vals = flat[rows, col].astype(np.float64)
            blocks.append((float(np.mean(vals * vals)), pos_r * flat.shape[1] + col, rows, col))
    blocks.sort(key=lambda t: (t[0], t[1]))
    removed = 0
    for _, _, rows, col in blocks:
        if removed >= target:
            break
        flat[rows, col] = 0.0
        removed += rows.stop - rows.start
    return out


prune = types.SimpleNamespace(magnitude=_magnitude)


from ._reference_nets import mobilenet_v1, mobilenet_v2  # noqa: E402  (dense networks)
