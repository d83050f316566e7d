# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Thin Cython layer over the C kernels: buffer checks, GIL release, threads, dispatch table.

Validation of user input and routing live in plain Python (fastsparse/ops.py). What this
module checks is what keeps the C kernels in bounds whoever calls it: every packed weight
structure is validated once when a ``SpmmWeights`` is built, and each call checks shapes in
O(1) against it.
"""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint32_t

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
    """The spmm variants compiled for `isa`: a list of (name, mr, nr, unroll)."""
    cdef size_t i
    cdef const fs_spmm_kernel* k
    out = []
    for i in range(fs_spmm_kernel_count(isa)):
        k = fs_spmm_kernel_at(isa, i)
        out.append((k.name.decode(), k.mr, k.nr, k.unroll))
    return out


cdef class SpmmWeights:
    """Packed sparse weights as the kernels read them, validated once.

    values    float32, per block and per non-zero column, the block's `rows` values
    nnzmap    uint32, non-zero columns per block (full blocks of `nr`, then single rows)
    columns   int32, the input channel of each non-zero column, increasing within a block
    """
    cdef readonly object values, nnzmap, columns
    cdef readonly Py_ssize_t rows, cols, nr
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
            targets = work[-1] * np.arange(count + 1) / count
            bounds = np.searchsorted(work, targets).astype(np.int64)
            bounds[0], bounds[-1] = 0, self.nnzmap.shape[0]
            self._groups[count] = bounds
        return bounds

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
            self._offsets[hw] = off
        return off


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


cdef const float* _bias_pointer(object bias, Py_ssize_t rows) except? NULL:
    """The float32 data of a bias of `rows` entries, or NULL for None. The caller holds `bias`,
    which keeps the buffer alive while the kernels read it."""
    if bias is None:
        return NULL
    cdef const float[::1] b = bias
    if b.shape[0] != rows:
        raise ValueError(f"bias must have {rows} entries")
    return &b[0]


def spmm(int isa, Py_ssize_t kernel, SpmmWeights w, const float[:, :, ::1] x, bias,
         residual, float[:, :, ::1] out, float lo, float hi, int num_threads):
    """out[n] = clamp(W @ x[n] + bias + residual[n], lo, hi) for x of shape (N, cols, HW).

    Threads split (image, spatial chunk) pairs; chunks are whole tiles of the kernel's MR,
    so the result does not depend on the thread count."""
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
    cdef const float* bptr = _bias_pointer(bias, cout)
    cdef const float[:, :, ::1] r
    cdef const float* rptr = NULL
    if residual is not None:
        r = residual
        if r.shape[0] != n or r.shape[1] != cout or r.shape[2] != hw:
            raise ValueError("residual must have the shape of out")
        rptr = &r[0, 0, 0]
    if n == 0 or hw == 0:
        return
    cdef const float[::1] values = w.values
    cdef const uint32_t[::1] nnzmap = w.nnzmap
    cdef const int32_t[::1] offsets = w.offsets(hw)
    # Non-empty placeholders keep &view[0] valid when a matrix has no non-zero at all.
    cdef float fzero = 0.0
    cdef int32_t izero = 0
    cdef const float* vptr = &values[0] if values.shape[0] else &fzero
    cdef const int32_t* optr = &offsets[0] if offsets.shape[0] else &izero
    cdef const uint32_t* mptr = &nnzmap[0]
    cdef const float* xptr = &x[0, 0, 0]
    cdef float* yptr = &out[0, 0, 0]
    cdef fs_spmm_fn fn = k.fn
    cdef size_t stride = <size_t>hw * sizeof(float)
    cdef Py_ssize_t mr = k.mr
    if num_threads < 1:
        num_threads = 1
    # Enough chunks per image for ~4 per thread, each a whole number of tiles.
    cdef Py_ssize_t tiles = _ceil_div(hw, mr)
    cdef Py_ssize_t pieces = min(tiles, max(1, _ceil_div(4 * num_threads, n))) if num_threads > 1 else 1
    cdef Py_ssize_t chunk = _ceil_div(tiles, pieces) * mr
    pieces = _ceil_div(hw, chunk)
    # Small images (7x7 is one tile) leave threads idle: then threads also split the output
    # blocks, in runs of equal work. Rows are independent, so results stay bit-identical.
    cdef Py_ssize_t nblocks = nnzmap.shape[0], groups = 1
    if num_threads > 1 and n * pieces < 2 * num_threads and nblocks > 1:
        groups = min(nblocks, _ceil_div(2 * num_threads, n * pieces))
    cdef const int64_t[::1] bounds = w.groups(groups)
    cdef const int64_t[:, ::1] starts = w._starts
    cdef Py_ssize_t total = n * pieces * groups, t, g, rest, img, m0, img_off, res_off
    cdef Py_ssize_t b0, b1, r0
    num_threads = <int>min(<Py_ssize_t>num_threads, total)
    with nogil:
        for t in prange(total, num_threads=num_threads, schedule="static"):
            g = t % groups
            rest = t // groups
            img = rest // pieces
            m0 = (rest % pieces) * chunk
            b0 = bounds[g]
            b1 = bounds[g + 1]
            if b1 > b0:
                r0 = starts[0, b0]
                img_off = img * cin * hw + m0
                res_off = img * cout * hw + r0 * hw + m0
                fn(min(chunk, hw - m0), starts[0, b1] - r0, xptr + img_off, vptr + starts[1, b0],
                   mptr + b0, optr + starts[2, b0], bptr + r0 if bptr != NULL else NULL,
                   rptr + res_off if rptr != NULL else NULL, stride, yptr + res_off, stride,
                   lo, hi)


# ---- CHW companion ops: depthwise conv, first-layer conv, global average pooling, add ----

cdef extern from "csrc/fs_kernels.h" nogil:
    ctypedef void (*fs_dwconv2d_fn)(
        size_t ih, size_t iw, size_t oh, size_t ow, size_t pad_top, size_t pad_left,
        const float* input, size_t input_stride, const float* weights, float bias,
        float* scratch, float* output, size_t output_stride, float lo, float hi) noexcept nogil
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
    size_t fs_dwconv2d_scratch_floats(size_t k, size_t stride, size_t iw, size_t ow,
                                      size_t pad_left)
    size_t fs_conv2d_scratch_floats(size_t cin, size_t stride, size_t iw, size_t ow,
                                    size_t pad_left)

from cython.parallel cimport threadid


# cpuid traps to the hypervisor in a VM (~75 us measured on a KVM guest): ask once per ISA.
_SUPPORTED = [bool(fs_isa_supported(i)) for i in range(FS_ISA_COUNT)]


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


def dwconv2d(int isa, const float[:, :, :, ::1] x, const float[:, ::1] w, bias,
             float[:, :, :, ::1] out, Py_ssize_t k, Py_ssize_t stride, Py_ssize_t pad_top,
             Py_ssize_t pad_left, float lo, float hi, int num_threads):
    """out[n, c] = clamp(depthwise KxK conv of x[n, c] with w[c] (k*k floats) + bias[c]).

    Threads split (image, channel) planes; each plane is one kernel call, so the result does
    not depend on the thread count."""
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    if k != 3 and k != 5:
        raise ValueError(f"k must be 3 or 5, got {k}")
    if stride != 1 and stride != 2:
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if pad_top < 0 or pad_left < 0:
        raise ValueError("padding must be >= 0")
    if not (lo <= hi):
        raise ValueError("lo must be <= hi")
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], ih = x.shape[2], iw = x.shape[3]
    cdef Py_ssize_t oh = out.shape[2], ow = out.shape[3]
    if w.shape[0] != c or w.shape[1] != k * k:
        raise ValueError(f"w must have shape ({c}, {k * k})")
    if out.shape[0] != n or out.shape[1] != c:
        raise ValueError("out must have shape (N, C, OH, OW)")
    cdef const float* bptr = _bias_pointer(bias, c)
    if n == 0 or c == 0 or oh == 0 or ow == 0:
        return
    if ih == 0 or iw == 0:
        raise ValueError("x must have H, W >= 1")
    if num_threads < 1:
        num_threads = 1
    cdef fs_dwconv2d_fn fn = ops.dwconv2d[k == 5][stride == 2]
    cdef Py_ssize_t sf = fs_dwconv2d_scratch_floats(k, stride, iw, ow, pad_left)
    scratch_arr = np.zeros(sf * num_threads, dtype=np.float32)  # the kernels' contract
    cdef float[::1] scratch = scratch_arr
    cdef float* sptr = &scratch[0]
    cdef const float* xptr = &x[0, 0, 0, 0]
    cdef const float* wptr = &w[0, 0]
    cdef float* yptr = &out[0, 0, 0, 0]
    cdef Py_ssize_t t, ch, total = n * c
    with nogil:
        for t in prange(total, num_threads=num_threads, schedule="static"):
            ch = t % c
            fn(ih, iw, oh, ow, pad_top, pad_left, xptr + t * ih * iw, iw * sizeof(float),
               wptr + ch * k * k, bptr[ch] if bptr != NULL else 0.0,
               sptr + threadid() * sf, yptr + t * oh * ow, ow * sizeof(float), lo, hi)


def conv2d(int isa, x, bint nhwc, const float[:, ::1] w, bias, float[:, :, :, ::1] out,
           Py_ssize_t stride, Py_ssize_t pad_top, Py_ssize_t pad_left, float lo, float hi,
           int num_threads):
    """Dense 3x3 convolution, NCHW output; x is (N, Cin, H, W), or (N, H, W, Cin) if nhwc.

    Threads split (image, band of output rows) pairs; a row's result does not depend on the
    band it falls in."""
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    cdef const float[:, :, :, ::1] xv = x
    if stride != 1 and stride != 2:
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if pad_top < 0 or pad_left < 0:
        raise ValueError("padding must be >= 0")
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
    cdef const float* bptr = _bias_pointer(bias, cout)
    if n == 0 or cout == 0 or oh == 0 or ow == 0:
        return
    if cin == 0 or ih == 0 or iw == 0:
        raise ValueError("x must have Cin, H, W >= 1")
    if num_threads < 1:
        num_threads = 1
    cdef fs_conv2d_fn fn = ops.conv2d[stride == 2]
    cdef Py_ssize_t sf = fs_conv2d_scratch_floats(cin, stride, iw, ow, pad_left)
    scratch_arr = np.zeros(sf * num_threads, dtype=np.float32)  # the kernels' contract
    cdef float[::1] scratch = scratch_arr
    cdef float* sptr = &scratch[0]
    # Bands of rows: ~2 per thread and image (each band restages up to 2 extra input rows).
    cdef Py_ssize_t pieces = min(oh, max(1, _ceil_div(2 * num_threads, n))) if num_threads > 1 else 1
    cdef Py_ssize_t band = _ceil_div(oh, pieces)
    pieces = _ceil_div(oh, band)
    cdef const float* xptr = &xv[0, 0, 0, 0]
    cdef const float* wptr = &w[0, 0]
    cdef float* yptr = &out[0, 0, 0, 0]
    cdef Py_ssize_t t, img, oy0, total = n * pieces, img_in = cin * ih * iw
    with nogil:
        for t in prange(total, num_threads=num_threads, schedule="static"):
            img = t // pieces
            oy0 = (t % pieces) * band
            fn(cin, ih, iw, oh, ow, pad_top, pad_left, oy0, min(oy0 + band, oh),
               xptr + img * img_in, cs, rs, ps, cout, wptr, bptr, sptr + threadid() * sf,
               yptr + img * cout * oh * ow, oh * ow * sizeof(float), ow * sizeof(float), lo, hi)


def gavgpool(int isa, const float[:, :, ::1] x, float[:, ::1] out):
    """out[n, c] = mean of x[n, c, :] for x of shape (N, C, HW), HW >= 1."""
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], hw = x.shape[2], i
    if out.shape[0] != n or out.shape[1] != c:
        raise ValueError("out must have shape (N, C)")
    if n == 0 or c == 0:
        return
    if hw == 0:
        raise ValueError("x must have H * W >= 1")
    cdef fs_gavgpool_fn fn = ops.gavgpool
    cdef float scale = 1.0 / hw
    with nogil:
        for i in range(n):
            fn(c, hw, &x[i, 0, 0], hw * sizeof(float), scale, &out[i, 0])


def vadd(int isa, const float[::1] a, const float[::1] b, float[::1] y, float lo, float hi,
         int num_threads):
    """y = clamp(a + b, lo, hi), split in chunks of whole 64-float blocks across threads."""
    cdef const fs_chw_ops* ops = _chw_ops(isa)
    cdef Py_ssize_t n = a.shape[0]
    if b.shape[0] != n or y.shape[0] != n:
        raise ValueError("a, b and y must have the same length")
    if not (lo <= hi):
        raise ValueError("lo must be <= hi")
    if n == 0:
        return
    if num_threads < 1:
        num_threads = 1
    cdef fs_vadd_fn fn = ops.vadd
    # Threads only pay off past ~64K floats; chunks are multiples of 64 floats.
    cdef Py_ssize_t pieces = min(num_threads, max(1, n // 65536))
    cdef Py_ssize_t chunk = _ceil_div(_ceil_div(n, pieces), 64) * 64
    pieces = _ceil_div(n, chunk)
    cdef const float* ap = &a[0]
    cdef const float* bp = &b[0]
    cdef float* yp = &y[0]
    cdef Py_ssize_t t, i0
    with nogil:
        for t in prange(pieces, num_threads=num_threads, schedule="static"):
            i0 = t * chunk
            fn(min(chunk, n - i0), ap + i0, bp + i0, yp + i0, lo, hi)
