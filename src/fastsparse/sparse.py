"""SparseMatrix: the packed, block-sparse weights of a 1x1 convolution or a linear layer."""
import numbers

import numpy as np

from . import _kernels
from ._validate import finite_float32

BLOCK_SIZES = (1, 2, 4, 8)
# A block of `b` rows is chosen automatically only if its non-zero blocks are at least this
# full: a stored block's zeros cost FMAs, and at 90 % fill the reuse of each activation load
# across b rows outweighs the ~11 % wasted work (XNNPACK uses the same bar).
AUTO_BLOCK_FILL = 0.9


def _block_fill(mask, b):
    """Fraction of the entries of the non-zero b-row blocks (full blocks only) that are set."""
    rows = mask.shape[0] // b * b
    if rows == 0:
        return 0.0
    blocks = mask[:rows].reshape(rows // b, b, -1)
    nonzero_blocks = int(blocks.any(axis=1).sum())
    if nonzero_blocks == 0:
        return 0.0
    return int(blocks.sum()) / (nonzero_blocks * b)


def choose_block_size(mask):
    """The largest block size whose blocks are nearly full (see AUTO_BLOCK_FILL), else 1."""
    for b in (8, 4, 2):
        if mask.shape[0] >= b and _block_fill(mask, b) >= AUTO_BLOCK_FILL:
            return b
    return 1


class SparseMatrix:
    """Sparse (rows = output channels) x (cols = input channels) matrix, packed for the kernels.

    Rows are grouped in blocks of `block_size`; a block stores every input column in which any
    of its rows is non-zero (the block's zeros there included). Rows left over when
    rows % block_size != 0 are stored as blocks of one. Built once; immutable.
    """

    __slots__ = ("_packed", "_shape", "_nnz", "_kernel_cache")

    def __init__(self, packed, nnz):
        self._packed = packed
        self._shape = (packed.rows, packed.cols)
        self._nnz = nnz
        self._kernel_cache = {}

    @classmethod
    def from_dense(cls, w2d, block_size=None):
        """Pack a dense matrix; its zeros define the pattern.

        w2d: (rows, cols) real array, or a (rows, cols, 1, 1) 1x1-convolution weight.
        block_size: 1, 2, 4, 8, or None to choose from the pattern (choose_block_size).
        """
        shape = getattr(w2d, "shape", None)
        if isinstance(shape, tuple) and len(shape) >= 2 and max(shape[:2]) >= 2**31:
            # Before any copy: a (1, 2**31) broadcast view would otherwise be materialized.
            raise ValueError(f"w2d has shape {shape}: rows and cols must be < 2**31 (the "
                             "packed format's int32 indices)")
        w = finite_float32(w2d, "w2d")
        if w.ndim == 4 and w.shape[2:] == (1, 1):
            w = w.reshape(w.shape[:2])
        if w.ndim != 2:
            raise ValueError(f"w2d must be 2-D (rows, cols) or (rows, cols, 1, 1), got shape {w.shape}")
        rows, cols = w.shape
        if rows < 1 or cols < 1:
            raise ValueError(f"w2d must have at least one row and one column, got shape {w.shape}")
        mask = w != 0
        if block_size is None:
            block_size = choose_block_size(mask)
        elif (isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral)
              or int(block_size) not in BLOCK_SIZES):  # (an array must not reach `in`)
            raise ValueError(f"block_size must be one of {BLOCK_SIZES} or None, got {block_size!r}")
        b = int(block_size)
        nfull = rows // b
        # Full blocks: (block, row-in-block, col) -> columns where any row is set.
        wb = w[: nfull * b].reshape(nfull, b, cols)
        bmask = mask[: nfull * b].reshape(nfull, b, cols).any(axis=1)
        blk, col = np.nonzero(bmask)  # block-major, columns increasing
        values_full = wb[blk, :, col].reshape(-1)  # per non-zero column, its b row values
        # Leftover rows as blocks of one.
        rest = w[nfull * b:]
        rblk, rcol = np.nonzero(rest != 0)
        values = np.concatenate([values_full, rest[rblk, rcol]])
        columns = np.concatenate([col, rcol])
        nnzmap = np.concatenate([bmask.sum(axis=1), (rest != 0).sum(axis=1)])
        if columns.size >= 2**31:
            raise ValueError("w2d has too many non-zeros for the packed format (2**31)")
        packed = _kernels.SpmmWeights(values, nnzmap, columns, rows, cols, b)
        return cls(packed, int(mask.sum()))

    def to_dense(self):
        """The (rows, cols) float32 matrix."""
        p = self._packed
        rows, cols, b = p.rows, p.cols, p.nr
        out = np.zeros((rows, cols), dtype=np.float32)
        nfull = rows // b
        counts = p.nnzmap.astype(np.int64)
        nfull_cols = int(counts[:nfull].sum())
        blk = np.repeat(np.arange(nfull), counts[:nfull])
        col = p.columns[:nfull_cols]
        vals = p.values[: nfull_cols * b].reshape(-1, b)
        for r in range(b):
            out[blk * b + r, col] = vals[:, r]
        rblk = np.repeat(np.arange(nfull * b, rows), counts[nfull:])
        out[rblk, p.columns[nfull_cols:]] = p.values[nfull_cols * b:]
        return out

    @property
    def shape(self):
        return self._shape

    @property
    def block_size(self):
        return self._packed.nr

    @property
    def nnz(self):
        """Non-zero weights of the matrix (zeros stored inside blocks not counted)."""
        return self._nnz

    @property
    def stored(self):
        """Values stored, including the zeros that fill partially used blocks."""
        return int(self._packed.values.shape[0])

    @property
    def sparsity(self):
        rows, cols = self._shape
        return 1.0 - self._nnz / (rows * cols)

    @property
    def nbytes(self):
        """Bytes of the packed weights (values, per-block counts, column indices)."""
        p = self._packed
        return int(p.values.nbytes + p.nnzmap.nbytes + p.columns.nbytes)

    def __repr__(self):
        return (f"SparseMatrix(shape={self._shape}, block_size={self.block_size}, "
                f"nnz={self._nnz}, sparsity={self.sparsity:.3f})")
