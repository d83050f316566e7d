# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Thin Cython layer over the C kernels: buffer checks, GIL release, threads, dispatch table.

Validation of user input and routing live in plain Python (fastsparse/ops.py). What this
module checks is what keeps the C kernels in bounds whoever calls it: every packed weight
structure is validated once when a ``SpmmWeights`` is built, and each call checks shapes in
O(1) against it.
"""
import numpy as np

from ._validate import line_aligned_empty

from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_SIMPLE, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memset

cdef extern from "csrc/fs_kernels.h" nogil:
    ctypedef void (*fs_spmm_fn)(
        size_t mc, size_t nc, const float* input, const float* weights,
        const uint32_t* nnzmap, const int32_t* offsets, const float* bias,
        const float* residual, size_t residual_stride, float* output,
        size_t output_stride, float lo, float hi) noexcept nogil
    ctypedef struct fs_spmm_kernel:
        const char* name
        unsigned mr
        unsigned nr
        unsigned unroll
        unsigned prefetch
        fs_spmm_fn fn
    enum:
        FS_ISA_COUNT
    const char* fs_isa_name(int isa)
    int fs_isa_supported(int isa)
    size_t fs_spmm_kernel_count(int isa)
    const fs_spmm_kernel* fs_spmm_kernel_at(int isa, size_t index)

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FS_OPENMP 1
    #else
    #define FS_OPENMP 0
    #endif
    """
    int FS_OPENMP

# ---- CHW companion ops: depthwise conv, first-layer conv, global average pooling, add ----

cdef extern from "csrc/fs_kernels.h" nogil:
    ctypedef void (*fs_dwconv2d_fn)(
        size_t ih, size_t iw, size_t oh, size_t ow, size_t pad_top, size_t pad_left,
        const float* input, size_t input_stride, const float* above, const float* below,
        const float* weights, float bias, float* scratch, float* output, size_t output_stride,
        size_t out_begin, size_t out_end, float lo, float hi) noexcept nogil
    ctypedef void (*fs_conv2d_fn)(
        size_t cin, size_t ih, size_t iw, size_t oh, size_t ow, size_t pad_top, size_t pad_left,
        size_t oy_begin, size_t oy_end, const float* input, size_t channel_stride,
        size_t row_stride, size_t pixel_stride, size_t cout, const float* weights,
        const float* bias, float* scratch, float* output, size_t output_channel_stride,
        size_t output_row_stride, float lo, float hi) noexcept nogil
    ctypedef void (*fs_gavgpool_fn)(size_t channels, size_t hw, const float* input,
                                    size_t input_stride, float scale, float* output) noexcept nogil
    ctypedef void (*fs_vadd_fn)(size_t n, const float* a, const float* b, float* y, float lo,
                                float hi) noexcept nogil
    ctypedef struct fs_chw_ops:
        const char* dwconv2d_names[2][2]
        fs_dwconv2d_fn dwconv2d[2][2]
        const char* conv2d_names[2]
        fs_conv2d_fn conv2d[2]
        const char* gavgpool_name
        fs_gavgpool_fn gavgpool
        const char* vadd_name
        fs_vadd_fn vadd
    const fs_chw_ops* fs_chw_ops_for(int isa)
    size_t fs_dwconv2d_scratch_floats(size_t k, size_t stride, size_t ih, size_t iw, size_t oh,
                                      size_t ow, size_t pad_top, size_t pad_left)
    int fs_dw_flat_kind(size_t k, size_t stride, size_t ih, size_t iw, size_t oh, size_t ow,
                        size_t pad_top, size_t pad_left)
    size_t FS_DW_FLAT_STAGE_ROWS
    size_t FS_DW_ROWS_MIN_W
    size_t FS_DW_QUARTER_MAX_OW
    size_t fs_conv2d_scratch_floats(size_t cin, size_t stride, size_t iw, size_t ow,
                                    size_t pad_left)

# cpuid traps to the hypervisor in a VM (~75 us measured on a KVM guest): ask once per ISA.
_SUPPORTED = [bool(fs_isa_supported(i)) for i in range(FS_ISA_COUNT)]


cdef extern from "csrc/fs_steps.h" nogil:
    enum:
        FS_STEP_SPMM
        FS_STEP_DWCONV2D
        FS_STEP_CONV2D
        FS_STEP_GAVGPOOL
        FS_STEP_VADD
        FS_STEP_SPMM_DWCONV2D
        FS_STEP_SPMM_KSPLIT
        FS_STEP_DWCONV2D_SPMM
        FS_STEP_CONV2D_DWCONV2D_SPMM
    ctypedef struct fs_spmm_part:
        const float* values
        const uint32_t* nnzmap
        const int32_t* offsets
        const int64_t* value_start
        const int64_t* nz_start
    ctypedef struct fs_spmm_args:
        fs_spmm_fn fn
        size_t hw, cin, cout, chunk, pieces, groups, nparts, part_mc
        const fs_spmm_part* parts
        const int64_t* bounds
        const int64_t* row_start
        const float* bias
        float lo, hi
        float* partial
        size_t plane, rchunk, rpieces
        fs_vadd_fn vadd
    ctypedef struct fs_dwconv2d_args:
        fs_dwconv2d_fn fn
        size_t c, ih, iw, oh, ow, pad_top, pad_left, taps, chunk, pieces, linked, halo_rows
        const float* weights
        const float* bias
        float lo, hi
        size_t scratch_floats
        size_t nbands, gap
        const int64_t* bands
    ctypedef struct fs_conv2d_args:
        fs_conv2d_fn fn
        size_t cin, ih, iw, oh, ow, pad_top, pad_left, cout, band, pieces
        size_t channel_stride, row_stride, pixel_stride
        const float* weights
        const float* bias
        float lo, hi
    ctypedef struct fs_gavgpool_args:
        fs_gavgpool_fn fn
        size_t c, hw, chunk, chunks
    ctypedef struct fs_vadd_args:
        fs_vadd_fn fn
        size_t n, chunk
        float lo, hi
    ctypedef struct fs_strides:
        size_t image, channel, piece
    ctypedef struct fs_step:
        int kind, src, res, dst
        fs_strides src_s, res_s, dst_s
        size_t items
        float* scratch
        size_t scratch_floats
        float* work
        size_t work_floats
        fs_spmm_args spmm
        fs_dwconv2d_args dw
        fs_conv2d_args conv
        fs_gavgpool_args pool
        fs_vadd_args vadd
        int64_t* claims
        size_t nclaims
    void fs_run_steps(const fs_step* steps, size_t count, float* const* tensors, int threads,
                      double* times, int each, double* done, int64_t* ran, int done_threads)
    void fs_run_images(const fs_step* const* steps, const size_t* counts, float** const* tables,
                       size_t ntensors, int lists, const float* x, size_t x_image, float* y,
                       size_t y_image, size_t per, double* times)


# Bands per thread of a first conv whose items are claimed (StepList._claimed): fine enough
# that a late thread's partner takes its first bands.
CLAIMED_BANDS = 14

# Largest byte offset the kernels' int32 offsets can hold.
cdef int64_t _OFFSET_LIMIT = 2147483647

OPENMP = bool(FS_OPENMP)


def isa_names():
    """Names of all ISA identifiers, indexed by id."""
    return [fs_isa_name(i).decode() for i in range(FS_ISA_COUNT)]


def isa_supported(int isa):
    """True if the variants for `isa` were compiled in and this CPU can run them."""
    return bool(fs_isa_supported(isa))


def spmm_kernels(int isa):
    """The spmm variants compiled for `isa`: a list of (name, mr, nr, unroll, prefetch)."""
    cdef size_t i
    cdef const fs_spmm_kernel* k
    out = []
    for i in range(fs_spmm_kernel_count(isa)):
        k = fs_spmm_kernel_at(isa, i)
        out.append((k.name.decode(), k.mr, k.nr, k.unroll, bool(k.prefetch)))
    return out


# Non-empty placeholders: an all-zero matrix has no value or offset to point at.
cdef float _ZERO_F = 0.0
cdef int32_t _ZERO_I = 0

# Bytes of one spmm tile's input rows (MR positions x the input channels of one part): wider
# inputs are split into parts of input channels (K-blocking, see fs_steps.h). 48 KiB beat
# 16-128 KiB by 3-10 % on the MobileNet layers (Xeon with a 48 KiB L1). A module attribute,
# so that tests can force parts.
SPMM_PART_BYTES = 48 * 1024
# Images of at least this many positions take parts a third larger (64 KiB): each part costs
# a pass over the tile's outputs, which there outweighs the L1 misses of a wider tile (v1 at
# 90 %, one thread: 2.78-2.82 -> 2.63-2.70 ms; bench spmm 3136x128x128 0.31 -> 0.24 ms),
# while the 14x14 and 7x7 projections ran 20-35 % slower with them on 2 threads.
SPMM_LARGE_IMAGE_HW = 784
# Below this many positions, a stand-alone 1x1 (the one-op API) with more output than input
# channels splits an image between threads by groups of output channels, not by positions:
# each thread then writes whole planes instead of half of every plane next to the other
# core's half (EPYC VM, 2 threads over one, sparse_conv1x1 at 90 %: 3136x144x24 1.40-1.41x
# -> 1.52-1.53x, 784x192x32 1.26-1.28x -> 1.51x). Projections keep the positions, where each
# thread reads half the larger input (3136x24x144: 1.85-1.91x by positions, 1.35-1.50x by
# channels).
SPMM_CHANNEL_SPLIT_MAX_HW = 8192


cdef class _Parts:
    """The C descriptors (fs_spmm_part) of a matrix cut into column ranges, for one image
    size; keeps the part matrices and their offsets (the arrays the table points into)
    alive."""
    cdef fs_spmm_part* table
    cdef list mats, offsets

    def __dealloc__(self):
        free(self.table)


cdef class SpmmWeights:
    """Packed sparse weights as the kernels read them, validated once.

    values    float32, per block and per non-zero column, the block's `rows` values
    nnzmap    uint32, non-zero columns per block (full blocks of `nr`, then single rows)
    columns   int32, the input channel of each non-zero column, increasing within a block
    """
    cdef readonly object values, nnzmap, columns
    cdef readonly Py_ssize_t rows, cols, nr
    # Caches. C steps point into what they hold, so an entry is never replaced: threads that
    # build one at the same time keep the first stored (dict.setdefault).
    cdef dict _offsets, _groups
    # Per block b (and b = nblocks): first row, first value, first non-zero column.
    cdef object _starts

    def __init__(self, values, nnzmap, columns, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t nr):
        if nr not in (1, 2, 4, 8):
            raise ValueError(f"nr must be 1, 2, 4 or 8, got {nr}")
        if rows < 1 or cols < 1:
            raise ValueError(f"rows and cols must be >= 1, got {rows} x {cols}")
        if rows > _OFFSET_LIMIT or cols > _OFFSET_LIMIT:
            raise ValueError(f"rows and cols must be < 2**31 (int32 indices of the packed "
                             f"format), got {rows} x {cols}")
        values = np.array(values, dtype=np.float32, order="C", copy=True).reshape(-1)
        nnzmap = _checked_ints(nnzmap, np.uint32, "nnzmap")
        columns = _checked_ints(columns, np.int32, "columns")
        nfull = rows // nr
        if nnzmap.shape[0] != nfull + rows % nr:
            raise ValueError(f"nnzmap must have {nfull + rows % nr} entries, got {nnzmap.shape[0]}")
        counts = nnzmap.astype(np.int64)
        if int(counts.sum()) != columns.shape[0]:
            raise ValueError("columns must have sum(nnzmap) entries")
        if int((counts[:nfull] * nr).sum() + counts[nfull:].sum()) != values.shape[0]:
            raise ValueError("values must hold one value per row of each non-zero column")
        if columns.shape[0]:
            if columns.min() < 0 or columns.max() >= cols:
                raise ValueError(f"columns must lie in [0, {cols})")
            block_start = np.zeros(columns.shape[0], dtype=bool)
            block_start[(np.cumsum(counts) - counts)[counts > 0]] = True
            rising = np.diff(columns) > 0
            if not np.all(rising | block_start[1:]):
                raise ValueError("columns must be strictly increasing within a block")
        for a in (values, nnzmap, columns):
            a.flags.writeable = False
        self.values, self.nnzmap, self.columns = values, nnzmap, columns
        self.rows, self.cols, self.nr = rows, cols, nr
        self._offsets = {}
        self._groups = {}
        rows_of = np.concatenate([np.full(nfull, nr, np.int64), np.ones(rows % nr, np.int64)])
        starts = np.zeros((3, nnzmap.shape[0] + 1), dtype=np.int64)
        np.cumsum(rows_of, out=starts[0, 1:])
        np.cumsum(counts * rows_of, out=starts[1, 1:])
        np.cumsum(counts, out=starts[2, 1:])
        self._starts = starts

    def groups(self, Py_ssize_t count):
        """`count` + 1 block indices splitting the blocks into runs of about equal work (the
        values to multiply, plus a row's epilogue), for threads that split output channels."""
        bounds = self._groups.get(count)
        if bounds is None:
            work = self._starts[1] + 8 * self._starts[0]  # cumulative work at each block start
            targets = work[work.shape[0] - 1] * np.arange(count + 1) / count  # (wraparound is off)
            bounds = np.searchsorted(work, targets).astype(np.int64)
            bounds[0], bounds[count] = 0, self.nnzmap.shape[0]
            bounds = self._groups.setdefault(count, bounds)
        return bounds

    def row_groups(self, Py_ssize_t rows):
        """Block indices splitting the blocks into groups of about `rows` rows, each starting
        at the first block at or after a multiple of `rows` (cached)."""
        key = ("rows", rows)
        bounds = self._groups.get(key)
        if bounds is None:
            if rows < 1:
                raise ValueError(f"rows must be >= 1, got {rows}")
            firsts = np.searchsorted(self._starts[0], np.arange(0, self.rows, rows))
            bounds = np.append(np.unique(firsts), self.nnzmap.shape[0]).astype(np.int64)
            bounds = self._groups.setdefault(key, bounds)
        return bounds

    def split(self, Py_ssize_t count):
        """The matrix as `count` matrices of the same shape and row blocks, part i holding
        the non-zero columns in [cols * i // count, cols * (i + 1) // count) (cached)."""
        key = ("split", count)
        mats = self._groups.get(key)
        if mats is None:
            if not 1 <= count <= self.cols:
                raise ValueError(f"count must be in [1, {self.cols}], got {count}")
            if count == 1:
                mats = [self]
            else:
                mats = []
                nb = self.nnzmap.shape[0]
                counts = self.nnzmap.astype(np.int64)
                rows_of = np.diff(self._starts[0])
                block = np.repeat(np.arange(nb), counts)  # block of each non-zero column
                rows_nz = rows_of[block]
                first_value = self._starts[1][block] + (
                    np.arange(block.shape[0]) - self._starts[2][block]) * rows_nz
                cols = self.columns.astype(np.int64)
                for i in range(count):
                    keep = ((cols >= self.cols * i // count)
                            & (cols < self.cols * (i + 1) // count))
                    r = rows_nz[keep]
                    values_at = (np.repeat(first_value[keep] - np.cumsum(r) + r, r)
                                 + np.arange(int(r.sum())))
                    mats.append(SpmmWeights(self.values[values_at],
                                            np.bincount(block[keep], minlength=nb),
                                            self.columns[keep], self.rows, self.cols, self.nr))
            mats = self._groups.setdefault(key, mats)
        return mats

    def part_table(self, Py_ssize_t count, Py_ssize_t hw):
        """The C descriptors of split(count) for images of hw positions (cached)."""
        key = ("parts", count, hw)
        cached = self._groups.get(key)
        if cached is not None:
            return cached
        cdef _Parts parts = _Parts()
        parts.mats = self.split(count)
        parts.offsets = [m.offsets(hw) for m in parts.mats]
        parts.table = <fs_spmm_part*>calloc(count, sizeof(fs_spmm_part))
        if parts.table == NULL:
            raise MemoryError()
        for i, m in enumerate(parts.mats):
            _fill_part(&parts.table[i], m, parts.offsets[i])
        return self._groups.setdefault(key, parts)

    def offsets(self, Py_ssize_t hw):
        """Byte offsets of each non-zero's input row for images of `hw` positions (cached)."""
        off = self._offsets.get(hw)
        if off is None:
            if hw < 1:
                raise ValueError(f"hw must be >= 1, got {hw}")
            if <int64_t>self.cols * hw * 4 > _OFFSET_LIMIT:
                raise ValueError(
                    f"an input of {self.cols} channels x {hw} positions exceeds the 2 GiB "
                    "per-image limit of the packed format (int32 byte offsets)")
            off = (self.columns.astype(np.int64) * (hw * 4)).astype(np.int32)
            off.flags.writeable = False
            off = self._offsets.setdefault(hw, off)
        return off


cdef int _fill_part(fs_spmm_part* p, SpmmWeights m, const int32_t[::1] offsets) except -1:
    cdef const float[::1] values = m.values
    cdef const uint32_t[::1] nnzmap = m.nnzmap
    cdef const int64_t[:, ::1] starts = m._starts
    p.values = &values[0] if values.shape[0] else &_ZERO_F
    p.nnzmap = &nnzmap[0]
    p.offsets = &offsets[0] if offsets.shape[0] else &_ZERO_I
    p.value_start, p.nz_start = &starts[1, 0], &starts[2, 0]
    return 0


def _checked_ints(a, dtype, name):
    """A C-contiguous copy of `a` as `dtype`, refusing values the type cannot hold (an
    int64 column index of 2**32 + 1 must not wrap around to 1)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu" and a.size:
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    info = np.iinfo(dtype)
    if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
        raise ValueError(f"{name} must lie in [{info.min}, {info.max}] ({np.dtype(dtype).name})")
    return np.array(a, dtype=dtype, order="C", copy=True).reshape(-1)


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef Py_ssize_t _spatial_chunk(Py_ssize_t n, Py_ssize_t hw, int num_threads) noexcept:
    """Positions per piece when threads split each image's positions, or 0 when they do not:
    with fewer images than 2 per thread and at least 128 positions per thread. One piece per
    thread, cut on 16-float boundaries; the 1x1 steps and the stride-1 depthwise steps of one
    image size cut at the same positions, so a thread mostly reads what it wrote itself (data
    written by the other core costs 2-3x the kernel time on small layers)."""
    if num_threads < 2 or n >= 2 * num_threads or hw < 128 * num_threads:
        return 0
    return _ceil_div(_ceil_div(hw, num_threads), 16) * 16


# Padding beyond this is refused (chw.py checks it for the public functions): scratch sizes
# computed from it must not wrap around.
MAX_PADDING = 1 << 16


def _owned(a):
    """A private float32 copy of a weight or bias a StepList keeps pointing into (None stays
    None): the caller's object could be resized or freed after the step is added."""
    return None if a is None else np.array(a, dtype=np.float32, order="C", copy=True)


cdef const float* _bias_pointer(object bias, Py_ssize_t rows) except? NULL:
    """The float32 data of a bias of `rows` entries, or NULL for None. The caller holds `bias`,
    which keeps the buffer alive while the kernels read it."""
    if bias is None:
        return NULL
    cdef const float[::1] b = bias
    if b.shape[0] != rows:
        raise ValueError(f"bias must have {rows} entries")
    return &b[0]


cdef const fs_chw_ops* _chw_ops(int isa) except NULL:
    cdef const fs_chw_ops* ops = fs_chw_ops_for(isa) if 0 <= isa < FS_ISA_COUNT else NULL
    if ops == NULL or not _SUPPORTED[isa]:
        raise ValueError(f"no runnable CHW kernels for ISA {isa}")
    return ops


def chw_kernels(int isa):
    """Names of the CHW kernels of `isa`: {op: name} (dwconv2d keyed by (k, stride))."""
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    out = {}
    for a, k in enumerate((3, 5)):
        for b, s in enumerate((1, 2)):
            out[("dwconv2d", k, s)] = ops.dwconv2d_names[a][b].decode()
    out[("conv2d", 3, 1)] = ops.conv2d_names[0].decode()
    out[("conv2d", 3, 2)] = ops.conv2d_names[1].decode()
    out["gavgpool"] = ops.gavgpool_name.decode()
    out["vadd"] = ops.vadd_name.decode()
    return out


# ---- Steps: each op checks its arguments and fills one fs_step (csrc/fs_steps.h) ----------
#
# A step records kernel, sizes, thread split and weight pointers; its tensors are table
# indices (src, res, dst), bound to data only when it runs. The one-op functions below run a
# single step over the caller's arrays; a StepList runs a whole network's steps over planned
# buffers. Either way the arrays a step was checked against have exactly the shapes of the
# ones it runs on. Weight pointers stay valid because the caller keeps the weight objects.

cdef fs_strides _tensor_strides(Py_ssize_t n, Py_ssize_t c, Py_ssize_t plane, Py_ssize_t s0,
                                Py_ssize_t s1, str name) except *:
    """Image and channel strides, in floats, of a tensor of n images x c planes of `plane`
    contiguous positions, from its byte strides; planes and images must not overlap. The
    images may also be bands of every plane (one image seen as row pieces, StepList)."""
    cdef Py_ssize_t f = sizeof(float)
    if (s0 < 0 or s1 < 0 or s0 % f or s1 % f or (c > 1 and s1 < plane * f)
            or (n > 1 and s0 < plane * f)
            or (n > 1 and s0 < c * s1 and not (n * s0 <= s1 and plane * f <= s0))):
        raise ValueError(f"{name} must hold its planes without overlap (strides {s0}, {s1})")
    cdef fs_strides r
    r.image, r.channel = s0 // sizeof(float), s1 // sizeof(float)
    r.piece = 0  # whole images (row pieces: StepList._piece_strides)
    return r


cdef int _check_rows(Py_ssize_t h, Py_ssize_t w, Py_ssize_t s2, Py_ssize_t s3,
                     str name) except -1:
    """A 4-D tensor's planes must be contiguous (rows back to back)."""
    if (h > 1 and s2 != w * <Py_ssize_t>sizeof(float)) or (w > 1 and s3 != sizeof(float)):
        raise ValueError(f"{name} must have contiguous planes")
    return 0


cdef int _check_positions(Py_ssize_t hw, Py_ssize_t s2, str name) except -1:
    """A 3-D (N, C, HW) tensor's planes must be contiguous."""
    if hw > 1 and s2 != sizeof(float):
        raise ValueError(f"{name} must have contiguous planes")
    return 0


cdef int _spmm_step(fs_step* st, int isa, Py_ssize_t kernel, SpmmWeights w,
                    const float[:, :, :] x, bias, residual, float[:, :, :] out, float lo,
                    float hi, int num_threads, Py_ssize_t image_hw=0,
                    bint split_channels=False, Py_ssize_t sweep_rows=0,
                    bint even_parts=False) except -1:
    if kernel < 0 or <size_t>kernel >= fs_spmm_kernel_count(isa) or not fs_isa_supported(isa):
        raise ValueError(f"no runnable spmm kernel {kernel} for ISA {isa}")
    cdef const fs_spmm_kernel* k = fs_spmm_kernel_at(isa, kernel)
    if k.nr != w.nr:
        raise ValueError(f"kernel {k.name.decode()} needs blocks of {k.nr}, weights have {w.nr}")
    cdef Py_ssize_t n = x.shape[0], cin = x.shape[1], hw = x.shape[2], cout = w.rows
    if cin != w.cols:
        raise ValueError(f"x has {cin} channels, weights expect {w.cols}")
    if out.shape[0] != n or out.shape[1] != cout or out.shape[2] != hw:
        raise ValueError("out must have shape (N, rows, HW)")
    if not (lo <= hi):
        raise ValueError("lo must be <= hi")
    st.spmm.bias = _bias_pointer(bias, cout)
    cdef const float[:, :, :] r
    if residual is not None:
        r = residual
        if r.shape[0] != n or r.shape[1] != cout or r.shape[2] != hw:
            raise ValueError("residual must have the shape of out")
        _check_positions(hw, r.strides[2], "residual")
    _check_positions(hw, x.strides[2], "x")
    _check_positions(hw, out.strides[2], "out")
    st.kind, st.spmm.lo, st.spmm.hi, st.items = FS_STEP_SPMM, lo, hi, 0
    if n == 0 or hw == 0:
        return 0
    st.src_s = _tensor_strides(n, cin, hw, x.strides[0], x.strides[1], "x")
    st.dst_s = _tensor_strides(n, cout, hw, out.strides[0], out.strides[1], "out")
    if residual is not None:
        st.res_s = _tensor_strides(n, cout, hw, r.strides[0], r.strides[1], "residual")
    cdef const uint32_t[::1] nnzmap = w.nnzmap
    cdef Py_ssize_t mr = k.mr
    if num_threads < 1:
        num_threads = 1
    # Fewer images than 2 per thread: threads split each image, by positions where it is large
    # enough (_spatial_chunk), else by output blocks, in runs of equal work, each over all
    # positions (7x7 is one tile). A stand-alone call (`split_channels`) takes the blocks below
    # SPMM_CHANNEL_SPLIT_MAX_HW when it has more output than input channels; in a step list
    # the next step may cut by positions and would then read the other cores' planes. Rows
    # and positions are independent, so results stay bit-identical.
    cdef Py_ssize_t chunk = _spatial_chunk(n, hw, num_threads), pieces = 1
    if split_channels and chunk and hw < SPMM_CHANNEL_SPLIT_MAX_HW and cout > cin:
        chunk = 0
    cdef Py_ssize_t nblocks = nnzmap.shape[0], groups = 1
    if chunk:
        pieces = _ceil_div(hw, chunk)
    else:
        chunk = hw
        if num_threads > 1 and n < 2 * num_threads and nblocks > 1:
            groups = min(nblocks, _ceil_div(2 * num_threads, n))
    # Sweeps: each item runs one group of about sweep_rows rows over all of its positions
    # (_dispatch.spmm_sweep_rows), the groups of a piece one after another on one thread.
    if sweep_rows < 0:
        raise ValueError(f"sweep_rows must be >= 0, got {sweep_rows}")
    cdef const int64_t[::1] bounds
    if sweep_rows:
        bounds = w.row_groups(sweep_rows)
        groups = bounds.shape[0] - 1
    else:
        bounds = w.groups(groups)
    cdef const int64_t[:, ::1] starts = w._starts
    # K-blocking: input channels in parts of about SPMM_PART_BYTES per tile (see fs_steps.h).
    # The parts fix the sums' association: sized by the whole image's positions (image_hw)
    # when x is its row pieces, so that the bytes do not depend on the cut.
    cdef Py_ssize_t part_bytes = SPMM_PART_BYTES
    if max(hw, image_hw) >= SPMM_LARGE_IMAGE_HW:
        part_bytes = SPMM_PART_BYTES * 4 // 3
    cdef Py_ssize_t nparts = min(cin, _ceil_div(min(mr, max(hw, image_hw)) * cin * sizeof(float),
                                                part_bytes))
    # A K-split step sums parts [0, nparts / 2) and the rest apart, on two threads: an even
    # count gives them equal halves of the input channels, the ones a channel-split step
    # before wrote on each (3 parts made 1/3 : 2/3: MobileNet v2's 576 -> 160 at 7x7 took
    # 13.6-14.0 us on 2 threads, 10.8-11.4 with 4).
    if even_parts and nparts % 2 and nparts < cin:
        nparts += 1
    cdef _Parts parts = w.part_table(nparts, st.src_s.channel)
    st.spmm.fn = k.fn
    st.spmm.hw, st.spmm.cin, st.spmm.cout = hw, cin, cout
    st.spmm.chunk, st.spmm.pieces, st.spmm.groups = chunk, pieces, groups
    st.spmm.nparts, st.spmm.part_mc, st.spmm.parts = nparts, mr, parts.table
    st.spmm.bounds = &bounds[0]
    st.spmm.row_start = &starts[0, 0]
    st.items = n * pieces * groups
    return 0


cdef int _dwconv2d_step(fs_step* st, int isa, const float[:, :, :, :] x, const float[:, ::1] w,
                        bias, float[:, :, :, :] out, Py_ssize_t k, Py_ssize_t stride,
                        Py_ssize_t pad_top, Py_ssize_t pad_left, float lo, float hi,
                        int num_threads) except -1:
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    if k != 3 and k != 5:
        raise ValueError(f"k must be 3 or 5, got {k}")
    if stride != 1 and stride != 2:
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if not (0 <= pad_top <= MAX_PADDING and 0 <= pad_left <= MAX_PADDING):
        raise ValueError(f"padding must be in [0, {MAX_PADDING}]")
    if not (lo <= hi):
        raise ValueError("lo must be <= hi")
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], ih = x.shape[2], iw = x.shape[3]
    cdef Py_ssize_t oh = out.shape[2], ow = out.shape[3]
    if w.shape[0] != c or w.shape[1] != k * k:
        raise ValueError(f"w must have shape ({c}, {k * k})")
    if out.shape[0] != n or out.shape[1] != c:
        raise ValueError("out must have shape (N, C, OH, OW)")
    st.dw.bias = _bias_pointer(bias, c)
    st.kind, st.dw.lo, st.dw.hi, st.items = FS_STEP_DWCONV2D, lo, hi, 0
    if n == 0 or c == 0 or oh == 0 or ow == 0:
        return 0
    if ih == 0 or iw == 0:
        raise ValueError("x must have H, W >= 1")
    _check_rows(ih, iw, x.strides[2], x.strides[3], "x")
    _check_rows(oh, ow, out.strides[2], out.strides[3], "out")
    st.src_s = _tensor_strides(n, c, ih * iw, x.strides[0], x.strides[1], "x")
    st.dst_s = _tensor_strides(n, c, oh * ow, out.strides[0], out.strides[1], "out")
    st.dw.weights = &w[0, 0]
    st.dw.fn = ops.dwconv2d[k == 5][stride == 2]
    st.dw.c, st.dw.ih, st.dw.iw, st.dw.oh, st.dw.ow = c, ih, iw, oh, ow
    st.dw.pad_top, st.dw.pad_left, st.dw.taps = pad_top, pad_left, k * k
    st.dw.scratch_floats = fs_dwconv2d_scratch_floats(k, stride, ih, iw, oh, ow, pad_top,
                                                        pad_left)
    st.scratch_floats = st.dw.scratch_floats
    cdef Py_ssize_t chunk = 0
    if fs_dw_flat_kind(k, stride, ih, iw, oh, ow, pad_top, pad_left) == 1:
        chunk = _spatial_chunk(n, oh * ow, num_threads)
    if chunk:
        st.dw.chunk, st.dw.pieces = chunk, _ceil_div(oh * ow, chunk)
        st.items = n * st.dw.pieces
    else:
        st.items = n * c
    return 0


cdef int _conv2d_step(fs_step* st, int isa, const float[:, :, :, :] xv, bint nhwc,
                      const float[:, ::1] w, bias, float[:, :, :, :] out, Py_ssize_t stride,
                      Py_ssize_t pad_top, Py_ssize_t pad_left, float lo, float hi,
                      int num_threads, Py_ssize_t per_thread=2) except -1:
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    if stride != 1 and stride != 2:
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if not (0 <= pad_top <= MAX_PADDING and 0 <= pad_left <= MAX_PADDING):
        raise ValueError(f"padding must be in [0, {MAX_PADDING}]")
    if not (lo <= hi):
        raise ValueError("lo must be <= hi")
    cdef Py_ssize_t n = xv.shape[0], cin, ih, iw
    cdef size_t cs, rs, ps
    if nhwc:
        ih, iw, cin = xv.shape[1], xv.shape[2], xv.shape[3]
        cs, rs, ps = sizeof(float), iw * cin * sizeof(float), cin * sizeof(float)
    else:
        cin, ih, iw = xv.shape[1], xv.shape[2], xv.shape[3]
        cs, rs, ps = ih * iw * sizeof(float), iw * sizeof(float), sizeof(float)
    cdef Py_ssize_t cout = w.shape[0], oh = out.shape[2], ow = out.shape[3]
    if w.shape[1] != cin * 9:
        raise ValueError(f"w must have shape (Cout, {cin * 9})")
    if out.shape[0] != n or out.shape[1] != cout:
        raise ValueError("out must have shape (N, Cout, OH, OW)")
    st.conv.bias = _bias_pointer(bias, cout)
    st.kind, st.conv.lo, st.conv.hi, st.items = FS_STEP_CONV2D, lo, hi, 0
    if n == 0 or cout == 0 or oh == 0 or ow == 0:
        return 0
    if cin == 0 or ih == 0 or iw == 0:
        raise ValueError("x must have Cin, H, W >= 1")
    cdef Py_ssize_t d, expect = sizeof(float)
    for d in range(3, -1, -1):  # the kernel reads x through its own C-contiguous strides
        if xv.shape[d] > 1 and xv.strides[d] != expect:
            raise ValueError("x must be C-contiguous")
        expect *= xv.shape[d]
    st.src_s.image = cin * ih * iw
    _check_rows(oh, ow, out.strides[2], out.strides[3], "out")
    st.dst_s = _tensor_strides(n, cout, oh * ow, out.strides[0], out.strides[1], "out")
    if num_threads < 1:
        num_threads = 1
    # Bands of rows: ~`per_thread` per thread and image (each band restages up to 2 extra
    # input rows).
    cdef Py_ssize_t pieces = (min(oh, max(1, _ceil_div(per_thread * num_threads, n)))
                              if num_threads > 1 else 1)
    cdef Py_ssize_t band = _ceil_div(oh, pieces)
    pieces = _ceil_div(oh, band)
    st.conv.weights = &w[0, 0]
    st.conv.fn = ops.conv2d[stride == 2]
    st.conv.cin, st.conv.ih, st.conv.iw, st.conv.oh, st.conv.ow = cin, ih, iw, oh, ow
    st.conv.pad_top, st.conv.pad_left, st.conv.cout = pad_top, pad_left, cout
    st.conv.band, st.conv.pieces = band, pieces
    st.conv.channel_stride, st.conv.row_stride, st.conv.pixel_stride = cs, rs, ps
    st.scratch_floats = fs_conv2d_scratch_floats(cin, stride, iw, ow, pad_left)
    st.items = n * pieces
    return 0


cdef int _gavgpool_step(fs_step* st, int isa, const float[:, :, :] x,
                        float[:, ::1] out, int num_threads=1) except -1:
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], hw = x.shape[2]
    if out.shape[0] != n or out.shape[1] != c:
        raise ValueError("out must have shape (N, C)")
    st.kind, st.items = FS_STEP_GAVGPOOL, 0
    if n == 0 or c == 0:
        return 0
    if hw == 0:
        raise ValueError("x must have H * W >= 1")
    _check_positions(hw, x.strides[2], "x")
    st.src_s = _tensor_strides(n, c, hw, x.strides[0], x.strides[1], "x")
    st.dst_s = _tensor_strides(n, 1, c, out.strides[0], c * sizeof(float), "out")
    st.pool.fn, st.pool.c, st.pool.hw = ops.gavgpool, c, hw
    # Fewer images than 2 per thread: runs of channels, one per thread (a channel's sum is
    # the same in any run).
    st.pool.chunk = _ceil_div(c, num_threads) if 1 < num_threads and n < 2 * num_threads else c
    st.pool.chunks = _ceil_div(c, st.pool.chunk)
    st.items = n * st.pool.chunks
    return 0


cdef int _vadd_step(fs_step* st, int isa, const float[::1] a, const float[::1] b,
                    float[::1] y, float lo, float hi, int num_threads) except -1:
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    cdef Py_ssize_t n = a.shape[0]
    if b.shape[0] != n or y.shape[0] != n:
        raise ValueError("a, b and y must have the same length")
    if not (lo <= hi):
        raise ValueError("lo must be <= hi")
    st.kind, st.vadd.lo, st.vadd.hi, st.items = FS_STEP_VADD, lo, hi, 0
    if n == 0:
        return 0
    if num_threads < 1:
        num_threads = 1
    # Threads only pay off past ~64K floats; chunks are multiples of 64 floats.
    cdef Py_ssize_t pieces = min(num_threads, max(1, n // 65536))
    cdef Py_ssize_t chunk = _ceil_div(_ceil_div(n, pieces), 64) * 64
    st.vadd.fn, st.vadd.n, st.vadd.chunk = ops.vadd, n, chunk
    st.items = _ceil_div(n, chunk)
    return 0


cdef int _run_one(fs_step* st, const float* x, const float* res, float* y,
                  int num_threads) except -1:
    """Runs one filled step over the caller's arrays (tensor table: x, res, y), with zeroed
    scratch for each thread if the kernel needs it."""
    if st.items == 0:
        return 0
    num_threads = <int>min(<size_t>max(num_threads, 1), st.items)
    cdef float[::1] scratch
    if st.scratch_floats:
        scratch = np.zeros(st.scratch_floats * num_threads, dtype=np.float32)
        st.scratch = &scratch[0]
    cdef float* table[3]
    table[0], table[1], table[2] = <float*>x, <float*>res, y
    st.src, st.res, st.dst = 0, 1 if res != NULL else -1, 2
    with nogil:
        fs_run_steps(st, 1, table, num_threads, NULL, 0, NULL, NULL, 0)
    return 0


DW_FLAT_STAGE_ROWS = FS_DW_FLAT_STAGE_ROWS
DW_ROWS_MIN_W = FS_DW_ROWS_MIN_W


def dw_piece_kind(Py_ssize_t pieces, Py_ssize_t k, Py_ssize_t stride, Py_ssize_t ih,
                  Py_ssize_t iw, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t pad_top,
                  Py_ssize_t pad_left):
    """The flat path a depthwise conv runs its `pieces` row pieces on (each piece a plane,
    halo rows from its neighbours), or 0 if it cannot: 'same' padding, sizes that cut, and on
    the stride-1 path pieces of at least k // 2 rows, and either at most DW_FLAT_STAGE_ROWS
    rows (a staged copy) or at least DW_ROWS_MIN_W wide (whole rows in place)."""
    if pieces < 1 or ih % pieces or oh % pieces or ih // pieces < k // 2:
        return 0  # (a piece must hold the k // 2 halo rows its neighbours read)
    kind = fs_dw_flat_kind(k, stride, ih // pieces, iw, oh // pieces, ow, pad_top, pad_left)
    if (kind == 1 and ih // pieces > <Py_ssize_t>FS_DW_FLAT_STAGE_ROWS
            and iw < <Py_ssize_t>FS_DW_ROWS_MIN_W):
        return 0
    return kind


def fused_writes_pieces(Py_ssize_t pieces, Py_ssize_t k, Py_ssize_t stride, Py_ssize_t ih,
                        Py_ssize_t iw, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t pad_top,
                        Py_ssize_t pad_left):
    """Whether a fused 1x1 + depthwise step in `pieces` bands of rows can write an output in
    as many row pieces: its bands (_row_bands) must cut at the pieces."""
    if pieces < 2 or oh % pieces:
        return False
    cuts = _row_bands(pieces, k, stride, ih, iw, oh, ow, pad_top, pad_left)[0::4].tolist()
    return cuts == [i * (oh // pieces) * ow for i in range(pieces)]


def dw_spmm_band_rows(Py_ssize_t pieces, Py_ssize_t k, Py_ssize_t stride, Py_ssize_t ih,
                      Py_ssize_t iw, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t pad_top,
                      Py_ssize_t pad_left, Py_ssize_t rows):
    """The rows of each band of a fused depthwise + 1x1 step (add_dwconv2d_spmm) on an input
    in `pieces` row pieces (0: one image): the largest divisor of a piece's rows up to `rows`
    whose positions are whole 16-float vectors, at least 4 rows (the largest block of rows
    the depthwise rows path takes on any ISA, FS_DW_ROW_BLOCK); or 0 if there is none, or if
    the depthwise conv is not a stride-1 'same' one on planes at least DW_ROWS_MIN_W wide
    (or, in row pieces, pieces taller than DW_FLAT_STAGE_ROWS), whose kernel reads bands of
    rows in place."""
    cdef Py_ssize_t p = max(pieces, 1)
    if (stride != 1 or ih % p or oh != ih or ow != iw
            or fs_dw_flat_kind(k, stride, ih // p, iw, ih // p, iw, pad_top, pad_left) != 1
            or iw < <Py_ssize_t>FS_DW_ROWS_MIN_W
            or (p > 1 and ih // p <= <Py_ssize_t>FS_DW_FLAT_STAGE_ROWS)):
        return 0
    for r in range(min(rows, ih // p), 3, -1):
        if (ih // p) % r == 0 and r * iw % 16 == 0:
            return r
    return 0


def _row_bands(Py_ssize_t bands, Py_ssize_t k, Py_ssize_t stride, Py_ssize_t ih,
               Py_ssize_t iw, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t pad_top,
               Py_ssize_t pad_left):
    """The depthwise output rows of a fused step cut into about `bands` bands of nearly equal
    rows (on the stride-1 flat path, each band starting on a 16-float position: the kernel's
    ranges there are in whole vectors): per band the output positions [begin, end) and the
    input positions its taps use, whole rows widened to 16-float positions (the 1x1 then
    runs on aligned vectors), as int64 quadruples."""
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    flat = fs_dw_flat_kind(k, stride, ih, iw, oh, ow, pad_top, pad_left) == 1
    cuts = [0]
    for i in range(1, bands):
        oy = max(cuts[len(cuts) - 1] + 1, (i * oh + bands // 2) // bands)
        while flat and oy < oh and oy * ow % 16:
            oy += 1
        if oy < oh:
            cuts.append(oy)
    cuts.append(oh)
    table = []
    for oy0, oy1 in zip(cuts, cuts[1:]):
        r0 = max(0, oy0 * stride - pad_top)
        r1 = min(ih, (oy1 - 1) * stride - pad_top + k)
        table += [oy0 * ow, oy1 * ow, r0 * iw // 16 * 16,
                  min(ih * iw, _ceil_div(max(r1, r0) * iw, 16) * 16)]
    return np.array(table, dtype=np.int64)


cdef float* _data(object a, bint write) except? NULL:
    """The first float of an array, for the tensor table: float32, non-negative strides, rows
    contiguous (the steps check the rest against each op's shapes). Tensors that are only
    read (the input) may be read-only arrays."""
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32
            and (a.flags.writeable or not write) and min(a.strides, default=0) >= 0
            and (a.ndim == 0 or a.shape[a.ndim - 1] <= 1
                 or a.strides[a.ndim - 1] == sizeof(float))):  # (wraparound is off)
        raise ValueError(f"tensors must be {'writeable ' if write else ''}float32 numpy arrays "
                         "with contiguous rows")
    if a.size == 0:
        return NULL
    return <float*><size_t>a.ctypes.data


def spmm(int isa, Py_ssize_t kernel, SpmmWeights w, const float[:, :, ::1] x, bias,
         residual, float[:, :, ::1] out, float lo, float hi, int num_threads,
         Py_ssize_t sweep_rows=0):
    """out[n] = clamp(W @ x[n] + bias + residual[n], lo, hi) for x of shape (N, cols, HW).

    Threads split (image, spatial chunk) pairs, or output blocks of small images; an output's
    sum runs over its row's non-zeros in the same order wherever the tiles are cut, so the
    result does not depend on the thread count. sweep_rows > 0: groups of about that many
    rows, each over all positions (_dispatch.spmm_sweep_rows); the same bytes."""
    cdef fs_step st
    memset(&st, 0, sizeof(st))
    _spmm_step(&st, isa, kernel, w, x, bias, residual, out, lo, hi, num_threads, 0, True,
               sweep_rows)
    if st.items == 0:
        return
    cdef const float[:, :, ::1] r
    cdef const float* rptr = NULL
    if residual is not None:
        r = residual
        rptr = &r[0, 0, 0]
    _run_one(&st, &x[0, 0, 0], rptr, &out[0, 0, 0], num_threads)


def dwconv2d(int isa, const float[:, :, :, ::1] x, const float[:, ::1] w, bias,
             float[:, :, :, ::1] out, Py_ssize_t k, Py_ssize_t stride, Py_ssize_t pad_top,
             Py_ssize_t pad_left, float lo, float hi, int num_threads):
    """out[n, c] = clamp(depthwise KxK conv of x[n, c] with w[c] (k*k floats) + bias[c]).

    Threads split (image, channel) planes, or, on the stride-1 flat path with few images,
    (image, range of positions) pairs; an output's taps are summed in the same order either
    way, so the result does not depend on the thread count."""
    cdef fs_step st
    memset(&st, 0, sizeof(st))
    _dwconv2d_step(&st, isa, x, w, bias, out, k, stride, pad_top, pad_left, lo, hi, num_threads)
    if st.items:
        _run_one(&st, &x[0, 0, 0, 0], NULL, &out[0, 0, 0, 0], num_threads)


def conv2d(int isa, x, bint nhwc, const float[:, ::1] w, bias, float[:, :, :, ::1] out,
           Py_ssize_t stride, Py_ssize_t pad_top, Py_ssize_t pad_left, float lo, float hi,
           int num_threads):
    """Dense 3x3 convolution, NCHW output; x is (N, Cin, H, W), or (N, H, W, Cin) if nhwc.

    Threads split (image, band of output rows) pairs; a row's result does not depend on the
    band it falls in."""
    cdef const float[:, :, :, ::1] xv = x
    cdef fs_step st
    memset(&st, 0, sizeof(st))
    _conv2d_step(&st, isa, xv, nhwc, w, bias, out, stride, pad_top, pad_left, lo, hi,
                 num_threads)
    if st.items:
        _run_one(&st, &xv[0, 0, 0, 0], NULL, &out[0, 0, 0, 0], num_threads)


def gavgpool(int isa, const float[:, :, ::1] x, float[:, ::1] out):
    """out[n, c] = mean of x[n, c, :] for x of shape (N, C, HW), HW >= 1."""
    cdef fs_step st
    memset(&st, 0, sizeof(st))
    _gavgpool_step(&st, isa, x, out)
    if st.items:
        _run_one(&st, &x[0, 0, 0], NULL, &out[0, 0], 1)


def vadd(int isa, const float[::1] a, const float[::1] b, float[::1] y, float lo, float hi,
         int num_threads):
    """y = clamp(a + b, lo, hi), split in chunks of whole 64-float blocks across threads."""
    cdef fs_step st
    memset(&st, 0, sizeof(st))
    _vadd_step(&st, isa, a, b, y, lo, hi, num_threads)
    if st.items:
        _run_one(&st, &a[0], &b[0], &y[0], num_threads)


# Bumped whenever the ISA or the default thread count changes: a StepList pinned before then
# (StepList.pin) no longer takes run_pinned() calls, whose O(1) checks cannot see the settings.
cdef Py_ssize_t _config_epoch = 1
cdef object _ndarray = np.ndarray
cdef object _empty = np.empty
cdef object _float32 = np.dtype(np.float32)


def config_changed():
    """Unpins every StepList (the ISA or the default thread count changed)."""
    global _config_epoch
    _config_epoch += 1


def config_epoch():
    return _config_epoch


cdef class StepList:
    """The kernel calls of a network over numbered tensors, run in one parallel region.

    ``tensors[i]`` is the float32 array tensor i lives in (arrays may share memory when the
    tensors' lifetimes do not overlap), or None if unused. Tensor 0 and the last tensor are
    the network's input and output: their arrays here only fix the shapes; each run() is
    given new ones. Not reentrant: one call at a time (the executor keeps one StepList per
    concurrent call).

    ``pieces[i] = P >= 2`` says tensor i holds one image in P row pieces (fs_steps.h): its
    array is (P, C, H / P, W), piece p holding rows [p H / P, (p + 1) H / P) of every channel.
    Every step over such a tensor runs one piece per item (the pieces cut where the threads
    do when P is the thread count), and views its other tensors, of one image, as P pieces
    too; depthwise steps read the rows around each piece from its neighbours."""
    cdef fs_step* _steps
    cdef Py_ssize_t _count, _cap, _ntensors
    cdef float** _table
    cdef list _tensors, _keep, _pieces
    cdef bint _busy, _work_ok
    cdef object _work
    cdef readonly int num_threads
    cdef size_t* _spans  # byte ranges [lo, hi) of the tensors between input and output,
    cdef Py_ssize_t _nspans  # sorted by lo
    cdef Py_ssize_t _epoch  # _config_epoch at pin(), or 0
    cdef Py_ssize_t _in_dims[4]  # tensor 0's shape if it has 4 dimensions, for run_pinned()
    cdef bint _in_4d
    cdef tuple _out_shape

    def __cinit__(self, list tensors, int num_threads, pieces=None):
        self._ntensors = len(tensors)
        if self._ntensors < 2:
            raise ValueError("a step list needs at least an input and an output tensor")
        self._pieces = [0] * self._ntensors if pieces is None else [int(p) for p in pieces]
        if len(self._pieces) != self._ntensors:
            raise ValueError(f"pieces must have {self._ntensors} entries")
        for i, npieces in enumerate(self._pieces):
            if npieces == 0 or npieces == 1:
                self._pieces[i] = 0
            elif (npieces < 0 or i == 0 or i == self._ntensors - 1 or tensors[i] is None
                  or tensors[i].ndim != 4 or tensors[i].shape[0] != npieces):
                raise ValueError(f"pieces[{i}] = {npieces}: tensor {i} is not an array of "
                                 f"{npieces} row pieces (the input and the output cannot be)")
            else:  # rows back to back in planes, planes and pieces apart (_whole, fs_steps.h)
                a = tensors[i]
                _check_rows(a.shape[2], a.shape[3], a.strides[2], a.strides[3], f"tensor {i}")
                _tensor_strides(npieces, a.shape[1], a.shape[2] * a.shape[3], a.strides[0],
                                a.strides[1], f"tensor {i}")
                if a.strides[0] < a.shape[1] * a.strides[1]:
                    raise ValueError(f"tensor {i}'s row pieces must not share planes")
        self._table = <float**>calloc(self._ntensors, sizeof(float*))
        if self._table == NULL:
            raise MemoryError()
        spans = []
        for i, a in enumerate(tensors):
            if a is not None:
                p = _data(a, True)
                if a.ndim == 4:  # the steps see (N, C, H * W): a view only if rows abut
                    _check_rows(a.shape[2], a.shape[3], a.strides[2], a.strides[3],
                                f"tensor {i}")
                if 0 < i < self._ntensors - 1:
                    self._table[i] = p
                    if p != NULL:  # strides are >= 0 (_data)
                        lo = <size_t>p
                        spans.append((lo, lo + a.itemsize + sum(
                            (d - 1) * st for d, st in zip(a.shape, a.strides))))
        spans.sort()
        self._spans = <size_t*>malloc((2 * len(spans) + 1) * sizeof(size_t))
        if self._spans == NULL:
            raise MemoryError()
        for i, (lo, hi) in enumerate(spans):
            self._spans[2 * i], self._spans[2 * i + 1] = lo, hi
        self._nspans = len(spans)
        self._tensors = list(tensors)
        # run_pinned() takes C-contiguous input and output only: templates of another layout
        # (padded planes) leave it off.
        self._in_4d = (tensors[0] is not None and tensors[0].ndim == 4
                       and tensors[0].flags.c_contiguous)
        if self._in_4d:
            for i in range(4):
                self._in_dims[i] = tensors[0].shape[i]
        if (tensors[self._ntensors - 1] is not None
                and tensors[self._ntensors - 1].flags.c_contiguous):
            self._out_shape = tuple(tensors[self._ntensors - 1].shape)
        self._keep = []
        self.num_threads = max(1, num_threads)

    def __dealloc__(self):
        free(self._steps)
        free(self._table)
        free(self._spans)

    def kinds(self):
        """The kind of each step (FS_STEP_* in fs_steps.h): for tests and profiles."""
        return [self._steps[i].kind for i in range(self._count)]

    def spmm_parts(self):
        """Per step, the input-channel parts its 1x1 sums (0 for a step without one): for
        tests."""
        return [self._steps[i].spmm.nparts if self._steps[i].spmm.fn != NULL else 0
                for i in range(self._count)]

    def __len__(self):
        return self._count

    cdef object _tensor(self, int i, bint as3d):
        """Tensor i's array, or its (N, C, -1) view."""
        if not 0 <= i < self._ntensors or self._tensors[i] is None:
            raise ValueError(f"no tensor {i}")
        a = self._tensors[i]
        return a.reshape(a.shape[0], a.shape[1], -1) if as3d else a

    cdef int _step_pieces(self, tuple roles) except -1:
        """The row pieces the step over tensors `roles` runs in: those of its tensors in row
        pieces (all the same), or 0."""
        got = {self._pieces[t] for t in roles if t >= 0} - {0}
        if len(got) > 1:
            raise ValueError(f"tensors {roles} are in different numbers of row pieces {got}")
        return got.pop() if got else 0

    cdef object _as_pieces(self, int i, Py_ssize_t p, bint as3d):
        """Tensor i (row pieces, or one image) seen as p row pieces: (p, C, H / p, W), or
        (p, C, -1) if as3d."""
        a = self._tensor(i, False)
        if self._pieces[i] == 0:
            if a.ndim != 4 or a.shape[0] != 1 or a.shape[2] % p:
                raise ValueError(f"tensor {i} of shape {a.shape} cannot be cut into {p} row "
                                 "pieces")
            h = a.shape[2] // p
            a = np.lib.stride_tricks.as_strided(
                a, (p, a.shape[1], h, a.shape[3]),
                (h * a.strides[2], a.strides[1], a.strides[2], a.strides[3]))
        if as3d:
            a = np.lib.stride_tricks.as_strided(
                a, (p, a.shape[1], a.shape[2] * a.shape[3]), (a.strides[0], a.strides[1], 4))
        return a

    cdef object _whole(self, int i):
        """Tensor i as one image (1, C, H, W) for the shapes a fused step is checked against;
        a tensor in row pieces gets a stand-in over its memory, whose strides the step then
        replaces (_piece_strides)."""
        a = self._tensor(i, False)
        if self._pieces[i] == 0:
            return a
        c, h, w = a.shape[1], a.shape[0] * a.shape[2], a.shape[3]
        return np.lib.stride_tricks.as_strided(a, (1, c, h, w), (c * h * w * 4, h * w * 4, w * 4, 4))

    cdef fs_strides _piece_strides(self, int i, fs_strides whole):
        """The strides a fused step addresses tensor i with: `whole`, or its row pieces'."""
        if self._pieces[i] == 0:
            return whole
        a = self._tensors[i]
        cdef fs_strides r
        r.image, r.channel = a.strides[0] // 4, a.strides[1] // 4
        r.piece = a.shape[2] * a.shape[3]
        return r

    cdef int _check_roles(self, int src, int res, int dst) except -1:
        for t in (src, dst) + ((res,) if res != -1 else ()):
            self._tensor(t, False)  # raises for a tensor the list does not have
        if dst == 0:
            raise ValueError("tensor 0 is the input: no step may write it")
        # Image by image (row piece by row piece): a network's plan for several threads lays
        # the pieces of different tensors between one another (Network._plan_regions).
        for t in (src, res):
            if t >= 0 and any(np.may_share_memory(a, b) for a in self._tensors[t]
                              for b in self._tensors[dst]):
                raise ValueError(f"tensor {dst} must not overlap tensor {t}")
        return 0

    cdef bint _claimed(self):
        """Whether the step appended next will have its items claimed (fs_step.claims): the
        first one, on several threads."""
        return self._count == 0 and self.num_threads > 1

    cdef int _append(self, fs_step* st, int src, int res, int dst, tuple keep) except -1:
        if self._busy:  # a run walks self._steps, which growing may move
            raise RuntimeError("cannot add a step while the list runs")
        if self._count == self._cap:
            cap = max(16, 2 * self._cap)
            grown = <fs_step*>realloc(self._steps, cap * sizeof(fs_step))
            if grown == NULL:
                raise MemoryError()
            self._steps, self._cap = grown, cap
        st.src, st.res, st.dst = src, res, dst
        cdef int64_t[::1] claims
        if self._claimed() and st.items > 1:
            # The first step's items claimed, not assigned (fs_step.claims): a counter per
            # pair of threads, on a line of its own (fs_run_steps zeroes them).
            st.nclaims = _ceil_div(self.num_threads, 2)
            held = line_aligned_empty(16 * st.nclaims).view(np.int64)
            keep += (held,)
            claims = held
            st.claims = &claims[0]
        self._steps[self._count] = st[0]
        self._count += 1
        self._keep.append(keep)
        self._work_ok = False
        return 0

    cdef int _ensure_work(self) except -1:
        """Points every step's work planes (and K-split partial sums) into one buffer sized
        for the step that needs most: steps run one after another, and none leaves data there
        for another (MobileNet v2: 1.5 MB of per-step scratch and partial sums -> 0.27 MB,
        lines a call would otherwise touch, and after another engine's call fetch, each)."""
        if self._work_ok:
            return 0
        cdef Py_ssize_t i, need = 0
        cdef fs_step* st
        for i in range(self._count):
            st = &self._steps[i]
            need = max(need, <Py_ssize_t>st.work_floats *
                       (1 if st.kind == FS_STEP_SPMM_KSPLIT else self.num_threads))
        cdef float[::1] buf
        cdef float* base = NULL
        if need:
            self._work = line_aligned_empty(need)
            self._work[...] = 0.0
            buf = self._work
            base = &buf[0]
        for i in range(self._count):
            st = &self._steps[i]
            if st.kind == FS_STEP_SPMM_KSPLIT:
                st.spmm.partial = base
            else:
                st.work = base
        self._work_ok = True
        return 0

    cdef float* _scratch(self, fs_step* st):
        """Zeroed scratch for each thread, 64-byte aligned, st.scratch_floats rounded up."""
        if st.scratch_floats == 0:
            return NULL
        st.scratch_floats = _ceil_div(st.scratch_floats, 16) * 16
        cdef float[::1] s = np.zeros(st.scratch_floats * self.num_threads + 16, dtype=np.float32)
        self._keep.append(s)
        cdef size_t misalign = (<size_t>&s[0]) % 64
        return &s[(64 - misalign) // 4 if misalign else 0]

    def add_spmm(self, int isa, Py_ssize_t kernel, SpmmWeights w, int src, int res, int dst,
                 bias, float lo, float hi, bint ksplit=False, Py_ssize_t sweep_rows=0):
        """dst = clamp(W @ src + bias + res, lo, hi); src, res, dst viewed as (N, C, -1)
        (a 2-D (N, C) tensor is N images of one position). res = -1: none.

        ksplit: sum the two halves of the input channels apart and add them after
        (FS_STEP_SPMM_KSPLIT), when the input is wide enough to run in several parts; on any
        thread count, so the thread count never changes the result. sweep_rows > 0: groups
        of about that many output rows, each over all positions (_dispatch.spmm_sweep_rows)."""
        cdef fs_step st
        bias = _owned(bias)
        self._check_roles(src, res, dst)
        memset(&st, 0, sizeof(st))
        cdef Py_ssize_t p = self._step_pieces((src, res, dst))
        if p:  # one item per piece: the pieces as images, each over all output rows
            x = self._as_pieces(src, p, True)
            _spmm_step(&st, isa, kernel, w, x, bias,
                       self._as_pieces(res, p, True) if res >= 0 else None,
                       self._as_pieces(dst, p, True), lo, hi, 1, p * x.shape[2], False,
                       sweep_rows, ksplit)
        else:
            _spmm_step(&st, isa, kernel, w, self._tensor(src, True), bias,
                       self._tensor(res, True) if res >= 0 else None, self._tensor(dst, True),
                       lo, hi, self.num_threads, 0, False, sweep_rows, ksplit)
        cdef Py_ssize_t n, hw
        if ksplit and st.items != 0 and st.spmm.nparts >= 2:
            n = p if p else self._tensors[src].shape[0]  # the images the step runs
            hw = st.spmm.hw
            st.kind = FS_STEP_SPMM_KSPLIT
            st.spmm.plane = _ceil_div(hw, 16) * 16
            st.work_floats = n * st.spmm.cout * st.spmm.plane  # `partial`, in the shared work
            st.spmm.rchunk = _ceil_div(_ceil_div(hw, self.num_threads), 16) * 16
            st.spmm.rpieces = _ceil_div(hw, st.spmm.rchunk)
            st.spmm.vadd = _chw_ops(isa).vadd
            st.items = 2 * n
        self._append(&st, src, res, dst, (w, bias))

    def add_dwconv2d(self, int isa, int src, int dst, w, bias, Py_ssize_t k, Py_ssize_t stride,
                     Py_ssize_t pad_top, Py_ssize_t pad_left, float lo, float hi):
        cdef fs_step st
        w, bias = _owned(w), _owned(bias)
        self._check_roles(src, -1, dst)
        memset(&st, 0, sizeof(st))
        cdef Py_ssize_t p = self._step_pieces((src, dst))
        if p == 0:
            _dwconv2d_step(&st, isa, self._tensor(src, False), w, bias, self._tensor(dst, False),
                           k, stride, pad_top, pad_left, lo, hi, self.num_threads)
        else:
            # Item (piece, channel); a piece's taps read k // 2 rows from each neighbour, which
            # the flat paths take (the stride-1 one for pieces of few enough rows).
            x, y = self._as_pieces(src, p, False), self._as_pieces(dst, p, False)
            if not dw_piece_kind(p, k, stride, p * x.shape[2], x.shape[3], p * y.shape[2],
                                 y.shape[3], pad_top, pad_left):
                raise ValueError(f"a depthwise step over {p} row pieces needs a flat path on "
                                 f"each piece: 'same' padding, pieces of {k // 2} to "
                                 f"{FS_DW_FLAT_STAGE_ROWS} rows at stride 1; at stride 2 even "
                                 f"sizes and outputs at most {FS_DW_QUARTER_MAX_OW} wide")
            _dwconv2d_step(&st, isa, x, w, bias, y, k, stride, pad_top, pad_left, lo, hi, 1)
            st.dw.linked, st.dw.halo_rows = p, k // 2
        st.scratch = self._scratch(&st)
        self._append(&st, src, -1, dst, (w, bias))

    def add_conv2d(self, int isa, int src, bint nhwc, int dst, w, bias, Py_ssize_t stride,
                   Py_ssize_t pad_top, Py_ssize_t pad_left, float lo, float hi):
        """dst = conv2d(src). An output in row pieces is written one band of rows per piece,
        each into its own block (fs_steps.h)."""
        cdef fs_step st
        w, bias = _owned(w), _owned(bias)
        self._check_roles(src, -1, dst)
        memset(&st, 0, sizeof(st))
        cdef Py_ssize_t p = self._pieces[dst]
        cdef Py_ssize_t per_thread = CLAIMED_BANDS if self._claimed() else 2
        _conv2d_step(&st, isa, self._tensor(src, False), nhwc, w, bias,
                     self._whole(dst) if p else self._tensor(dst, False), stride, pad_top,
                     pad_left, lo, hi, self.num_threads, per_thread)
        cdef Py_ssize_t oh = st.conv.oh, band
        if p and st.items:
            st.dst_s = self._piece_strides(dst, st.dst_s)
            band = oh // p
            if self._claimed():  # bands inside the pieces
                band = _ceil_div(band, CLAIMED_BANDS)
                while (oh // p) % band:
                    band -= 1
            st.conv.band, st.conv.pieces, st.items = band, oh // band, oh // band
        st.scratch = self._scratch(&st)
        self._append(&st, src, -1, dst, (w, bias))

    def add_spmm_dwconv2d(self, int isa, Py_ssize_t kernel, SpmmWeights w, int src, int mid,
                          int dst, bias, float lo, float hi, int dw_isa, dw_w, dw_bias,
                          Py_ssize_t k, Py_ssize_t stride, Py_ssize_t pad_top,
                          Py_ssize_t pad_left, float dw_lo, float dw_hi, Py_ssize_t group_rows,
                          Py_ssize_t bands=1):
        """dst = depthwise(clamp(W @ src + bias)), by groups of about `group_rows` channels
        and `bands` bands of output rows per image: each (band, group)'s 1x1 output rows go
        to per-thread planes in the list's work buffer (_ensure_work) and the depthwise conv
        reads them there. `mid` is the
        tensor the 1x1 would write: it fixes the shapes the two halves are checked against,
        and is never touched. Same arithmetic as the two steps, whatever the bands."""
        bias, dw_w, dw_bias = _owned(bias), _owned(dw_w), _owned(dw_bias)
        self._check_roles(src, -1, mid)
        self._check_roles(mid, -1, dst)
        self._check_roles(src, -1, dst)
        cdef fs_step st, dw
        memset(&st, 0, sizeof(st))
        memset(&dw, 0, sizeof(dw))
        if self._pieces[mid]:
            raise ValueError(f"tensor {mid} (never written) must not be in row pieces")
        x, y = self._whole(src), self._whole(dst)
        _spmm_step(&st, isa, kernel, w, x.reshape(x.shape[0], x.shape[1], -1), bias, None,
                   self._tensor(mid, True), lo, hi, 1)
        _dwconv2d_step(&dw, dw_isa, self._tensor(mid, False), dw_w, dw_bias, y, k, stride,
                       pad_top, pad_left, dw_lo, dw_hi, 1)
        cdef Py_ssize_t p = self._pieces[dst], ih = dw.dw.ih, iw = dw.dw.iw
        cdef Py_ssize_t oh = dw.dw.oh, ow = dw.dw.ow
        if p and (bands != p or not fused_writes_pieces(p, k, stride, ih, iw, oh, ow, pad_top,
                                                        pad_left)):
            raise ValueError(f"a fused step writing {p} row pieces needs bands cut at them "
                             f"(bands = {p})")
        cdef _Parts parts
        if self._pieces[src]:  # the packed offsets step from plane to plane of a piece
            st.src_s = self._piece_strides(src, st.src_s)
            parts = w.part_table(st.spmm.nparts, st.src_s.channel)
            st.spmm.parts = parts.table
        dw.dst_s = self._piece_strides(dst, dw.dst_s)
        bounds = w.row_groups(group_rows)
        cdef const int64_t[::1] b = bounds
        rows = np.diff(w._starts[0][bounds])
        band_table = _row_bands(bands, k, stride, ih, iw, oh, ow, pad_top, pad_left)
        cdef const int64_t[::1] bt = band_table
        st.kind = FS_STEP_SPMM_DWCONV2D
        st.dw, st.dst_s = dw.dw, dw.dst_s  # the 1x1 writes work planes, the depthwise conv dst
        st.dw.nbands, st.dw.bands = bt.shape[0] // 4, &bt[0]
        st.spmm.bounds, st.spmm.groups, st.spmm.chunk = &b[0], b.shape[0] - 1, st.spmm.hw
        st.items = (x.shape[0] * st.dw.nbands * st.spmm.groups
                    if st.items != 0 and dw.items != 0 else 0)
        st.dw.scratch_floats = _ceil_div(dw.dw.scratch_floats, 16) * 16
        st.scratch_floats = st.dw.scratch_floats
        st.work_floats = int(rows.max()) * _ceil_div(st.spmm.hw, 16) * 16
        st.scratch = self._scratch(&st)
        self._append(&st, src, -1, dst, (w, bias, dw_w, dw_bias, bounds, band_table))

    def add_dwconv2d_spmm(self, int dw_isa, dw_w, dw_bias, Py_ssize_t k, Py_ssize_t pad_top,
                          Py_ssize_t pad_left, float dw_lo, float dw_hi, int isa,
                          Py_ssize_t kernel, SpmmWeights w, int src, int mid, int res, int dst,
                          bias, float lo, float hi, Py_ssize_t band_rows):
        """dst = clamp(W @ depthwise(src) + bias + res): a stride-1 'same' depthwise conv and
        the 1x1 reading its output as one step, by bands of `band_rows` rows (from
        dw_spmm_band_rows): each band's depthwise output, every channel, goes to per-thread
        scratch planes, where the 1x1 reads it. `mid` is the tensor the depthwise conv would
        write: it fixes the shapes the two halves are checked against, and is never touched.
        Same arithmetic as the two steps, whatever the bands or the threads."""
        dw_w, dw_bias, bias = _owned(dw_w), _owned(dw_bias), _owned(bias)
        self._check_roles(src, -1, mid)
        self._check_roles(mid, res, dst)
        self._check_roles(src, res, dst)
        cdef fs_step st, dw
        memset(&st, 0, sizeof(st))
        memset(&dw, 0, sizeof(dw))
        if self._pieces[mid]:
            raise ValueError(f"tensor {mid} (never written) must not be in row pieces")
        x, m = self._whole(src), self._tensor(mid, False)
        _dwconv2d_step(&dw, dw_isa, x, dw_w, dw_bias, m, k, 1, pad_top, pad_left, dw_lo, dw_hi,
                       1)
        y = self._whole(dst)
        r = self._fused_residual(res, (mid,), y)
        _spmm_step(&st, isa, kernel, w, m.reshape(m.shape[0], m.shape[1], -1), bias, r,
                   y.reshape(y.shape[0], y.shape[1], -1), lo, hi, 1)
        cdef Py_ssize_t p = self._pieces[src], ih = dw.dw.ih, iw = dw.dw.iw
        if band_rows < 4 or band_rows != dw_spmm_band_rows(p, k, 1, ih, iw, dw.dw.oh, dw.dw.ow,
                                                             pad_top, pad_left, band_rows):
            raise ValueError(f"band_rows {band_rows} must come from dw_spmm_band_rows for this "
                             f"shape ({ih}x{iw}, {p} row pieces)")
        for t in (res, dst):
            if t >= 0 and self._pieces[t] and self._pieces[t] != p:
                raise ValueError(f"tensor {t} must be in the row pieces of tensor {src}")
        cdef Py_ssize_t n = x.shape[0], piece = ih * iw // max(p, 1), band = band_rows * iw
        cdef Py_ssize_t ps = _ceil_div(band, 16) * 16
        st.src_s = self._piece_strides(src, dw.src_s)
        st.dst_s = self._piece_strides(dst, st.dst_s)
        if res >= 0:
            st.res_s = self._piece_strides(res, st.res_s)
        st.kind = FS_STEP_DWCONV2D_SPMM
        st.dw = dw.dw
        keep = self._bands_of(&st, w, ih, iw, band, k // 2)
        # The kernel's scratch, for the plane or row piece it is called on.
        st.dw.scratch_floats = _ceil_div(fs_dwconv2d_scratch_floats(
            k, 1, piece // iw, iw, piece // iw, iw, pad_top, pad_left), 16) * 16
        st.dw.gap = _ceil_div(piece - band, 16) * 16
        st.scratch_floats = st.dw.scratch_floats
        st.work_floats = st.dw.gap + dw.dw.c * ps
        st.items = n * st.dw.nbands if st.items != 0 and dw.items != 0 else 0
        st.scratch = self._scratch(&st)
        self._append(&st, src, res, dst, (w, bias, dw_w, dw_bias) + keep)

    cdef object _fused_residual(self, int res, tuple never, y):
        """Tensor `res` (or None for -1) as (N, C, -1) for a fused step's 1x1 writing y: of
        y's shape, and none of the tensors `never` that the step never writes."""
        if res < 0:
            return None
        r = self._whole(res)
        if res in never or r.shape != y.shape:
            raise ValueError(f"the residual (tensor {res}) must have the output's shape "
                             f"{y.shape} and not be a tensor the step never writes")
        return r.reshape(y.shape[0], y.shape[1], -1)

    cdef tuple _bands_of(self, fs_step* st, SpmmWeights w, Py_ssize_t ih, Py_ssize_t iw,
                         Py_ssize_t band, Py_ssize_t h):
        """A fused step's bands of `band` positions of a stride-1 'same' depthwise output of
        ih x iw (h halo rows), and its 1x1 (st.spmm, all blocks in one group) on their work
        planes, whose packed offsets step from plane to plane of those planes. Returns the
        arrays the step points into."""
        cdef Py_ssize_t ps = _ceil_div(band, 16) * 16
        cdef _Parts parts = w.part_table(st.spmm.nparts, ps)
        st.spmm.parts = parts.table
        bounds = w.groups(1)
        cdef const int64_t[::1] b = bounds
        st.spmm.bounds, st.spmm.groups = &b[0], 1
        # Per band: output positions [begin, end), and the input positions its taps read.
        band_table = np.array([[m0, m0 + band, max(0, m0 - h * iw),
                                min(ih * iw, m0 + band + h * iw)]
                               for m0 in range(0, ih * iw, band)], dtype=np.int64).reshape(-1)
        cdef const int64_t[::1] bt = band_table
        st.dw.nbands, st.dw.bands, st.dw.halo_rows = bt.shape[0] // 4, &bt[0], h
        return bounds, band_table, parts

    def add_conv2d_dwconv2d_spmm(self, int conv_isa, bint nhwc, conv_w, conv_bias,
                                 Py_ssize_t stride, Py_ssize_t conv_pad_top,
                                 Py_ssize_t conv_pad_left, float conv_lo, float conv_hi,
                                 int dw_isa, dw_w, dw_bias, Py_ssize_t k, Py_ssize_t pad_top,
                                 Py_ssize_t pad_left, float dw_lo, float dw_hi, int isa,
                                 Py_ssize_t kernel, SpmmWeights w, int src, int conv_dst,
                                 int mid, int res, int dst, bias, float lo, float hi,
                                 Py_ssize_t band_rows):
        """dst = clamp(W @ depthwise(conv2d(src)) + bias + res): add_dwconv2d_spmm on the
        output of the first conv (add_conv2d's arguments), which the step computes band by
        band into its work, only the rows each band's taps read, a row two bands read once.
        `conv_dst` and `mid`, the tensors the conv and the depthwise conv would write, fix the
        shapes the three parts are checked against and are never touched. Only on planes
        read in place (taller than a staged copy, rows of whole 16-float vectors) and whole
        images: no tensor in row pieces. Same arithmetic as the three steps, whatever the
        bands or the threads."""
        conv_w, conv_bias, dw_w, dw_bias, bias = (
            _owned(conv_w), _owned(conv_bias), _owned(dw_w), _owned(dw_bias), _owned(bias))
        self._check_roles(src, -1, conv_dst)  # (conv_dst and mid, never touched, may overlap)
        self._check_roles(mid, res, dst)
        self._check_roles(src, res, dst)
        for t in (src, conv_dst, mid, res, dst):
            if t >= 0 and self._pieces[t]:
                raise ValueError(f"tensor {t} must not be in row pieces")
        cdef fs_step st, cv, dw
        memset(&st, 0, sizeof(st))
        memset(&cv, 0, sizeof(cv))
        memset(&dw, 0, sizeof(dw))
        c, m, y = self._tensor(conv_dst, False), self._tensor(mid, False), self._tensor(dst, False)
        _conv2d_step(&cv, conv_isa, self._tensor(src, False), nhwc, conv_w, conv_bias, c, stride,
                     conv_pad_top, conv_pad_left, conv_lo, conv_hi, 1)
        _dwconv2d_step(&dw, dw_isa, c, dw_w, dw_bias, m, k, 1, pad_top, pad_left, dw_lo, dw_hi,
                       1)
        r = self._fused_residual(res, (mid, conv_dst), y)
        _spmm_step(&st, isa, kernel, w, m.reshape(m.shape[0], m.shape[1], -1), bias, r,
                   y.reshape(y.shape[0], y.shape[1], -1), lo, hi, 1)
        cdef Py_ssize_t ih = dw.dw.ih, iw = dw.dw.iw
        if (band_rows < 4 or iw % 16 or ih <= <Py_ssize_t>FS_DW_FLAT_STAGE_ROWS
                or band_rows != dw_spmm_band_rows(0, k, 1, ih, iw, dw.dw.oh, dw.dw.ow, pad_top,
                                                  pad_left, band_rows)):
            raise ValueError(f"band_rows {band_rows} must come from dw_spmm_band_rows for this "
                             f"shape ({ih}x{iw}), whose rows must be whole 16-float vectors, "
                             f"more than {FS_DW_FLAT_STAGE_ROWS} of them")
        cdef Py_ssize_t n = c.shape[0], h = k // 2, band = band_rows * iw
        cdef Py_ssize_t ps = _ceil_div(band, 16) * 16, crows = band_rows + 2 * h
        st.src_s = cv.src_s
        st.kind = FS_STEP_CONV2D_DWCONV2D_SPMM
        st.conv = cv.conv
        st.conv.band = crows
        st.dw = dw.dw
        keep = self._bands_of(&st, w, ih, iw, band, h)
        st.dw.scratch_floats = _ceil_div(dw.scratch_floats, 16) * 16
        st.scratch_floats = st.dw.scratch_floats + cv.scratch_floats
        # Conv rows [na, nb) sit at the top of their planes, whose origin lies na rows before;
        # a band's depthwise planes, whose origin lies m0 positions before: neither more than
        # a plane of the image.
        st.dw.gap = _ceil_div(ih * iw, 16) * 16
        st.work_floats = st.dw.gap + cv.conv.cout * crows * iw + dw.dw.c * ps
        st.items = n * st.dw.nbands if st.items != 0 and dw.items != 0 and cv.items != 0 else 0
        st.scratch = self._scratch(&st)
        self._append(&st, src, res, dst, (w, bias, conv_w, conv_bias, dw_w, dw_bias) + keep)

    def add_gavgpool(self, int isa, int src, int dst):
        cdef fs_step st
        self._check_roles(src, -1, dst)
        memset(&st, 0, sizeof(st))
        _gavgpool_step(&st, isa, self._tensor(src, True), self._tensor(dst, False),
                       self.num_threads)
        self._append(&st, src, -1, dst, ())

    def run(self, x, y, Py_ssize_t begin=0, Py_ssize_t end=-1, double[::1] times=None,
            double[:, ::1] thread_times=None, int64_t[:, ::1] thread_items=None):
        """Runs steps [begin, end) (end = -1: to the last) with tensor 0 = x and the last
        tensor = y, arrays of exactly the shapes the list was built with. If `times` is given,
        times[0] is the start and times[i + 1] the end of step begin + i, in seconds
        (end - begin + 1 entries), or, with 2 entries, times[1] the end of the last step.
        If `thread_times` (rows x (end - begin)) is given, thread_times[t, i] is when thread
        t finished its share of step begin + i, before the step's barrier (rows past the
        team the runtime gave keep their values): with `times`, each thread's time per step
        and the steps' imbalance (tools/thread_steps.py). If `thread_items` (int64, the same
        shape) is given, thread_items[t, i] is how many items of step begin + i thread t ran:
        how a step with claimed items (a list's first) was split."""
        if end < 0:
            end = self._count
        if not 0 <= begin <= end <= self._count:
            raise ValueError(f"steps [{begin}, {end}) are not in [0, {self._count})")
        last = self._ntensors - 1
        for a, i in ((x, 0), (y, last)):
            t = self._tensors[i]
            # C-contiguous, with the template's strides: a flat view below, never a copy.
            if not isinstance(a, np.ndarray) or a.shape != t.shape or not a.flags.c_contiguous \
                    or (a.strides != t.strides and not t.flags.c_contiguous):
                raise ValueError(f"tensor {i} must be an array of shape {t.shape} and strides "
                                 f"{t.strides}, C-contiguous")
        if times is not None and (times.shape[0] < 2
                                  or times.shape[0] not in (2, end - begin + 1)):
            raise ValueError("times must have 2 entries" + (
                f" (or {end - begin + 1})" if end - begin + 1 > 2 else ""))
        if thread_times is not None and thread_times.shape[1] != end - begin:
            raise ValueError(f"thread_times must have {end - begin} columns")
        if thread_items is not None and (thread_items.shape[1] != end - begin or (
                thread_times is not None and thread_items.shape[0] != thread_times.shape[0])):
            raise ValueError(f"thread_items must have {end - begin} columns"
                             + (" and as many rows as thread_times" if thread_times is not None
                                else ""))
        cdef double* dptr = NULL
        cdef int64_t* iptr = NULL
        cdef int drows = 0
        if thread_times is not None and thread_times.shape[0] and end > begin:
            dptr, drows = &thread_times[0, 0], <int>min(thread_times.shape[0], self.num_threads)
        if thread_items is not None and thread_items.shape[0] and end > begin:
            iptr, drows = &thread_items[0, 0], <int>min(thread_items.shape[0], self.num_threads)
        cdef double* tptr = &times[0] if times is not None else NULL
        cdef int each = times is not None and times.shape[0] == end - begin + 1
        if x.dtype != np.float32 or y.dtype != np.float32 or not y.flags.writeable:
            raise ValueError("x and y must be float32 numpy arrays, y writeable")
        cdef const float[::1] xv
        cdef float[::1] yv
        # Test and set in one stretch of C under the GIL (no Python call between them), before
        # anything that could let another thread in: two threads cannot both run the list.
        if self._busy:
            raise RuntimeError("StepList.run is not reentrant")
        self._busy = True
        try:
            self._ensure_work()
            xv, yv = x.reshape(-1), y.reshape(-1)
            self._table[0] = <float*>&xv[0] if xv.shape[0] else NULL
            self._table[last] = &yv[0] if yv.shape[0] else NULL
            with nogil:
                fs_run_steps(self._steps + begin, end - begin, self._table, self.num_threads,
                             tptr, each, dptr, iptr, drows)
        finally:
            self._busy = False
            self._table[0] = self._table[last] = NULL

    def pin(self, Py_ssize_t epoch):
        """Lets run_pinned() run the list while config_epoch() is `epoch`: the value read
        before the settings the list was built for (a change since then leaves it unpinned)."""
        self._epoch = epoch

    @property
    def pinned(self):
        return self._epoch == _config_epoch

    def run_pinned(self, x, inside=None):
        """run() on x into a new array of the last tensor's shape, which it returns: a
        network's batch-1 call, with no per-call Python beyond a few O(1) tests (a cold call,
        after another engine's, spent 40-60 us outside C on the checked path).

        Returns None, running nothing, where run() would need its checks or could not run:
        x not an ndarray of exactly tensor 0's 4-d shape, native float32, C-contiguous and
        aligned; the list running; the list not pinned (pin()). `inside` (a float64 array)
        gets the time spent in the step loop added to inside[0]."""
        # Test and set in one stretch of C under the GIL: two threads cannot both get here.
        if self._busy or self._epoch != _config_epoch or not self._in_4d \
                or type(x) is not _ndarray or self._out_shape is None:
            return None
        self._busy = True
        cdef Py_buffer xb, yb
        cdef Py_ssize_t i, step = sizeof(float)
        cdef bint have_y = False
        cdef double stamps[2]
        try:
            PyObject_GetBuffer(x, &xb, PyBUF_FORMAT | PyBUF_STRIDES)
        except Exception:  # e.g. a dtype numpy cannot export: the checked path says why
            self._busy = False
            return None
        try:
            if (xb.ndim != 4 or xb.itemsize != sizeof(float) or xb.format == NULL
                    or xb.format[0] != b'f' or xb.format[1] != 0
                    or (<size_t>xb.buf) % sizeof(float) != 0):
                return None
            for i in range(3, -1, -1):  # C order; a length-1 axis may have any stride
                if xb.shape[i] != self._in_dims[i] or (xb.shape[i] > 1 and xb.strides[i] != step):
                    return None
                step *= xb.shape[i]
            y = _empty(self._out_shape, _float32)
            PyObject_GetBuffer(y, &yb, PyBUF_SIMPLE | PyBUF_WRITABLE)
            have_y = True
            self._ensure_work()
            self._table[0] = <float*>xb.buf
            self._table[self._ntensors - 1] = <float*>yb.buf
            with nogil:
                fs_run_steps(self._steps, self._count, self._table, self.num_threads,
                             <double*>stamps if inside is not None else NULL, 0, NULL, NULL,
                             0)
            if inside is not None:
                inside[0] += stamps[1] - stamps[0]
            return y
        finally:
            self._table[0] = self._table[self._ntensors - 1] = NULL
            if have_y:
                PyBuffer_Release(&yb)
            PyBuffer_Release(&xb)
            self._busy = False


cdef bint _spans_overlap(StepList a, StepList b) noexcept:
    """Whether a tensor of `a` shares a byte with a tensor of `b` (a merge of the two sorted
    lists of byte ranges)."""
    cdef Py_ssize_t i = 0, j = 0
    while i < a._nspans and j < b._nspans:
        if a._spans[2 * i] < b._spans[2 * j + 1] and b._spans[2 * j] < a._spans[2 * i + 1]:
            return True
        if a._spans[2 * i + 1] <= b._spans[2 * j + 1]:
            i += 1
        else:
            j += 1
    return False


def run_images(list lists, x, y, double[::1] times=None):
    """Runs the images of x through the step lists side by side, one list per thread: list l
    takes images [l * per, (l + 1) * per), per = len(x) // len(lists), one after another,
    and writes their rows of y. Each list must be built for one thread, with tensor 0 and its
    last tensor of x's and y's shapes for one image, and no two lists may share a tensor.
    If `times` (2 entries) is given, times[0] and times[1] are the start and the end of the
    C loop, in seconds."""
    cdef Py_ssize_t nl = len(lists), per, i, j
    if nl < 1:
        raise ValueError("run_images needs at least one step list")
    for a, name in ((x, "x"), (y, "y")):
        if (not isinstance(a, np.ndarray) or a.dtype != np.float32
                or not a.flags.c_contiguous or a.ndim < 2):
            raise ValueError(f"{name} must be a C-contiguous float32 array of images")
    if not y.flags.writeable:
        raise ValueError("y must be writeable")
    if x.shape[0] != y.shape[0] or x.shape[0] % nl != 0 or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same number of images, a multiple of "
                         f"{nl}, got {x.shape[0]} and {y.shape[0]}")
    if np.may_share_memory(x, y):
        raise ValueError("x and y must not overlap")
    if times is not None and times.shape[0] != 2:
        raise ValueError("times must have 2 entries")
    cdef double* tptr = &times[0] if times is not None else NULL
    per = x.shape[0] // nl
    cdef StepList sl, other
    cdef size_t ntensors = 0
    cdef const fs_step** steps = NULL
    cdef size_t* counts = NULL
    cdef float*** tables = NULL
    cdef const float[::1] xv
    cdef float[::1] yv
    cdef size_t x_image, y_image
    marked = []  # the lists this call set running: each test and set under the GIL, at once
    try:
        for i in range(nl):
            sl = lists[i]
            if sl.num_threads != 1:
                raise ValueError("run_images takes step lists built for one thread")
            if i == 0:
                ntensors = sl._ntensors
            elif <size_t>sl._ntensors != ntensors:
                raise ValueError("the step lists must have the same tensors")
            for a, t in ((x, sl._tensors[0]), (y, sl._tensors[sl._ntensors - 1])):
                if (t is None or a.shape[1:] != t.shape[1:] or t.shape[0] != 1
                        or not t.flags.c_contiguous):
                    raise ValueError(f"step list {i} is not built for images of shape "
                                     f"{(1,) + a.shape[1:]}")
            for j in range(i):
                if lists[j] is sl:
                    raise ValueError(f"step lists {j} and {i} share tensors")
            if sl._busy:
                raise RuntimeError("a step list given to run_images is running")
            sl._busy = True
            marked.append(sl)
            sl._ensure_work()
            for j in range(i):
                other = lists[j]
                if _spans_overlap(sl, other):
                    raise ValueError(f"step lists {j} and {i} share tensors")
        steps = <const fs_step**>malloc(nl * sizeof(fs_step*))
        counts = <size_t*>malloc(nl * sizeof(size_t))
        tables = <float***>malloc(nl * sizeof(float**))
        if steps == NULL or counts == NULL or tables == NULL:
            raise MemoryError()
        xv, yv = x.reshape(-1), y.reshape(-1)
        x_image, y_image = xv.shape[0] // x.shape[0], yv.shape[0] // y.shape[0]
        for i in range(nl):
            sl = lists[i]
            steps[i], counts[i], tables[i] = sl._steps, sl._count, sl._table
        with nogil:
            fs_run_images(steps, counts, tables, ntensors, <int>nl, &xv[0], x_image, &yv[0],
                          y_image, <size_t>per, tptr)
    finally:
        for sl in marked:
            sl._busy = False
            sl._table[0] = sl._table[ntensors - 1] = NULL
        free(steps); free(counts); free(tables)
