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

/* Variant lists: X(MR, NR, UNROLL, ISA). MR spatial positions x NR output channels per tile;
 * UNROLL = 2 splits the accumulators in two sets fed by alternate non-zeros, which doubles
 * the number of independent FMA chains when MR/VLEN * NR alone is too small to hide the FMA
 * latency. UNROLL is part of the numerics (it fixes the summation order), so it is fixed per
 * variant and never depends on the tile position or the thread count. */
#define FS_SPMM_SCALAR_LIST(X) \
  X(8, 1, 1, scalar)           \
  X(8, 2, 1, scalar)           \
  X(8, 4, 1, scalar)           \
  X(4, 8, 1, scalar)

#define FS_SPMM_SSE2_LIST(X) \
  X(8, 1, 2, sse2)           \
  X(16, 1, 2, sse2)          \
  X(32, 1, 1, sse2)          \
  X(8, 2, 2, sse2)           \
  X(16, 2, 1, sse2)          \
  X(8, 4, 1, sse2)           \
  X(4, 8, 1, sse2)

#define FS_SPMM_AVX2_LIST(X) \
  X(8, 1, 2, avx2)           \
  X(16, 1, 2, avx2)          \
  X(32, 1, 2, avx2)          \
  X(64, 1, 1, avx2)          \
  X(8, 2, 2, avx2)           \
  X(16, 2, 2, avx2)          \
  X(32, 2, 1, avx2)          \
  X(8, 4, 2, avx2)           \
  X(16, 4, 1, avx2)          \
  X(8, 8, 1, avx2)

/* 32 zmm registers: up to 16 accumulators plus the loaded activations. */
#define FS_SPMM_AVX512_LIST(X) \
  X(16, 1, 2, avx512)          \
  X(32, 1, 2, avx512)          \
  X(64, 1, 2, avx512)          \
  X(128, 1, 1, avx512)         \
  X(16, 2, 2, avx512)          \
  X(32, 2, 2, avx512)          \
  X(64, 2, 1, avx512)          \
  X(16, 4, 2, avx512)          \
  X(32, 4, 1, avx512)          \
  X(64, 4, 1, avx512)          \
  X(16, 8, 1, avx512)          \
  X(32, 8, 1, avx512)

/* 32 q registers of 4 lanes: up to 16 accumulators plus the loaded activations and the
 * broadcast weights. 16x8 and 32x4 would need 32 accumulators and spill, hence 8x8. */
#define FS_SPMM_NEON_LIST(X) \
  X(8, 1, 2, neon)           \
  X(16, 1, 2, neon)          \
  X(32, 1, 2, neon)          \
  X(8, 2, 2, neon)           \
  X(16, 2, 2, neon)          \
  X(32, 2, 1, neon)          \
  X(8, 4, 2, neon)           \
  X(16, 4, 1, neon)          \
  X(8, 8, 1, neon)

#define FS_SPMM_NAME(MR, NR, ISA) fs_f32_spmm_minmax_##MR##x##NR##__##ISA

#define FS_SPMM_DECLARE(MR, NR, UNROLL, ISA)                                                    \
  void FS_SPMM_NAME(MR, NR, ISA)(                                                              \
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
  fs_spmm_fn fn;
} fs_spmm_kernel;

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
