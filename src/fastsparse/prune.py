"""One-shot magnitude pruning (for trying sparsity out: real sparse models are pruned during
training and already contain their zeros)."""
import numbers

import numpy as np

from ._validate import count, finite_float32


def _check_sparsity(sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a real number in [0, 1], got {type(sparsity).__name__}")
    try:
        s = float(sparsity)
    except OverflowError:  # an int beyond the double range
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}") from None
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return s


def magnitude(w, sparsity, block_size=1):
    """A float32 copy of `w` with at least round(sparsity * w.size) entries exactly zero.

    Rows (axis 0, output channels) are grouped in blocks of `block_size` (the last block may be
    smaller); one block column (block rows x one entry of the flattened other axes) is kept or
    pruned whole, smallest root-mean-square first, until the target count is reached. Ties
    break by position, so the result is deterministic.
    """
    w = finite_float32(w, "w")
    s = _check_sparsity(sparsity)
    b = count(block_size, "block_size")
    if w.ndim < 1:
        raise ValueError("w must have at least one dimension")
    out = w.copy()
    if w.size == 0:
        return out
    rows = w.shape[0]
    b = min(b, rows)  # a block taller than w is one block of all rows (and keeps sizes small)
    flat = out.reshape(rows, -1)
    cols = flat.shape[1]
    target = int(round(s * w.size))
    # Group rows into blocks; pad the last block with zeros for the norm only.
    nblocks = -(-rows // b)
    padded = np.zeros((nblocks * b, cols), dtype=np.float64)
    padded[:rows] = flat
    sizes = np.full(nblocks, b)
    sizes[-1] = rows - (nblocks - 1) * b
    sq = (padded.reshape(nblocks, b, cols) ** 2).sum(axis=1) / sizes[:, None]
    order = np.argsort(sq.reshape(-1), kind="stable")
    pruned_per = np.repeat(sizes, cols)[order]  # entries removed by each block column, in order
    k = int(np.searchsorted(np.cumsum(pruned_per), target))  # first index reaching the target
    drop = order[: min(k + 1, order.size)] if target > 0 else order[:0]
    mask = np.zeros(nblocks * cols, dtype=bool)
    mask[drop] = True
    mask = np.repeat(mask.reshape(nblocks, cols), b, axis=0)[:rows]
    flat[mask] = 0.0
    return out
