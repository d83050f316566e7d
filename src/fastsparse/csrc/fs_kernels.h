/* fastsparse kernels: public C interface.
 *
 * One signature per op; several variants per ISA. The variant lists below are the single
 * source of truth: they drive the declarations here, the definitions in the per-ISA
 * translation units (kernels_<isa>.c), the dispatch table (dispatch.c) and, through
 * fs_spmm_kernel_at(), the tests and the benchmarks.
 */
#ifndef FS_KERNELS_H
#define FS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ISA identifiers (stable numbers; the preference order lives in fastsparse/_dispatch.py). */
enum fs_isa {
  FS_ISA_SCALAR = 0,
  FS_ISA_SSE2 = 1,
  FS_ISA_AVX2 = 2,
  FS_ISA_NEON = 3,
  FS_ISA_AVX512 = 4,
  FS_ISA_COUNT = 5
};

/* Sparse 1x1 convolution in CHW layout: for one image,
 *
 *   output[n, m] = clamp(bias[n] + sum_k W[n, k] * input[k, m] + residual[n, m], lo, hi)
 *
 * for n < nc output channels and m < mc spatial positions.
 *
 * W is packed in blocks of NR output channels (the full blocks first, then the nc % NR
 * leftover channels as blocks of one). For block b, nnzmap[b] is the number of input
 * channels in which any row of the block is non-zero; for each of them, in increasing
 * order, `weights` holds the NR values (one per row of the block) and `offsets` the byte
 * offset of that input channel's row from `input`. Both streams are walked forward across
 * all blocks.
 *
 * mc            number of spatial positions to compute (>= 1); a tile range of the image.
 * input         first of those positions in input channel 0; row k is at input + offsets.
 * bias          nc floats, or NULL for zero.
 * residual      NULL, or added before the clamp; row n at residual + n * residual_stride bytes.
 * output        row n at output + n * output_stride bytes.
 *
 * Out-of-bounds contract: the kernels read and write only the mc positions of each row they
 * touch (tails are masked or narrowed), so callers need no padding.
 */
typedef void (*fs_spmm_fn)(
    size_t mc, size_t nc, const float* input, const float* weights, const uint32_t* nnzmap,
    const int32_t* offsets, const float* bias, const float* residual, size_t residual_stride,
    float* output, size_t output_stride, float lo, float hi);

/* Variant lists: X(MR, NR, UNROLL, SUFFIX, ISA). MR spatial positions x NR output channels per
 * tile; UNROLL = 2 splits the accumulators in two sets fed by alternate non-zeros, which doubles
 * the number of independent FMA chains when MR/VLEN * NR alone is too small to hide the FMA
 * latency. UNROLL is part of the numerics (it fixes the summation order), so it is fixed per
 * variant and never depends on the tile position or the thread count. SUFFIX is empty, or
 * _prefetch for a variant that prefetches the next tile's output lines (for layers whose output
 * exceeds L2; same arithmetic, so the same bits as the variant without it). */
#define FS_SPMM_SCALAR_LIST(X) \
  X(8, 1, 1, , scalar)         \
  X(8, 2, 1, , scalar)         \
  X(8, 4, 1, , scalar)         \
  X(4, 8, 1, , scalar)

#define FS_SPMM_SSE2_LIST(X) \
  X(8, 1, 2, , sse2)         \
  X(16, 1, 2, , sse2)        \
  X(32, 1, 1, , sse2)        \
  X(8, 2, 2, , sse2)         \
  X(16, 2, 1, , sse2)        \
  X(8, 4, 1, , sse2)         \
  X(4, 8, 1, , sse2)

/* MR = 1: the one-position variant (scalar FMA chains along each row), for batch-1
 * classifiers. */
#define FS_SPMM_AVX2_LIST(X)   \
  X(1, 1, 1, , avx2)           \
  X(8, 1, 2, , avx2)           \
  X(16, 1, 2, , avx2)          \
  X(32, 1, 2, , avx2)          \
  X(64, 1, 1, , avx2)          \
  X(64, 1, 1, _prefetch, avx2) \
  X(8, 2, 2, , avx2)           \
  X(16, 2, 2, , avx2)          \
  X(32, 2, 1, , avx2)          \
  X(32, 2, 1, _prefetch, avx2) \
  X(8, 4, 2, , avx2)           \
  X(16, 4, 1, , avx2)          \
  X(24, 4, 1, , avx2)          \
  X(24, 4, 1, _prefetch, avx2) \
  X(8, 8, 1, , avx2)           \
  X(8, 8, 1, _prefetch, avx2)

/* 32 zmm registers: up to 16 accumulators plus the loaded activations. */
#define FS_SPMM_AVX512_LIST(X)    \
  X(1, 1, 1, , avx512)            \
  X(16, 1, 2, , avx512)           \
  X(32, 1, 2, , avx512)           \
  X(64, 1, 2, , avx512)           \
  X(128, 1, 1, , avx512)          \
  X(128, 1, 1, _prefetch, avx512) \
  X(16, 2, 2, , avx512)           \
  X(32, 2, 2, , avx512)           \
  X(64, 2, 1, , avx512)           \
  X(64, 2, 1, _prefetch, avx512)  \
  X(16, 4, 2, , avx512)           \
  X(32, 4, 1, , avx512)           \
  X(64, 4, 1, , avx512)           \
  X(64, 4, 1, _prefetch, avx512)  \
  X(16, 8, 1, , avx512)           \
  X(32, 8, 1, , avx512)           \
  X(32, 8, 1, _prefetch, avx512)

/* 32 q registers of 4 lanes: up to 16 accumulators plus the loaded activations and the
 * broadcast weights. 16x8 and 32x4 would need 32 accumulators and spill, hence 8x8. */
#define FS_SPMM_NEON_LIST(X) \
  X(8, 1, 2, , neon)         \
  X(16, 1, 2, , neon)        \
  X(32, 1, 2, , neon)        \
  X(8, 2, 2, , neon)         \
  X(16, 2, 2, , neon)        \
  X(32, 2, 1, , neon)        \
  X(8, 4, 2, , neon)         \
  X(16, 4, 1, , neon)        \
  X(8, 8, 1, , neon)

#define FS_SPMM_NAME(MR, NR, SUFFIX, ISA) fs_f32_spmm_minmax_##MR##x##NR##SUFFIX##__##ISA
/* 1 for a _prefetch variant (SUFFIX is empty or _prefetch; the definitions assert which). */
#define FS_SPMM_PREFETCH(SUFFIX) (sizeof(#SUFFIX) > 1)

#define FS_SPMM_DECLARE(MR, NR, UNROLL, SUFFIX, ISA)                                            \
  void FS_SPMM_NAME(MR, NR, SUFFIX, ISA)(                                                      \
      size_t mc, size_t nc, const float* input, const float* weights, const uint32_t* nnzmap, \
      const int32_t* offsets, const float* bias, const float* residual,                       \
      size_t residual_stride, float* output, size_t output_stride, float lo, float hi);

FS_SPMM_SCALAR_LIST(FS_SPMM_DECLARE)
#if defined(FS_HAVE_SSE2)
FS_SPMM_SSE2_LIST(FS_SPMM_DECLARE)
#endif
#if defined(FS_HAVE_AVX2)
FS_SPMM_AVX2_LIST(FS_SPMM_DECLARE)
#endif
#if defined(FS_HAVE_AVX512)
FS_SPMM_AVX512_LIST(FS_SPMM_DECLARE)
#endif
#if defined(FS_HAVE_NEON)
FS_SPMM_NEON_LIST(FS_SPMM_DECLARE)
#endif

typedef struct fs_spmm_kernel {
  const char* name;
  unsigned mr;
  unsigned nr;
  unsigned unroll;
  unsigned prefetch; /* 1 for the _prefetch variants */
  fs_spmm_fn fn;
} fs_spmm_kernel;

/* ---- CHW companion ops: depthwise conv, first-layer conv, global average pooling, add ----
 *
 * Depthwise KxK convolution of ONE channel plane, stride S (K in {3, 5}, S in {1, 2}):
 *
 *   output[oy, ox] = clamp(bias + sum_{ky,kx} w[ky*K + kx] * x[oy*S + ky - pad_top,
 *                                                              ox*S + kx - pad_left], lo, hi)
 *
 * with x = 0 outside [0, ih) x [0, iw), except for the rows `above` and `below` supply. Rows
 * of x and of output are `input_stride` and `output_stride` bytes apart; a row is contiguous.
 * The kernel never reads x outside its ih x iw plane and the halo rows, nor writes output
 * outside oh x ow (tails are masked). Horizontal padding and
 * the stride-2 deinterleave happen while each input row is copied, exactly once, into
 * `scratch` (except on the AVX2 and AVX-512 3x3 stride-2 path below, which splits rows in
 * registers and touches no scratch): fs_dwconv2d_scratch_floats() floats owned by the caller (one per
 * thread, sized for every ISA's paths), which
 * the caller zero-fills once; calls with the same shape (every size argument) may then reuse
 * it without clearing, because a kernel writes only the data columns of its rows (and zeros
 * right after them), so the padding columns and the zero row stay zero. Vertical padding
 * reads that zero row. Two "same"-padded cases run on flattened planes instead
 * (dwconv_impl.h), the same way for every plane of a shape: stride 1 (pad_top = pad_left =
 * K/2, oh = ih, ow = iw) on contiguous rows (both strides 4 * width), where planes of at most
 * FS_DW_FLAT_STAGE_ROWS rows are first copied into their own part of the same scratch; and
 * stride 2 on even sizes (ih = 2 oh, iw = 2 ow, pad_top = pad_left = K/2 or K/2 - 1) with
 * contiguous output rows, whose input is split into four quarter planes there
 * (fs_dw_quarter_floats). On ISAs whose vec_<isa>.h sets FS_DW_S2_DIRECT (AVX2, AVX-512), 3x3
 * stride-2 calls with pad_top, pad_left <= 1 read the input rows in place and touch no
 * scratch (dwconv_impl.h, fs_dw_s2_rows).
 *
 * [out_begin, out_end) are the flat output positions (oy * ow + ox) the call writes: the
 * whole plane, [0, oh * ow); whole output rows (out_begin and out_end multiples of ow); or,
 * on the stride-1 flat path (fs_dw_flat_kind() == 1, contiguous rows), any range with
 * out_begin a multiple of 16 and out_end a multiple of 16 or oh * ow, which a range of whole
 * rows must also be there. Threads thus split one plane where they split the 1x1
 * convolutions around it (fs_steps.h). Positions outside the range are neither written nor
 * computed; only the input rows the range's taps use need to hold data. Other rows may be
 * read: into quarter-plane slots no tap reads, or, on the flat paths, into the lanes of a
 * tap column that wrap around a row, which a select (not a multiplication: a NaN there must
 * not spread) zeroes before the sum.
 *
 * `above` and `below` are NULL, or the K/2 rows (`input_stride` bytes apart, all readable)
 * just above row 0 and just below row ih - 1: the plane is then one band of rows of a taller
 * image (a row piece, fs_steps.h, of at least K/2 rows), and the taps that cross its edges
 * read the neighbouring band's rows instead of zeros. Only on the flat paths
 * (fs_dw_flat_kind() != 0; for stride 1, planes of at most FS_DW_FLAT_STAGE_ROWS rows, or at
 * least FS_DW_ROWS_MIN_W wide), with out_begin = 0 and out_end = oh * ow; or, on stride-1
 * planes taller than FS_DW_FLAT_STAGE_ROWS and at least FS_DW_ROWS_MIN_W wide, any range of
 * whole rows of at least 4.
 */
typedef void (*fs_dwconv2d_fn)(
    size_t ih, size_t iw, size_t oh, size_t ow, size_t pad_top, size_t pad_left,
    const float* input, size_t input_stride, const float* above, const float* below,
    const float* weights, float bias, float* scratch, float* output, size_t output_stride,
    size_t out_begin, size_t out_end, float lo, float hi);

/* Floats in one padded scratch row; the widest vector (16 floats) and every tap of the last
 * output vector, whatever the ISA, fit. For stride 2 a row is two halves: the even padded
 * columns, then the odd ones. */
static inline size_t fs_chw_row_floats(size_t k, size_t stride, size_t iw, size_t ow,
                                       size_t pad_left) {
  const size_t slack = 32, ow16 = (ow + 15) / 16 * 16;
  size_t need, data;
  if (stride == 1) {
    need = ow16 + k;
    data = pad_left + iw + slack;
  } else {
    need = ow16 + k / 2 + 1;
    data = (pad_left + iw + 1) / 2 + slack;
  }
  size_t len = (need > data ? need : data);
  len = (len + 15) / 16 * 16;
  return stride == 1 ? len : 2 * len;
}

/* Planes of at most this many rows take the depthwise flat path (stride 1, "same" padding;
 * dwconv_impl.h) through a zero-margined copy in scratch. */
#define FS_DW_FLAT_STAGE_ROWS 32

/* Stride-1 planes at least this wide go by blocks of whole rows (dwconv_impl.h, the rows
 * path; narrower rows waste lanes: the flat span is faster). Taller planes than a staged copy
 * take their halo rows only there. */
#define FS_DW_ROWS_MIN_W 48

/* Floats of that copy: zeros in front (the farthest tap, k/2 rows and k/2 columns, rounded to
 * whole 16-float vectors), the plane, and behind it zeros out to its last output's farthest
 * tap plus the slack of that output's vector, which also holds the row taps of the vector
 * after it that the 3x3 span loads (dwconv_impl.h, fs_dw_flat_span3: at most 19 floats past
 * the farthest tap, on a 32-row plane 28 wide). */
static inline size_t fs_dw_flat_stage_floats(size_t k, size_t iw) {
  const size_t reach = k / 2 * (iw + 1);
  return (reach + 15) / 16 * 16 + FS_DW_FLAT_STAGE_ROWS * iw + reach + 32;
}

/* The stride-2 flat path works in bands of output rows whose four quarter planes (input rows
 * and columns of one parity each) fit in L1 with the band's input and output: each quarter
 * holds the band's rows plus one above and one below, 16 floats of slack in front (the
 * farthest tap left of the first output) and behind (the lanes of the last vector past the
 * band). */
#define FS_DW_BAND_FLOATS 1024
static inline size_t fs_dw_band_rows(size_t oh, size_t ow) {
  const size_t r = FS_DW_BAND_FLOATS / ow;
  return r < 1 ? 1 : (r > oh ? oh : r);
}
static inline size_t fs_dw_quarter_floats(size_t oh, size_t ow) {
  return (16 + (fs_dw_band_rows(oh, ow) + 2) * ow + 32 + 15) / 16 * 16;
}

/* Wider stride-2 outputs keep the row path: its rows waste few lanes there, and in a fused
 * 1x1 + depthwise step (112x112 -> 56x56 in MobileNet v2) it was 7 % faster, the quarter
 * planes taking L1 space the step's other data needs. (Measured before the 3x3 stride-2
 * kernels read rows in place; on AVX2 and AVX-512 this decides only 5x5 and row pieces.) */
#define FS_DW_QUARTER_MAX_OW 32

/* Whether a shape may take a flat path: 1 (stride 1) or 2 (stride 2), else 0. The kernel also
 * checks the row strides. */
static inline int fs_dw_flat_kind(size_t k, size_t stride, size_t ih, size_t iw, size_t oh,
                                  size_t ow, size_t pad_top, size_t pad_left) {
  if (stride == 1 && pad_top == k / 2 && pad_left == k / 2 && oh == ih && ow == iw) return 1;
  if (stride == 2 && pad_top == pad_left && (pad_top == k / 2 || pad_top + 1 == k / 2) &&
      ih == 2 * oh && iw == 2 * ow && ow <= FS_DW_QUARTER_MAX_OW) {
    return 2;
  }
  return 0;
}

/* The flat paths' table of lane masks (dwconv_impl.h, fs_dw_mask_table): a 64-byte header,
 * then up to FS_DW_MASK_PERIOD_MAX entries of K <= 5 masks of at most FS_DW_MASK_BYTES. */
#define FS_DW_MASK_PERIOD_MAX 16
#define FS_DW_MASK_BYTES 64
#define FS_DW_MASK_TABLE_FLOATS (16 + FS_DW_MASK_PERIOD_MAX * 5 * FS_DW_MASK_BYTES / 4)

/* A ring of K + 2 rows (the input rows of the current output row and of the next one, staged
 * ahead so their stores have retired before they are read) and one zero row; after them, for
 * shapes that may take a flat path, its plane copy or its four quarter planes (the row ring
 * and the flat paths keep apart, so either can follow the other on the same scratch; the
 * stride-1 flat path reads the ring's zero row, which nothing writes), and
 * their table of lane masks. */
static inline size_t fs_dwconv2d_scratch_floats(size_t k, size_t stride, size_t ih, size_t iw,
                                                size_t oh, size_t ow, size_t pad_top,
                                                size_t pad_left) {
  const size_t ring = (k + 3) * fs_chw_row_floats(k, stride, iw, ow, pad_left);
  switch (fs_dw_flat_kind(k, stride, ih, iw, oh, ow, pad_top, pad_left)) {
    case 1: return ring + fs_dw_flat_stage_floats(k, iw) + FS_DW_MASK_TABLE_FLOATS;
    case 2: return ring + 4 * fs_dw_quarter_floats(oh, ow) + FS_DW_MASK_TABLE_FLOATS;
    default: return ring;
  }
}

/* Dense 3x3 convolution, stride S in {1, 2}, for output rows [oy_begin, oy_end) of one image,
 * all `cout` output channels (the first layer of a MobileNet: cin = 3):
 *
 *   output[co, oy, ox] = clamp(bias[co] + sum_{ci,ky,kx} w[((co*cin + ci)*3 + ky)*3 + kx] *
 *                              x[ci, oy*S + ky - pad_top, ox*S + kx - pad_left], lo, hi)
 *
 * x[ci, iy, ix] is at input + ci*channel_stride + iy*row_stride + ix*pixel_stride bytes, so
 * the same kernel reads CHW (pixel_stride = 4) and HWC (channel_stride = 4, pixel_stride =
 * 4*cin) images. output[co, oy, ox] is at output + co*output_channel_stride +
 * oy*output_row_stride + 4*ox bytes. bias may be NULL. Same scratch (zero-filled once by the
 * caller) and out-of-bounds contract as the depthwise kernel, with fs_conv2d_scratch_floats()
 * floats. */
typedef void (*fs_conv2d_fn)(
    size_t cin, size_t ih, size_t iw, size_t oh, size_t ow, size_t pad_top, size_t pad_left,
    size_t oy_begin, size_t oy_end, const float* input, size_t channel_stride,
    size_t row_stride, size_t pixel_stride, size_t cout, const float* weights,
    const float* bias, float* scratch, float* output, size_t output_channel_stride,
    size_t output_row_stride, float lo, float hi);

static inline size_t fs_conv2d_scratch_floats(size_t cin, size_t stride, size_t iw, size_t ow,
                                              size_t pad_left) {
  return (3 * cin + 1) * fs_chw_row_floats(3, stride, iw, ow, pad_left);
}

/* Global average pooling: output[c] = scale * sum_{i < hw} x[c, i] for c < channels, channel c
 * at input + c * input_stride bytes. */
typedef void (*fs_gavgpool_fn)(size_t channels, size_t hw, const float* input,
                               size_t input_stride, float scale, float* output);

/* Elementwise y[i] = clamp(a[i] + b[i], lo, hi), i < n (y may alias a or b). */
typedef void (*fs_vadd_fn)(size_t n, const float* a, const float* b, float* y, float lo,
                           float hi);

/* Variant lists: the CHW ops of one ISA, X(ISA). One variant per op and ISA; tiles are fixed
 * in the templates (see dwconv_impl.h, chw_impl.h). */
#define FS_CHW_NAMES(ISA)                                                              \
  void fs_f32_dwconv2d_chw_3x3s1__##ISA(FS_DWCONV_PARAMS);                             \
  void fs_f32_dwconv2d_chw_3x3s2__##ISA(FS_DWCONV_PARAMS);                             \
  void fs_f32_dwconv2d_chw_5x5s1__##ISA(FS_DWCONV_PARAMS);                             \
  void fs_f32_dwconv2d_chw_5x5s2__##ISA(FS_DWCONV_PARAMS);                             \
  void fs_f32_conv2d_chw_3x3s1_4x2v__##ISA(FS_CONV2D_PARAMS);                          \
  void fs_f32_conv2d_chw_3x3s2_4x2v__##ISA(FS_CONV2D_PARAMS);                          \
  void fs_f32_gavgpool_chw_4v__##ISA(size_t channels, size_t hw, const float* input,   \
                                     size_t input_stride, float scale, float* output); \
  void fs_f32_vadd_minmax_4v__##ISA(size_t n, const float* a, const float* b, float* y, \
                                    float lo, float hi);

#define FS_DWCONV_PARAMS                                                                  \
  size_t ih, size_t iw, size_t oh, size_t ow, size_t pad_top, size_t pad_left,            \
      const float *input, size_t input_stride, const float *above, const float *below,   \
      const float *weights, float bias,                                                   \
      float *scratch, float *output, size_t output_stride, size_t out_begin, size_t out_end, \
      float lo, float hi
#define FS_CONV2D_PARAMS                                                                   \
  size_t cin, size_t ih, size_t iw, size_t oh, size_t ow, size_t pad_top, size_t pad_left, \
      size_t oy_begin, size_t oy_end, const float *input, size_t channel_stride,           \
      size_t row_stride, size_t pixel_stride, size_t cout, const float *weights,           \
      const float *bias, float *scratch, float *output, size_t output_channel_stride,      \
      size_t output_row_stride, float lo, float hi

FS_CHW_NAMES(scalar)
#if defined(FS_HAVE_SSE2)
FS_CHW_NAMES(sse2)
#endif
#if defined(FS_HAVE_AVX2)
FS_CHW_NAMES(avx2)
#endif
#if defined(FS_HAVE_AVX512)
FS_CHW_NAMES(avx512)
#endif
#if defined(FS_HAVE_NEON)
FS_CHW_NAMES(neon)
#endif

typedef struct fs_chw_ops {
  const char* dwconv2d_names[2][2]; /* [k == 5][stride == 2] */
  fs_dwconv2d_fn dwconv2d[2][2];
  const char* conv2d_names[2]; /* [stride == 2] */
  fs_conv2d_fn conv2d[2];
  const char* gavgpool_name;
  fs_gavgpool_fn gavgpool;
  const char* vadd_name;
  fs_vadd_fn vadd;
} fs_chw_ops;

/* The CHW ops compiled for `isa`, or NULL. */
const fs_chw_ops* fs_chw_ops_for(int isa);

/* Dispatch (dispatch.c). */
const char* fs_isa_name(int isa);
/* 1 if the variant was compiled in and this CPU and OS can run it. */
int fs_isa_supported(int isa);
/* The spmm variants compiled for `isa` (0 when not compiled in). */
size_t fs_spmm_kernel_count(int isa);
const fs_spmm_kernel* fs_spmm_kernel_at(int isa, size_t index);

#ifdef __cplusplus
}
#endif

#endif /* FS_KERNELS_H */
