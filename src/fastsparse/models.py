"""Sparse MobileNets: builders from dense weights, the CHW network executor, summary, save/load.

A network is a short program of layers over numbered tensors. Every tensor stays NCHW
float32 from the first conv to the pooling; the residual add of MobileNet v2 is fused into
the projection 1x1's epilogue. Activation buffers are planned once per input shape (tensors
whose lifetimes do not overlap share memory) and reused; a call allocates only the logits.
The layers become a C step list (csrc/fs_steps.h) built once per input shape, thread count
and ISA: a call runs them all in one OpenMP parallel region. Every image runs through the
batch-1 plan: a batch image after image on one thread, and on T threads T images side by side,
one per thread through its own one-thread plan (Network._run).
"""
import numbers
import threading
import time
import warnings

import numpy as np

from . import _dispatch, _kernels, _reference_nets as refnets
from ._validate import (count, finite_float32, float32_array, hugepage_empty, line_aligned_empty,
                        thread_count)
from .prune import magnitude
from .sparse import SparseMatrix

RELU6 = (0.0, 6.0)
NONE = (-np.inf, np.inf)

# A 1x1 layer runs sparse only below this density (non-zeros / weights): above it, dense
# OpenBLAS sgemm wins (measured on the MobileNet shapes, BENCHMARKS.md). Larger blocks move
# the break-even up because each activation load then feeds block_size FMAs.
SPARSE_MAX_DENSITY = {1: 0.3, 2: 0.4, 4: 0.5, 8: 0.5}

# A layer above that break-even runs its whole weight in 4x1 blocks in the spmm kernels (the
# zeros inside a block stored), never through NumPy's sgemm inside a network: OpenBLAS's
# thread pool would spin against the executor's OpenMP team (MobileNet v2 dense on 2 threads:
# 112 ms instead of 4.7), and its sums would differ between one thread and several. On one
# thread the blocks win on MobileNet v2 (dense 6.1-6.9 -> 5.7-5.9 ms, the fused epilogue and
# no Python between layers) and lose on v1's large layers (8.3 -> 10.1 ms).


# A sparse 1x1 whose only reader is a depthwise conv runs fused with it (one step, by groups of
# channels whose planes stay in L2) on images of at least FUSE_MIN_HW positions, where the
# expanded tensor would not fit in L2 (96 x 112 x 112 floats = 4.8 MB). A group's planes
# take about FUSE_GROUP_BYTES.
FUSE_MIN_HW = 56 * 56
FUSE_GROUP_BYTES = 256 * 1024

# A stride-1 depthwise conv whose only reader is a 1x1 (not itself fused with a depthwise conv)
# runs fused with it on images of at least FUSE_MIN_HW positions, by bands of rows whose
# depthwise output (every channel, about DW_FUSE_BAND_BYTES) goes to per-thread work planes,
# where the 1x1 reads it: MobileNet v2's 32 x 112 x 112 depthwise output (1.6 MB) then never
# goes through L3 or memory. Only where the kernel reads bands in place
# (_kernels.dw_spmm_band_rows).
DW_FUSE_BAND_BYTES = 128 * 1024

# The first conv whose only reader is such a fused depthwise conv joins the step: each band
# computes the conv rows its taps read into the work buffer (a row two bands read, once), so
# MobileNet v2's 32 x 112 x 112 conv output (1.6 MB) never exists either. Only where the
# depthwise kernel reads those rows in place: planes of whole 16-float rows, taller than a
# staged copy (_kernels.DW_FLAT_STAGE_ROWS). On T threads at batch 1 each thread runs one run
# of bands and the step's output is held whole, not in row pieces (v2 at 90 %, 2 threads:
# -25..40 us warm, -50..64 us after ONNX Runtime, BENCHMARKS.md session 13).

# 1x1 layers on images below KSPLIT_MAX_HW positions with at least KSPLIT_MIN_RATIO times more
# input than output channels sum their input channels in two halves (FS_STEP_SPMM_KSPLIT,
# _kernels.StepList.add_spmm).
KSPLIT_MAX_HW = 256
KSPLIT_MIN_RATIO = 3

# On T threads at batch 1, tensors of images of at least T * PIECE_MIN_HW positions are held
# in T row pieces where the steps allow (Network._row_pieces; a stride-1 depthwise conv takes
# pieces of at most _kernels.DW_FLAT_STAGE_ROWS rows, or at least _kernels.DW_ROWS_MIN_W
# wide: dw_piece_kind). Below 128 positions per thread (14x14 on 2 threads), the pieces' halo
# rows and per-plane setup cost more than they save (MobileNet v1 on 2 threads: 1.73 -> 1.82
# ms with 14x14 pieces).
PIECE_MIN_HW = 128


def pieceable(shape, threads):
    """Whether a tensor of `shape` (N, C, H, W) may be held in `threads` row pieces on a
    call on that many threads: batch 1, H cut evenly, at least PIECE_MIN_HW positions per
    thread. (Whether the steps over it allow pieces is Network._row_pieces' business.)"""
    return (threads > 1 and len(shape) == 4 and shape[0] == 1 and shape[2] % threads == 0
            and shape[2] * shape[3] >= PIECE_MIN_HW * threads)


class _Layer:
    """One op: reads tensor `src` (and `res`), writes tensor `dst`; add_step() appends it to
    the network's C step list."""

    op = ""
    src = dst = 0
    res = None

    def out_shape(self, shape):
        raise NotImplementedError

    def macs(self, shape):
        """(dense multiply-adds, executed multiply-adds) for one call on input `shape`."""
        raise NotImplementedError

    def describe(self, shape, fused=False):
        """(sparsity, block, kernel, path note) for the summary."""
        return "", "", "", ""

    def add_step(self, steps, isa, shapes, layout):
        raise NotImplementedError


class _Conv(_Layer):
    """Dense full convolution (the first layer): 3 input channels, 3x3."""

    op = "conv3x3"

    def __init__(self, w, b, stride, padding, act):
        self.w, self.b, self.stride, self.padding, self.act = w, b, stride, padding, act
        self.w2 = np.ascontiguousarray(w, dtype=np.float32).reshape(w.shape[0], -1)

    def pads(self, h, w):
        if self.padding == "same":
            (t, b), (l, r) = (refnets.same_padding(h, 3, self.stride),
                              refnets.same_padding(w, 3, self.stride))
            return t, l, b, r
        return self.padding

    def out_shape(self, shape):
        n, _, h, w = shape
        t, l, b, r = self.pads(h, w)
        return (n, self.w.shape[0], (h + t + b - 3) // self.stride + 1,
                (w + l + r - 3) // self.stride + 1)

    def macs(self, shape):
        n, o, oh, ow = self.out_shape(shape)
        m = n * o * oh * ow * self.w[0].size
        return m, m

    def add_step(self, steps, isa, shapes, layout):
        t, l, _, _ = self.pads(*shapes[self.src][2:])  # shapes are NCHW whatever the layout
        steps.add_conv2d(_dispatch.isa_id(isa), self.src, layout == "NHWC", self.dst, self.w2, self.b,
                         self.stride, t, l, *self.act)

    def add_fused_step(self, steps, isa, shapes, dw, pw, layout):
        """This conv, the depthwise conv `dw` reading its output and the 1x1 `pw` reading
        dw's, as one step (_Depthwise.add_fused_step on rows this conv computes)."""
        t, l, _, _ = self.pads(*shapes[self.src][2:])
        W, kisa, index, _ = pw._kernel(isa, shapes[pw.src], streamed=_streamed(shapes[pw.src]))
        i = _dispatch.isa_id(isa)
        steps.add_conv2d_dwconv2d_spmm(
            i, layout == "NHWC", self.w2, self.b, self.stride, t, l, *self.act, i, dw.w2, dw.b,
            dw.w.shape[2], dw.padding[0], dw.padding[1], *dw.act, kisa, index, W._packed,
            self.src, self.dst, dw.dst, -1 if pw.res is None else pw.res, pw.dst, pw.b,
            *pw.act, dw.band_rows(shapes[dw.src], 1))

    def describe(self, shape, fused=False):
        return "0.00", "", "dense", "first conv (dense by design)"


class _Depthwise(_Layer):
    op = "dwconv"

    def __init__(self, w, b, stride, padding, act):
        self.w, self.b, self.stride, self.padding, self.act = w, b, stride, padding, act
        self.w2 = np.ascontiguousarray(w, dtype=np.float32).reshape(w.shape[0], -1)

    def out_shape(self, shape):
        n, c, h, w = shape
        k = self.w.shape[2]
        t, l, b, r = self.padding
        return n, c, (h + t + b - k) // self.stride + 1, (w + l + r - k) // self.stride + 1

    def macs(self, shape):
        n, c, oh, ow = self.out_shape(shape)
        m = n * c * oh * ow * self.w.shape[2] * self.w.shape[3]
        return m, m

    def add_step(self, steps, isa, shapes, layout):
        steps.add_dwconv2d(_dispatch.isa_id(isa), self.src, self.dst, self.w2, self.b, self.w.shape[2],
                           self.stride, self.padding[0], self.padding[1], *self.act)

    def band_rows(self, shape, pieces):
        """Rows per band of this layer fused with the 1x1 after it (DW_FUSE_BAND_BYTES of
        output, every channel) on an input of `shape` in `pieces` row pieces, or 0 if it
        cannot run fused."""
        _, c, h, w = shape
        _, _, oh, ow = self.out_shape(shape)
        want = max(1, DW_FUSE_BAND_BYTES // (4 * c * w))
        return _kernels.dw_spmm_band_rows(pieces if pieces > 1 else 0, self.w.shape[2],
                                          self.stride, h, w, oh, ow, self.padding[0],
                                          self.padding[1], want)

    def add_fused_step(self, steps, isa, shapes, pw, pieces):
        """This depthwise conv and the 1x1 `pw` reading its output, as one step."""
        # The step streams its input and its output through L2: where the two exceed it, the
        # 1x1 takes the variant that prefetches its output lines (v2's first block, after a
        # 64 MB sweep: 173-248 -> 157-232 us).
        W, kisa, index, _ = pw._kernel(isa, shapes[pw.src], streamed=_streamed(shapes[pw.src]))
        steps.add_dwconv2d_spmm(_dispatch.isa_id(isa), self.w2, self.b, self.w.shape[2],
                                self.padding[0], self.padding[1], *self.act, kisa, index,
                                W._packed, self.src, self.dst, -1 if pw.res is None else pw.res,
                                pw.dst, pw.b, *pw.act, self.band_rows(shapes[self.src], pieces))

    def describe(self, shape, fused=False):
        k = self.w.shape[2]
        return "0.00", "", f"{k}x{k}s{self.stride}", "depthwise (dense by design, <3% of MACs)"


class _Pointwise(_Layer):
    """1x1 convolution in the spmm kernels: its sparse weights, or its dense weight whole in
    4x1 blocks when too dense for the sparse path."""

    op = "conv1x1"

    def __init__(self, W, b, act):
        self.W, self.b, self.act = W, b, act  # W: SparseMatrix or a dense (Cout, Cin) array
        self.sparse = isinstance(W, SparseMatrix)
        self._blocked = None

    def matrix(self):
        """The packed matrix the C kernels run: the sparse one, or the dense one stored whole
        in 4x1 blocks."""
        if self.sparse:
            return self.W
        if self._blocked is None:
            self._blocked = SparseMatrix.from_dense(self.W, block_size=4)
        return self._blocked

    def out_shape(self, shape):
        return (shape[0], self.W.shape[0], shape[2], shape[3])

    def macs(self, shape):
        n, _, h, w = shape
        cout, cin = self.W.shape
        return n * h * w * cout * cin, n * h * w * self.matrix().stored

    def _kernel(self, isa, shape, fused=False, streamed=0):
        """(packed matrix, ISA id, variant index, sweep rows) the spmm kernels run on an input
        of `shape` in the executor's layout; `fused` with a depthwise step, whose groups of
        output channels stay in L2; `streamed`: bytes a fused step streams through L2 besides
        the output. A step of its own in blocks may sweep its output in groups of rows
        (_dispatch.spmm_sweep_rows), with the plain variant."""
        hw, plane = int(np.prod(shape[2:])), _plane(shape)
        W = self.matrix()
        alone = not (fused or streamed or self._ksplit(shape))
        return (W,) + _dispatch.spmm_step_kernel(
            isa, W.block_size, hw, plane=plane,
            out_bytes=0 if fused else 4 * W.shape[0] * plane + streamed,
            in_bytes=4 * W.shape[1] * plane if alone else None)

    def _ksplit(self, shape):
        """Whether this 1x1, as a step of its own on an input of `shape`, sums its input
        channels in two halves (FS_STEP_SPMM_KSPLIT, when it runs in several parts). A
        projection on a small image, whose input a depthwise step wrote split by channels,
        sums each half on the thread that wrote it, then adds them: reading the other
        core's half cost 2.5x the layer on 2 threads (576->96 at 14x14). Decided without the
        thread count or the batch: an image's sums are the same on any."""
        hw = int(np.prod(shape[2:]))
        return hw < KSPLIT_MAX_HW and shape[1] >= KSPLIT_MIN_RATIO * self.W.shape[0]

    def add_step(self, steps, isa, shapes, layout):
        W, kisa, index, sweep = self._kernel(isa, shapes[self.src])
        steps.add_spmm(kisa, index, W._packed, self.src,
                       -1 if self.res is None else self.res, self.dst, self.b, *self.act,
                       ksplit=self._ksplit(shapes[self.src]), sweep_rows=sweep)

    def add_fused_step(self, steps, isa, shapes, dw):
        """This 1x1 (run by the spmm kernels) and the depthwise conv `dw` reading its output,
        as one step."""
        W, kisa, index, _ = self._kernel(isa, shapes[self.src], fused=True)
        hw = int(np.prod(shapes[self.src][2:]))
        nr = W.block_size
        rows = max(nr, FUSE_GROUP_BYTES // (4 * hw) // nr * nr)
        # With fewer images than threads, each image is cut into as many bands of output rows
        # as threads, one per thread, at the rows where the steps before and after cut it by
        # positions (halfway on 2 threads): each thread then reads the 1x1 input it wrote
        # itself (v1 on 2 threads: the three fused pairs ran at 1.3-1.5x of 1 thread).
        bands = steps.num_threads if shapes[self.src][0] < steps.num_threads else 1
        steps.add_spmm_dwconv2d(kisa, index, W._packed, self.src, self.dst, dw.dst, self.b,
                                *self.act, _dispatch.isa_id(isa), dw.w2, dw.b, dw.w.shape[2],
                                dw.stride, dw.padding[0], dw.padding[1], *dw.act, rows, bands)

    def density(self):
        W = self.W
        nnz = W.nnz if self.sparse else int(np.count_nonzero(W))
        return nnz / (W.shape[0] * W.shape[1])

    def describe(self, shape, fused=False, streamed=0):
        sparsity = f"{1 - self.density():.2f}"
        W, isa, index, sweep = self._kernel(_dispatch.isa(), shape, fused, streamed)
        name = _kernels.spmm_kernels(isa)[index][0].replace("fs_f32_spmm_minmax_", "")
        how = f", in groups of {sweep} rows" if sweep else ""
        if not self.sparse:
            return (sparsity, str(W.block_size), name,
                    self.why_dense + "; runs in 4x1 blocks in the spmm kernels" + how)
        return sparsity, str(W.block_size), name, "sparse" + how


class _Pool(_Layer):
    op = "avgpool"

    def out_shape(self, shape):
        return (shape[0], shape[1])

    def macs(self, shape):
        return 0, 0

    def add_step(self, steps, isa, shapes, layout):
        steps.add_gavgpool(_dispatch.isa_id(isa), self.src, self.dst)


class _Classifier(_Pointwise):
    """The last layer: (N, C) -> (N, classes), sparse or dense like a 1x1 layer. Its step is
    the 1x1's: the (N, C) features are N images of C channels x 1 position, so each image's
    logits come from the same kernel calls whatever the batch (the one-position variant)."""

    op = "linear"

    def out_shape(self, shape):
        return (shape[0], self.W.shape[0])

    def macs(self, shape):
        cout, cin = self.W.shape
        return shape[0] * cout * cin, shape[0] * self.matrix().stored

    def describe(self, shape, fused=False):
        # (N, C): the kernels see each image's features as C channels x 1 position.
        return _Pointwise.describe(self, shape, fused)


def _padded_size(shape):
    """Floats a planned tensor takes: NCHW activations get planes of a whole number of 64-byte
    lines (7x7 = 49 floats -> 64), so that every plane starts aligned (fs_steps.h)."""
    if len(shape) != 4:
        return int(np.prod(shape))
    n, c, h, w = shape
    return n * c * (-(-h * w // 16) * 16)


def _pieced_size(shape, pieces):
    """Floats of a tensor held in `pieces` row pieces: each piece's planes padded as above."""
    n, c, h, w = shape
    return pieces * c * (-(-(h // pieces) * w // 16) * 16)


def _pieced_view(buffer, shape, pieces, stride=0):
    """The (pieces, C, H / pieces, W) view of a tensor held in row pieces (fs_steps.h): piece
    p, rows [p H / pieces, (p + 1) H / pieces) of every channel, `stride` floats after piece
    p - 1 (0: at p / pieces of the buffer)."""
    n, c, h, w = shape
    rows = h // pieces
    plane = -(-rows * w // 16) * 16
    stride = stride or len(buffer) // pieces // 16 * 16
    assert stride >= c * plane
    return np.lib.stride_tricks.as_strided(
        buffer, shape=(pieces, c, rows, w),
        strides=(4 * stride, 4 * plane, 4 * w, 4), writeable=True)


def _arena_floats(spans):
    return max((a + n for a, n in spans.values()), default=0)


def _streamed(shape):
    """Bytes a fused depthwise + 1x1 step streams besides its output: its input, of the 1x1
    input's `shape` (the input exceeding L2 with the output, the 1x1 prefetches its output
    lines)."""
    return 4 * _plane(shape) * shape[1]


def _plane(shape):
    """Floats from one channel plane of a planned tensor to the next."""
    return _padded_size(shape) // max(shape[0] * shape[1], 1) if len(shape) == 4 else 1


def _planned_view(buffer, shape):
    """The (N, C, H, W) view of a tensor over its planned buffer (planes padded)."""
    size = _padded_size(shape)
    if len(shape) != 4:
        return buffer[:size].reshape(shape)
    n, c, h, w = shape
    plane = _plane(shape)
    return np.lib.stride_tricks.as_strided(
        buffer[:size], shape=shape, strides=(4 * c * plane, 4 * plane, 4 * w, 4), writeable=True)


def _pointwise(w2d, bias, act, sparsity, block_size, layer_cls=_Pointwise):
    """Prune (optionally), pack, and decide sparse vs dense for one 1x1 or linear layer."""
    if sparsity is not None:
        w2d = magnitude(w2d, sparsity, block_size=block_size or 1)
    W = SparseMatrix.from_dense(w2d, block_size=block_size)
    limit = SPARSE_MAX_DENSITY[W.block_size]
    density = W.nnz / w2d.size
    if density <= limit:
        layer = layer_cls(W, bias, act)
    else:
        layer = layer_cls(np.ascontiguousarray(w2d, dtype=np.float32), bias, act)
        layer.why_dense = (f"dense: {density:.0%} non-zero > {limit:.0%} break-even "
                           f"for block {W.block_size}")
    return layer


def _fold(w, gamma, beta, mean, var, eps, name):
    """BatchNorm `name` folded into the preceding bias-free convolution (float64, then
    float32); refused if the result is not finite in float32."""
    var = np.asarray(var, np.float64)
    if not np.all(var + eps > 0):
        raise ValueError(f"BatchNorm {name!r}: running variance + eps must be > 0, got "
                         f"{float(np.min(var + eps))}")
    scale = np.asarray(gamma, np.float64) / np.sqrt(var + eps)
    wf = np.asarray(w, np.float64) * scale.reshape((-1,) + (1,) * (np.ndim(w) - 1))
    bf = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    with np.errstate(over="ignore"):
        wf, bf = wf.astype(np.float32), bf.astype(np.float32)
    if not (np.all(np.isfinite(wf)) and np.all(np.isfinite(bf))):
        raise ValueError(f"BatchNorm {name!r} folded into the convolution before it gives "
                         "weights or biases that are not finite in float32")
    return wf, bf


class Network:
    """A sparse CHW network: call it on float32 images (N, 3, H, W) or, with layout="NHWC",
    (N, H, W, 3); returns (N, num_classes) float32 logits."""

    def __init__(self, arch, layers, num_threads=None):
        self.arch = arch
        self.layers = layers
        self._plans = {}
        self._held = {}  # per plan, the tensors held back from later outputs (_shared_reads)
        self._free = {}
        self._lock = threading.Lock()
        # (workspace key, workspace) kept out of the pool for batch-1 calls, which run its
        # pinned StepList without the checked path's Python (_run, _keep_fast); _generation
        # counts num_threads changes, after which no call may pin what it built before.
        self._fast = None
        self._generation = 0
        self.num_threads = num_threads

    @property
    def num_threads(self):
        """Threads of this network's calls; None: the default (set_num_threads)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value):
        if value is not None:
            value = thread_count(value)  # refused now, not at the next call
        with self._lock:
            self._num_threads = value
            self._generation += 1
            self._fast = None  # its list has the old count; dropped, never back to the pool

    @property
    def num_classes(self):
        return self.layers[-1].W.shape[0]

    # -- planning ---------------------------------------------------------------------------

    def _shapes(self, in_shape):
        shapes = {0: in_shape}
        for layer in self.layers:
            shapes[layer.dst] = layer.out_shape(shapes[layer.src])
        return shapes

    def _nonempty_shapes(self, in_shape):
        """_shapes, refusing an image too small for some layer's output."""
        shapes = self._shapes(in_shape)
        for i, layer in enumerate(self.layers):
            if min(shapes[layer.dst]) < 1:
                raise ValueError(
                    f"images of {in_shape[2]}x{in_shape[3]} are too small for {self.arch}: "
                    f"layer {i} ({layer.op}) would produce an empty output {shapes[layer.dst]}")
        return shapes

    def _fused_pairs(self, shapes, pieces=1):
        """Indices i of the layers that run fused with layer i + 1, the only reader of their
        output, on images of at least FUSE_MIN_HW positions: sparse 1x1s with the depthwise
        conv after them, and then stride-1 depthwise convs with the 1x1 after them where that
        1x1 is in no pair and whose bands fit the row pieces their input would be held in on
        a batch-1 call on `pieces` threads (_Depthwise.band_rows); and the first conv where
        the pair after it reads its output (the three run as one step)."""
        readers = {}
        for layer in self.layers:
            for t in (layer.src, layer.res):
                readers[t] = readers.get(t, 0) + 1
        pairs = list(zip(self.layers, self.layers[1:]))
        fused = {i for i, (a, b) in enumerate(pairs)
                 if type(a) is _Pointwise and a.res is None
                 and isinstance(b, _Depthwise) and b.src == a.dst and readers[a.dst] == 1
                 and int(np.prod(shapes[a.src][2:])) >= FUSE_MIN_HW}
        for i, (a, b) in enumerate(pairs):
            if (type(a) is _Depthwise and type(b) is _Pointwise and b.src == a.dst
                    and readers[a.dst] == 1 and not {i - 1, i, i + 1} & fused
                    and int(np.prod(shapes[a.src][2:])) >= FUSE_MIN_HW
                    and a.band_rows(shapes[a.src],
                                    pieces if pieceable(shapes[a.src], pieces) else 1)):
                fused.add(i)
        for i, (a, b) in enumerate(pairs):  # the first conv joins a depthwise conv + 1x1
            if (type(a) is _Conv and type(b) is _Depthwise and i + 1 in fused
                    and b.src == a.dst and readers[a.dst] == 1):
                _, _, h, w = shapes[a.dst]
                if w % 16 == 0 and h > _kernels.DW_FLAT_STAGE_ROWS:
                    fused.add(i)
        return fused

    def _row_pieces(self, shapes, fused, threads):
        """Tensors held in `threads` row pieces (fs_steps.h) on a batch-1 call on `threads`
        threads: the pieceable() ones (which the 1x1 steps would cut by positions), when
        every step over them can run piece by piece: the first conv, the 1x1s, depthwise
        steps on the flat paths, and fused pairs, whose bands are then the pieces of their
        output. Each thread then writes and reads one block per tensor instead of one part of
        every plane (2 threads, MobileNet v2: BENCHMARKS.md)."""
        t = threads
        if t < 2:
            return {}
        last = self.layers[-1].dst
        ok = {d for d, sh in shapes.items() if 0 < d != last and pieceable(sh, t)}
        for i, layer in enumerate(self.layers):
            roles = {layer.src, layer.dst} | ({layer.res} if layer.res is not None else set())
            if i in fused and type(layer) is _Conv:  # conv + depthwise + 1x1: output held whole
                ok -= {layer.dst, self.layers[i + 2].dst}
            elif i in fused and type(layer) is _Depthwise:  # a depthwise conv + 1x1 pair
                ok.discard(layer.dst)  # the depthwise output the pair never writes
            elif i - 1 in fused and type(layer) is _Depthwise:  # 1x1 + depthwise: its 2nd half
                (_, _, h, w), (_, _, oh, ow) = shapes[layer.src], shapes[layer.dst]
                if not _kernels.fused_writes_pieces(t, layer.w.shape[2], layer.stride, h, w, oh,
                                                    ow, layer.padding[0], layer.padding[1]):
                    ok.discard(layer.dst)
                ok.discard(layer.src)  # the 1x1 output the pair never writes
            elif type(layer) in (_Pointwise, _Conv):  # the conv: one band of rows per piece
                continue
            elif type(layer) is _Depthwise and roles & ok:
                (_, _, h, w), (_, _, oh, ow) = shapes[layer.src], shapes[layer.dst]
                k, pt, pl = layer.w.shape[2], layer.padding[0], layer.padding[1]
                if (not _kernels.dw_piece_kind(t, k, layer.stride, h, w, oh, ow, pt, pl)
                        or not roles <= ok):
                    ok -= roles
            else:
                ok -= roles
        # A fused depthwise conv + 1x1 takes its output and residual in pieces only with its
        # input in pieces its bands fit (a discard may undo another pair's input: repeat).
        changed = True
        while changed:
            changed = False
            for i in fused:
                dw, pw = self.layers[i], self.layers[i + 1]
                if (type(dw) is _Depthwise and {dw.src, pw.dst, pw.res} & ok
                        and (dw.src not in ok or not dw.band_rows(shapes[dw.src], t))):
                    ok -= {dw.src, pw.dst, pw.res}
                    changed = True
        return {d: t for d in ok}

    def _plan(self, key, threads=1):
        """Where each planned tensor lives in one arena for a batch-1 call on `threads`
        threads: (start, floats) per tensor, tensors alive at the same time never sharing a
        float, and the floats from one row piece to the next (0 if none is in pieces). A fused
        pair reads its first layer's input until the second layer's output is written, so
        that input lives one layer longer.

        Tensors sit at offsets (each, largest first or in the order they are written, at the
        lowest 64-byte offset where it overlaps no tensor alive with it). A call touches fewer
        distinct lines in a smaller arena, and after another engine's call has evicted them
        each is a write-allocate read from memory: MobileNet v2 at 224x224 takes 2.30 MiB,
        where whole buffers reused from tensor to tensor took 3.06 MiB on one thread (and
        buffers each holding tensors of one image size, session 9's plan, 6.98 MiB on two).
        Where nothing is in pieces, whole buffers serve if they pack tighter.

        On T > 1 threads, the tensors _row_pieces picks are held in T row pieces, and piece p
        of each lies in region p of the arena (_plan_regions): each thread writes only its
        region's lines of them, at every layer and every call. (The other tensors, which
        threads split by positions or channels, sit in the gaps; both threads write those.)
        There, tensors a thread reads from another core's lines are held back from the next
        outputs where the arena has room (_shared_reads)."""
        plan = self._plans.get((key, threads))
        if plan is None:
            shapes = self._nonempty_shapes(key[0])
            fused = self._fused_pairs(shapes, threads)
            pieced = self._row_pieces(shapes, fused, threads)
            last_use = {}
            for i, layer in enumerate(self.layers):
                last_use[layer.src] = i + 1 if i in fused else i
                if layer.res is not None:
                    last_use[layer.res] = i
            # Planned tensors (not the input, not the logits, not a fused pair's first output):
            # the layer writing each, its floats.
            born, size = {}, {}
            for i, layer in enumerate(self.layers[:-1]):
                if i not in fused:
                    t = layer.dst
                    born[t] = i
                    size[t] = -(-(_pieced_size(shapes[t], pieced[t]) if t in pieced
                                  else _padded_size(shapes[t])) // 16) * 16

            def place(held):
                life = {t: (born[t], max(last_use.get(t, born[t]), held.get(t, -1)))
                        for t in born}
                spans, stride = self._plan_regions(born, size, life, pieced, threads)
                if not pieced:  # whole buffers, if they pack tighter
                    buffers = self._plan_buffers(born, size, life)
                    if _arena_floats(buffers) < _arena_floats(spans):
                        spans = buffers
                return spans, stride

            spans, stride = place({})
            self._held[(key, threads)] = {}
            for held in self._shared_reads(shapes, fused, pieced) if threads > 1 else ():
                spans_held, stride_held = place(held)
                if _arena_floats(spans_held) <= _arena_floats(spans):
                    spans, stride = spans_held, stride_held
                    self._held[(key, threads)] = held
                    break
            plan = (shapes, _arena_floats(spans), spans, fused, pieced, stride)
            plan = self._plans.setdefault((key, threads), plan)  # never replaced (threads)
        return plan

    def _shared_reads(self, shapes, fused, pieced):
        """Candidates, best first, of {tensor: layer} to hold back on several threads at
        batch 1: tensors some thread reads from lines another core wrote, each kept alive
        through the given layer so that no output written until then goes over it. Those
        lines sit in both cores' caches, and a step writing over them must first take each
        line back from the other core. _plan takes the first candidate that costs no arena:
        both kinds below, else the first alone.

        - the input of a 1x1 step of its own split by output channels (not K-split, input
          not in row pieces, more than one position), which every thread reads whole: held
          from the next step's output. MobileNet v1's 512 x 14 x 14 depthwise convs, which
          wrote over the input of the 1x1 before them, took 32 us on 2 threads against
          17.5-18.6 us into other lines (tools/shared_lines.py, BENCHMARKS.md session 17);
        - the input of a depthwise step over row pieces, whose halo rows the neighbouring
          pieces' threads read: held from the next two steps' outputs (the second is the
          expansion that would take its place). MobileNet v2's 32 -> 192 1x1 at 28x28 wrote
          over them in 17 us on 2 threads, 9 us elsewhere; v1's arena would grow by 0.6 MB."""
        ends = [last for _, last in self._step_spans(fused)]  # each step's output's writer
        whole, halos = {}, {}
        for k, i in enumerate(ends):
            layer = self.layers[i]
            if i in fused or i - 1 in fused:  # (a fused step cuts its own bands)
                continue
            shape = shapes[layer.src]
            if (type(layer) is _Pointwise and layer.src not in pieced
                    and int(np.prod(shape[2:])) > 1 and not layer._ksplit(shape)):
                whole[layer.src] = ends[min(k + 1, len(ends) - 1)]
            elif type(layer) is _Depthwise and layer.src in pieced:
                halos[layer.src] = ends[min(k + 2, len(ends) - 1)]
        if halos:
            yield {t: max(whole.get(t, -1), halos.get(t, -1)) for t in {**whole, **halos}}
        if whole:
            yield whole

    def _step_spans(self, fused):
        """(first, last) layer of each step, in order: a fused pair is one step, and so is
        the first conv with the pair it joins; the last layer writes the step's output."""
        spans, i = [], 0
        while i < len(self.layers):
            n = 3 if i in fused and type(self.layers[i]) is _Conv else 2 if i in fused else 1
            spans.append((i, i + n - 1))
            i += n
        return spans

    @staticmethod
    def _plan_regions(born, size, life, pieced, pieces):
        """Spans of the tensors in `born`, and the floats R from one row piece to the next:
        piece p of every tensor in `pieced` lies in region [p R, (p + 1) R), at the same offset
        in each region (the pieces at offsets among themselves), the other tensors at offsets
        around them. A pieced tensor's span runs from its piece 0 to the end of its last."""
        def smallest(names, floats, placed):
            plans = [Network._plan_offsets(sorted(names, key=order), floats, life, placed)
                     for order in ((lambda t: (-floats[t], born[t])), (lambda t: born[t]))]
            return min(plans, key=_arena_floats)

        piece = {t: size[t] // pieces for t in pieced}
        offsets = smallest(piece, piece, {})
        stride = _arena_floats(offsets)
        held = {t: (a, (pieces - 1) * stride + n) for t, (a, n) in offsets.items()}
        return smallest([t for t in born if t not in pieced], size, held), stride

    @staticmethod
    def _plan_offsets(order, size, life, placed):
        """Spans placing the tensors in `order`, each at the lowest offset where it overlaps
        no tensor placed before it or in `placed` that is alive with it."""
        spans = dict(placed)
        for t in order:
            start = 0
            for a, n in sorted(spans[u] for u in spans
                               if life[u][0] <= life[t][1] and life[t][0] <= life[u][1]):
                if start + size[t] <= a:  # the first gap that fits
                    break
                start = max(start, a + n)
            spans[t] = (start, size[t])
        return spans

    @staticmethod
    def _plan_buffers(born, size, life):
        """Spans of whole buffers: a tensor takes the smallest free buffer that fits, else
        grows the largest free one. A tensor's span is its whole buffer."""
        slots, free, buffer_of = [], [], {}
        freed_after = {}  # layer index -> tensors whose buffers free after it
        for t, (_, end) in life.items():
            freed_after.setdefault(end, []).append(t)
        for t in sorted(born, key=lambda t: born[t]):
            fits = [b for b in free if slots[b] >= size[t]]
            if fits:
                pick = min(fits, key=lambda b: slots[b])
            elif free:
                pick = max(free, key=lambda b: slots[b])
                slots[pick] = size[t]
            else:
                pick = len(slots)
                slots.append(size[t])
            if pick in free:
                free.remove(pick)
            buffer_of[t] = pick
            for u in freed_after.get(born[t], ()):
                if u in buffer_of:
                    free.append(buffer_of[u])
        starts = np.cumsum([0] + slots)
        return {t: (int(starts[b]), slots[b]) for t, b in buffer_of.items()}

    def _workspace(self, key, plan):
        """Buffers of the planned tensors, the step list over them, and the layer index of
        each step. One workspace per concurrent call (and per image run side by side)."""
        with self._lock:
            stack = self._free.setdefault(key, [])
            if stack:
                return stack.pop()
        (in_shape, layout), threads, isa = key
        shapes, arena_floats, spans, fused, pieced, stride = plan
        # One arena on huge pages, each tensor starting on a 64-byte line.
        arena = hugepage_empty(arena_floats)
        # The first layers' outputs in fused pairs only give the steps their shapes: one buffer
        # that is never written (nor touched: its pages are never made) serves them all.
        ghosts = [_padded_size(shapes[layer.dst]) for i, layer in enumerate(self.layers[:-1])
                  if i in fused]
        ghost = line_aligned_empty(max(ghosts, default=0))
        views = [None] * (len(self.layers) + 1)
        for i, layer in enumerate(self.layers[:-1]):
            if i in fused:
                views[layer.dst] = _planned_view(ghost, shapes[layer.dst])
                continue
            start, floats = spans[layer.dst]
            buffer, shape = arena[start:start + floats], shapes[layer.dst]
            views[layer.dst] = (_pieced_view(buffer, shape, pieced[layer.dst], stride)
                                if layer.dst in pieced else _planned_view(buffer, shape))
        n, c, h, w = in_shape
        # The input and the logits are each call's own: these two only fix the shapes.
        views[0] = np.empty((n, h, w, c) if layout == "NHWC" else in_shape, dtype=np.float32)
        views[-1] = np.empty(shapes[self.layers[-1].dst], dtype=np.float32)
        steps = _kernels.StepList(views, threads, [pieced.get(t, 0) for t in range(len(views))])
        layer_of_step = []  # a fused step is one step, of its first layer
        for i, _ in self._step_spans(fused):
            layer = self.layers[i]
            if i in fused and type(layer) is _Conv:
                layer.add_fused_step(steps, isa, shapes, self.layers[i + 1], self.layers[i + 2],
                                     layout)
            elif i in fused and type(layer) is _Depthwise:
                layer.add_fused_step(steps, isa, shapes, self.layers[i + 1],
                                     pieced.get(layer.src, 0))
            elif i in fused:
                layer.add_fused_step(steps, isa, shapes, self.layers[i + 1])
            else:
                layer.add_step(steps, isa, shapes, layout)
            layer_of_step.append(i)
        assert len(steps) == len(layer_of_step)
        return views, steps, layer_of_step

    def _release(self, key, ws):
        with self._lock:
            self._free[key].append(ws)

    def _keep_fast(self, key, ws, epoch, generation):
        """After a checked batch-1 call on workspace `ws`, built under the settings of `epoch`
        and `generation` (read before they were resolved): keeps it for the fast path if there
        is none, or none that the current settings can run, else returns it to the pool. A
        fast workspace never goes back to the pool: a call may be about to run it (run_pinned
        refuses then, but a pooled run() would raise), so one replaced is just dropped."""
        with self._lock:
            fast = self._fast
            if generation == self._generation:
                if fast is None or (not fast[1][1].pinned and fast[0] != key):
                    ws[1].pin(epoch)
                    self._fast = (key, ws)
                    return
                if fast[0] == key and not fast[1][1].pinned:
                    fast[1][1].pin(epoch)  # the settings changed and changed back
        self._release(key, ws)

    # -- running ----------------------------------------------------------------------------

    def __call__(self, images, layout="NCHW"):
        return self._run(images, layout, None)

    def profile(self, images, layout="NCHW", repeat=20):
        """Median wall time of each layer over `repeat` calls, in milliseconds, and the median
        time of whole calls: (per-layer list, total). Layers are timed by stamps taken after
        each step's barrier, without leaving C; the first layer of a fused step gets the
        step's time, the others 0. A batch is profiled image after
        image through the batch-1 plan on all threads (the layer times summed)."""
        repeat = count(repeat, "repeat")
        per = np.zeros((repeat, len(self.layers)))
        total = np.zeros(repeat)
        self._run(images, layout, np.zeros(len(self.layers)))  # plan and warm up, as timed
        for r in range(repeat):
            t0 = time.perf_counter()
            self._run(images, layout, per[r])
            total[r] = time.perf_counter() - t0
        return list(np.median(per, axis=0) * 1e3), float(np.median(total) * 1e3)

    def _run(self, images, layout, times, inside=None):
        """One call. `times` (per layer, seconds) is filled for profile(); `inside` (one
        float) accumulates the time the call spends in its C step loops.

        Every image runs through the batch-1 plan, so its logits are the same bytes whatever
        the batch and the thread count. On T > 1 threads a batch runs T images at a time side
        by side, one per thread through its own one-thread plan, where its activations stay
        in that core's L2 from layer to layer (a batch run layer by layer went through L3 and
        paid for every read of a tensor the other core wrote); the n % T images left over
        run one after another on all threads, as do batches that are profiled.

        A batch-1 call whose images fit the workspace kept by the last checked one
        (_keep_fast) runs there through one O(1)-checked C call."""
        fast = self._fast
        if (fast is not None and times is None and type(layout) is str
                and layout == fast[0][0][1]):
            logits = fast[1][1].run_pinned(images, inside)
            if logits is not None:
                return logits
        # Read before the settings: a change during the call then leaves nothing pinned.
        epoch, generation = _kernels.config_epoch(), self._generation
        if not isinstance(layout, str):
            raise TypeError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        x = float32_array(images, "images", ndim=4)
        if layout == "NHWC":
            n, h, w, c = x.shape
        else:
            n, c, h, w = x.shape
        if c != 3:
            raise ValueError(f"images must have 3 channels ({layout}), got shape {x.shape}")
        if n < 1 or h < 1 or w < 1:
            raise ValueError(f"images must be non-empty, got shape {x.shape}")
        threads = _dispatch.resolve_threads(self.num_threads)
        key = ((1, 3, h, w), layout)
        plan = self._plan(key)
        isa = _dispatch.isa()
        logits = np.empty((n, self.num_classes), dtype=np.float32)
        side = n - n % threads if times is None and threads > 1 else 0
        if side:
            ws_key = (key, 1, isa)
            wss = []
            try:
                for _ in range(threads):
                    wss.append(self._workspace(ws_key, plan))
                stamps = None if inside is None else np.empty(2)
                _kernels.run_images([ws[1] for ws in wss], x[:side], logits[:side], stamps)
                if inside is not None:
                    inside[0] += stamps[1] - stamps[0]
            finally:
                for ws in wss:
                    self._release(ws_key, ws)
        if side == n:
            return logits
        ws_key = (key, threads, isa)
        ws = self._workspace(ws_key, self._plan(key, threads))
        _, steps, layer_of_step = ws
        stamps = None
        if times is not None:
            stamps = np.empty(len(steps) + 1)
        elif inside is not None:
            stamps = np.empty(2)
        ran = False
        try:
            for i in range(side, n):
                steps.run(x[i:i + 1], logits[i:i + 1], 0, -1, stamps)
                if times is not None:
                    np.add.at(times, layer_of_step, np.diff(stamps))
                if inside is not None:
                    inside[0] += stamps[-1] - stamps[0]
            ran = True
            return logits
        finally:
            if ran and n == 1 and times is None:
                self._keep_fast(ws_key, ws, epoch, generation)
            else:
                self._release(ws_key, ws)

    # -- reporting ----------------------------------------------------------------------------

    def _describe(self, i, shapes, fused):
        """Layer i's (sparsity, block, kernel, path) as its step runs it: the 1x1 of a fused
        depthwise + 1x1 pair takes the variant for what that step streams."""
        layer, src = self.layers[i], shapes[self.layers[i].src]
        if i - 1 in fused and type(self.layers[i - 1]) is _Depthwise:
            return layer.describe(src, streamed=_streamed(src))
        return layer.describe(src, i in fused)

    def summary(self, input_size=(224, 224), batch=1):
        """Per layer: op, shapes, weight sparsity, block, kernel, MFLOPs (dense vs executed,
        2 per multiply-add) and whether the sparse path runs, and why not."""
        batch = count(batch, "batch")
        if not (isinstance(input_size, (tuple, list)) and len(input_size) == 2):
            raise TypeError(f"input_size must be (H, W), got {input_size!r}")
        h, w = (count(v, "input_size") for v in input_size)
        shapes = self._nonempty_shapes((batch, 3, h, w))
        fused = self._fused_pairs(shapes)
        rows = [("#", "op", "input -> output", "sparsity", "block", "kernel", "MFLOP dense",
                 "MFLOP run", "path")]
        tot_d = tot_r = 0
        for i, layer in enumerate(self.layers):
            src = shapes[layer.src]
            d, r = layer.macs(src)
            tot_d, tot_r = tot_d + d, tot_r + r
            sp, blk, kern, why = self._describe(i, shapes, fused)
            if i in fused:
                why += f", fused with {i + 1}"
            io = f"{'x'.join(map(str, src[1:]))} -> {'x'.join(map(str, shapes[layer.dst][1:]))}"
            op = layer.op + ("+res" if layer.res is not None else "")
            rows.append((str(i), op, io, sp, blk, kern, f"{2 * d / 1e6:.1f}", f"{2 * r / 1e6:.1f}",
                         why))
        n_sparse = sum(1 for l in self.layers if isinstance(l, _Pointwise) and l.sparse)
        n_pw = sum(1 for l in self.layers if isinstance(l, _Pointwise))
        rows.append(("", "total", "", "", "", "", f"{2 * tot_d / 1e6:.1f}", f"{2 * tot_r / 1e6:.1f}",
                     f"{n_sparse}/{n_pw} 1x1+linear layers sparse"))
        widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
        lines = [f"{self.arch}: input {batch}x3x{input_size[0]}x{input_size[1]}, ISA {_dispatch.isa()}"]
        for j, r in enumerate(rows):
            lines.append("  ".join(v.ljust(widths[k]) for k, v in enumerate(r)).rstrip())
            if j == 0 or j == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def save(self, path):
        from ._serialize import save_network
        save_network(self, path)


# -- MobileNet v2 (torchvision layout) ---------------------------------------------------------

def _state_dict(source):
    """A mapping name -> value (torch tensor or array-like, converted when read: _get) from a
    torch module or a mapping. A weight pruned with torch.nn.utils.prune (`weight_orig` and
    `weight_mask`) is read as their product, the weight the module runs."""
    if hasattr(source, "state_dict") and callable(source.state_dict):
        if getattr(source, "training", False):
            warnings.warn("source is in training mode; its BatchNorm running statistics are "
                          "folded, as in eval mode (call source.eval() to silence this)",
                          stacklevel=3)
        source = source.state_dict()
    if not hasattr(source, "items"):
        raise TypeError("source must be a torch.nn.Module or a mapping of weight names to arrays, "
                        f"got {type(source).__name__}")
    sd = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    for k in [k for k in sd if k.endswith("_orig") and k[:-5] + "_mask" in sd]:
        sd.setdefault(k[:-5], _Masked(sd[k], sd[k[:-5] + "_mask"]))
    return sd


class _Masked:
    """A weight pruned with torch.nn.utils.prune: weight_orig * weight_mask, read lazily."""

    def __init__(self, orig, mask):
        self.orig, self.mask = orig, mask


def _source_array(v, key):
    """One source value as a NumPy array, its dtype kept (refused later if not real)."""
    if isinstance(v, _Masked):
        return _source_array(v.orig, key + "_orig") * _source_array(v.mask, key + "_mask")
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu()
        if not v.dtype.is_complex and v.dtype.is_floating_point and v.element_size() < 4:
            v = v.float()  # bfloat16 has no NumPy dtype; float16 converts exactly
        v = v.numpy()
    try:
        return np.asarray(v)
    except Exception as exc:  # e.g. ragged nested lists
        raise TypeError(f"weight {key!r} must be an array of real numbers: {exc}") from None


def _get(sd, key, shape=None, ndim=None):
    if key not in sd:
        raise ValueError(f"missing weight {key!r}")
    a = _source_array(sd[key], key)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"weight {key!r} must have {ndim} dimensions, got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"weight {key!r} must have shape {tuple(shape)}, got {a.shape}")
    return finite_float32(a, key).astype(np.float64)


def _torch_bn_eps(source):
    """The BatchNorm eps of a torch module's layers (one value), else torchvision's default."""
    eps = {m.eps for m in source.modules() if hasattr(m, "running_var") and hasattr(m, "eps")} \
        if hasattr(source, "modules") else set()
    if len(eps) > 1:
        raise ValueError(f"source has BatchNorm layers with different eps values: {sorted(eps)}")
    return eps.pop() if eps else refnets.TORCH_BN_EPS


class _Builder:
    """Collects layers and numbers tensors."""

    def __init__(self, sparsity, block_size):
        self.layers, self.count = [], 0
        self.sparsity, self.block_size = sparsity, block_size

    def add(self, layer, src=None, res=None):
        layer.src = self.count if src is None else src
        layer.res = res
        self.count += 1
        layer.dst = self.count
        self.layers.append(layer)
        return layer.dst

    def pointwise(self, w2d, b, act, res=None):
        return self.add(_pointwise(w2d, b, act, self.sparsity, self.block_size), res=res)


def _check_bn_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"bn_eps must be a real number, got {type(eps).__name__}")
    try:
        value = float(eps)
    except OverflowError:
        value = float("inf")
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"bn_eps must be finite and >= 0, got {eps!r}")
    return value


def _check_sparsity_args(sparsity, block_size):
    if sparsity is not None:
        from .prune import _check_sparsity
        _check_sparsity(sparsity)
    if block_size is not None and (isinstance(block_size, bool)
                                   or not isinstance(block_size, numbers.Integral)
                                   or int(block_size) not in (1, 2, 4, 8)):
        raise ValueError(f"block_size must be 1, 2, 4, 8 or None, got {block_size!r}")


class MobileNetV2(Network):
    @classmethod
    def from_dense(cls, source, *, sparsity=None, block_size=None, num_threads=None,
                   bn_eps=None):
        """Build from torchvision's mobilenet_v2 (a module or its state dict; any width).

        sparsity: None keeps the zeros already in the weights; a float prunes every 1x1 conv
        and the classifier by magnitude to that sparsity. block_size: 1, 2, 4, 8 or None
        (chosen per layer from the pattern). bn_eps: BatchNorm eps (default: the module's, or
        1e-5 for a state dict)."""
        _check_sparsity_args(sparsity, block_size)
        eps = _check_bn_eps(bn_eps) if bn_eps is not None else _torch_bn_eps(source)
        sd = _state_dict(source)
        blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("features.")})
        if not blocks or blocks != list(range(len(blocks))) or len(blocks) != 19:
            raise ValueError("source is not a torchvision mobilenet_v2: expected features.0 to "
                             f"features.18, found {blocks[:3]}...{blocks[-3:]}" if blocks else
                             "source is not a torchvision mobilenet_v2: no 'features.*' weights")

        def bn(p, n):
            return [_get(sd, f"{p}.{k}", (n,)) for k in ("weight", "bias", "running_mean",
                                                         "running_var")]

        B = _Builder(sparsity, block_size)
        w0 = _get(sd, "features.0.0.weight", ndim=4)
        if w0.shape[1:] != (3, 3, 3):
            raise ValueError(f"weight 'features.0.0.weight' must have shape (C, 3, 3, 3), got {w0.shape}")
        w, b = _fold(w0, *bn("features.0.1", w0.shape[0]), eps, "features.0.1")
        t = B.add(_Conv(w, b, 2, (1, 1, 1, 1), RELU6))
        channels = w0.shape[0]
        for i in range(1, 18):
            p = f"features.{i}.conv"
            stride = 2 if i in refnets.V2_STRIDE2_BLOCKS else 1
            inp, block_in = t, channels
            # With an expansion, conv.1 is the depthwise conv and conv.3 the last BatchNorm;
            # without, conv.1 is the projection and conv.2 its BatchNorm. (Decided by any of
            # their keys: one missing key is then reported as missing.)
            if any(k.startswith((f"{p}.1.0.", f"{p}.1.1.", f"{p}.3.")) for k in sd):
                we = _get(sd, f"{p}.0.0.weight", ndim=4)
                if we.shape[1:] != (channels, 1, 1):
                    raise ValueError(f"weight '{p}.0.0.weight' must have shape (C, {channels}, 1, 1), got {we.shape}")
                w, b = _fold(we[:, :, 0, 0], *bn(f"{p}.0.1", we.shape[0]), eps, f"{p}.0.1")
                t = B.pointwise(w, b, RELU6)
                channels = we.shape[0]
                dw, proj, pbn = f"{p}.1", f"{p}.2.weight", f"{p}.3"
            else:
                dw, proj, pbn = f"{p}.0", f"{p}.1.weight", f"{p}.2"
            wd = _get(sd, f"{dw}.0.weight", (channels, 1, 3, 3))
            w, b = _fold(wd, *bn(f"{dw}.1", channels), eps, f"{dw}.1")
            t = B.add(_Depthwise(w, b, stride, (1, 1, 1, 1), RELU6))
            wp = _get(sd, proj, ndim=4)
            if wp.shape[1:] != (channels, 1, 1):
                raise ValueError(f"weight '{proj}' must have shape (C, {channels}, 1, 1), got {wp.shape}")
            w, b = _fold(wp[:, :, 0, 0], *bn(pbn, wp.shape[0]), eps, pbn)
            residual = inp if stride == 1 and wp.shape[0] == block_in else None
            t = B.pointwise(w, b, NONE, res=residual)
            channels = wp.shape[0]
        wl = _get(sd, "features.18.0.weight", ndim=4)
        if wl.shape[1:] != (channels, 1, 1):
            raise ValueError(f"weight 'features.18.0.weight' must have shape (C, {channels}, 1, 1), got {wl.shape}")
        w, b = _fold(wl[:, :, 0, 0], *bn("features.18.1", wl.shape[0]), eps, "features.18.1")
        t = B.pointwise(w, b, RELU6)
        B.add(_Pool())
        wc = _get(sd, "classifier.1.weight", ndim=2)
        if wc.shape[1] != wl.shape[0]:
            raise ValueError(f"weight 'classifier.1.weight' must have {wl.shape[0]} columns, got {wc.shape}")
        bc = _get(sd, "classifier.1.bias", (wc.shape[0],)).astype(np.float32)
        B.add(_pointwise(wc.astype(np.float32), bc, NONE, sparsity, block_size, _Classifier))
        return cls("mobilenet_v2", B.layers, num_threads)


# -- MobileNet v1 (Keras layout) ------------------------------------------------------------------

def _keras_weights(source):
    if hasattr(source, "weights") and not hasattr(source, "items"):
        return {(getattr(v, "path", None) or v.name).split(":")[0]: np.asarray(v.numpy())
                for v in source.weights}
    if not hasattr(source, "items"):
        raise TypeError("source must be a Keras model or a mapping of Keras variable paths to "
                        f"arrays, got {type(source).__name__}")
    return {k.split(":")[0]: v for k, v in source.items()}


class MobileNetV1(Network):
    @classmethod
    def from_dense(cls, source, *, sparsity=None, block_size=None, num_threads=None,
                   bn_eps=refnets.KERAS_BN_EPS):
        """Build from Keras' applications.MobileNet weights (a model, or {variable path: array}
        with HWIO kernels; any width; classifier_activation=None, so the output is logits)."""
        _check_sparsity_args(sparsity, block_size)
        bn_eps = _check_bn_eps(bn_eps)
        wt = _keras_weights(source)
        if "conv1/kernel" not in wt or "conv_pw_13/kernel" not in wt:
            raise ValueError("source is not a Keras MobileNet: missing weight "
                             f"{'conv1/kernel' if 'conv1/kernel' not in wt else 'conv_pw_13/kernel'!r}")

        def bn(p, n):
            return [_get(wt, f"{p}/{k}", (n,)) for k in ("gamma", "beta", "moving_mean",
                                                         "moving_variance")]

        B = _Builder(sparsity, block_size)
        k1 = _get(wt, "conv1/kernel", ndim=4)
        if k1.shape[:3] != (3, 3, 3):
            raise ValueError(f"weight 'conv1/kernel' must have shape (3, 3, 3, C), got {k1.shape}")
        w, b = _fold(k1.transpose(3, 2, 0, 1), *bn("conv1_bn", k1.shape[3]), bn_eps, "conv1_bn")
        B.add(_Conv(w, b, 2, "same", RELU6))
        channels = k1.shape[3]
        for i in range(1, 14):
            key = f"conv_dw_{i}/depthwise_kernel"
            key = key if key in wt else f"conv_dw_{i}/kernel"
            kd = _get(wt, key, (3, 3, channels, 1))
            w, b = _fold(kd.transpose(2, 3, 0, 1), *bn(f"conv_dw_{i}_bn", channels), bn_eps,
                         f"conv_dw_{i}_bn")
            if i in refnets.V1_STRIDE2_BLOCKS:
                B.add(_Depthwise(w, b, 2, (0, 0, 1, 1), RELU6))
            else:
                B.add(_Depthwise(w, b, 1, (1, 1, 1, 1), RELU6))
            kp = _get(wt, f"conv_pw_{i}/kernel", ndim=4)
            if kp.shape[:3] != (1, 1, channels):
                raise ValueError(f"weight 'conv_pw_{i}/kernel' must have shape (1, 1, {channels}, C), got {kp.shape}")
            w, b = _fold(kp[0, 0].T, *bn(f"conv_pw_{i}_bn", kp.shape[3]), bn_eps, f"conv_pw_{i}_bn")
            B.pointwise(w, b, RELU6)
            channels = kp.shape[3]
        B.add(_Pool())
        kc = _get(wt, "conv_preds/kernel", ndim=4)
        if kc.shape[:3] != (1, 1, channels):
            raise ValueError(f"weight 'conv_preds/kernel' must have shape (1, 1, {channels}, classes), got {kc.shape}")
        bc = _get(wt, "conv_preds/bias", (kc.shape[3],)).astype(np.float32)
        B.add(_pointwise(kc[0, 0].T.astype(np.float32), bc, NONE, sparsity, block_size,
                         _Classifier))
        return cls("mobilenet_v1", B.layers, num_threads)


# -- random weights in the source layouts (demo, benchmarks, tests) -----------------------------

def _make_divisible(v, divisor=8):
    """Channel rounding of torchvision's MobileNet builders: nearest multiple of `divisor`,
    never below 90 % of v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


# torchvision's inverted residual setting: expansion t, channels c, repeats n, first stride s.
_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))


def _bn_stats(rng, n):
    return (rng.uniform(0.5, 1.5, n), rng.normal(0.0, 0.1, n), rng.normal(0.0, 0.1, n),
            rng.uniform(0.5, 1.5, n))


def random_mobilenet_v2_weights(width=1.0, num_classes=1000, seed=0):
    """A torchvision-layout mobilenet_v2 state dict of seeded random NumPy arrays (He-scaled
    convolutions, non-trivial BatchNorm statistics)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(key, shape):
        fan_in = int(np.prod(shape[1:]))
        sd[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bn(prefix, n):
        for name, v in zip(("weight", "bias", "running_mean", "running_var"), _bn_stats(rng, n)):
            sd[f"{prefix}.{name}"] = v.astype(np.float32)

    c = _make_divisible(32 * width)
    conv("features.0.0.weight", (c, 3, 3, 3))
    bn("features.0.1", c)
    i = 1
    for t, ch, n, _ in _V2_SETTING:
        out = _make_divisible(ch * width)
        for _ in range(n):
            p = f"features.{i}.conv"
            hidden = c * t
            j = 0
            if t != 1:
                conv(f"{p}.0.0.weight", (hidden, c, 1, 1))
                bn(f"{p}.0.1", hidden)
                j = 1
            conv(f"{p}.{j}.0.weight", (hidden, 1, 3, 3))
            bn(f"{p}.{j}.1", hidden)
            conv(f"{p}.{j + 1}.weight", (out, hidden, 1, 1))
            bn(f"{p}.{j + 2}", out)
            c, i = out, i + 1
    last = _make_divisible(1280 * max(1.0, width))
    conv(f"features.{i}.0.weight", (last, c, 1, 1))
    bn(f"features.{i}.1", last)
    sd["classifier.1.weight"] = (rng.standard_normal((num_classes, last)) * 0.01).astype(np.float32)
    sd["classifier.1.bias"] = np.zeros(num_classes, np.float32)
    return sd


def random_mobilenet_v1_weights(width=1.0, num_classes=1000, seed=0):
    """Keras applications.MobileNet weights ({variable path: array}, HWIO) of seeded random
    values; channels are int(c * width) as in Keras."""
    rng = np.random.default_rng(seed)
    wt = {}

    def bn(prefix, n):
        for name, v in zip(("gamma", "beta", "moving_mean", "moving_variance"), _bn_stats(rng, n)):
            wt[f"{prefix}/{name}"] = v.astype(np.float32)

    def kernel(key, shape, fan_in):
        wt[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    c = int(32 * width)
    kernel("conv1/kernel", (3, 3, 3, c), 27)
    bn("conv1_bn", c)
    for i, ch in enumerate((64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024), 1):
        kernel(f"conv_dw_{i}/kernel", (3, 3, c, 1), 9)
        bn(f"conv_dw_{i}_bn", c)
        out = int(ch * width)
        kernel(f"conv_pw_{i}/kernel", (1, 1, c, out), c)
        bn(f"conv_pw_{i}_bn", out)
        c = out
    wt["conv_preds/kernel"] = (rng.standard_normal((1, 1, c, num_classes)) * 0.01).astype(np.float32)
    wt["conv_preds/bias"] = np.zeros(num_classes, np.float32)
    return wt
