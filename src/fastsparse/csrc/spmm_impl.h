/* Sparse 1x1 convolution (CHW), written once for every ISA.
 *
 * Included by a thin per-ISA translation unit (kernels_<isa>.c) after its vector vocabulary
 * (vec_<isa>.h), which defines the names below; FS_SPMM_DEFINE(MR, NR, UNROLL, SUFFIX, ISA)
 * then instantiates one variant.
 *
 *   FS_VLEN                     floats per vector
 *   fs_vec                      vector type
 *   fs_tail, fs_tail_make(n)    descriptor of a partial vector of n lanes, 1 <= n <= FS_VLEN
 *   fs_vload, fs_vstore         unaligned full-vector load / store
 *   fs_vload_tail, fs_vstore_tail   the same for the first n lanes only (no access beyond)
 *   fs_vset1, fs_vzero, fs_vadd, fs_vfma(a, b, c) = a * b + c
 *   fs_vclamp(x, lo, hi)        min(max(x, lo), hi) that propagates NaN in x
 *
 * Scheme (Elsen et al., "Fast Sparse ConvNets"): a tile of MR spatial positions is walked for
 * every block of NR output channels; per non-zero input column, MR activations of that input
 * channel are loaded once and multiplied by the NR broadcast weights. The MR x Cin activation
 * tile is what every output block re-reads, so it stays in L1/L2. Spatial remainders run the
 * same code with fewer vectors, the last one partial, so nothing outside [0, mc) is touched.
 *
 * The _prefetch variants (SUFFIX `_prefetch`) also ask for the lines each output row will take
 * in the next tile while they finish the row in this one. When a layer's output is larger than
 * L2, every store of a tile otherwise waits for its line from L3 or memory (measured:
 * BENCHMARKS.md, session 7); the tile order gives the hardware prefetchers one stream per
 * output channel, far more than they follow.
 */
#ifndef FS_SPMM_IMPL_H
#define FS_SPMM_IMPL_H

#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "fs_kernels.h"

#define FS_INLINE static inline __attribute__((always_inline))
#define FS_MAX_NV 8
#define FS_MAX_NR 8

/* Loads vector v of a row of nv vectors; the last one is partial when `has_tail`. */
FS_INLINE fs_vec fs_row_load(const float* p, size_t v, size_t nv, int has_tail, fs_tail tail) {
  return (has_tail && v == nv - 1) ? fs_vload_tail(p + v * FS_VLEN, tail) : fs_vload(p + v * FS_VLEN);
}

FS_INLINE void fs_row_store(float* p, fs_vec x, size_t v, size_t nv, int has_tail, fs_tail tail) {
  if (has_tail && v == nv - 1) {
    fs_vstore_tail(p + v * FS_VLEN, x, tail);
  } else {
    fs_vstore(p + v * FS_VLEN, x);
  }
}

/* acc[r][v] += w[r] * (input row at byte offset `offset`)[v], for r < nr, v < nv. */
FS_INLINE void fs_spmm_accumulate(fs_vec acc[FS_MAX_NR][FS_MAX_NV], size_t nv, size_t nr,
                                  int has_tail, fs_tail tail, const float* input, int32_t offset,
                                  const float* w) {
  const float* x = (const float*)((const char*)input + offset);
  fs_vec xv[FS_MAX_NV];
#pragma GCC unroll 8
  for (size_t v = 0; v < nv; v++) xv[v] = fs_row_load(x, v, nv, has_tail, tail);
#pragma GCC unroll 8
  for (size_t r = 0; r < nr; r++) {
    const fs_vec wv = fs_vset1(w[r]);
#pragma GCC unroll 8
    for (size_t v = 0; v < nv; v++) acc[r][v] = fs_vfma(wv, xv[v], acc[r][v]);
  }
}

/* One block of nr output channels starting at channel `row`, over nv vectors of positions.
 * Advances *wp and *op past the block's non-zeros. */
FS_INLINE void fs_spmm_block(size_t nv, size_t nr, size_t unroll, int prefetch, int has_tail,
                             fs_tail tail, size_t row, uint32_t nnz, const float* input,
                             const float** wp, const int32_t** op, const float* bias,
                             const float* residual, size_t residual_stride, float* output,
                             size_t output_stride, fs_vec vlo, fs_vec vhi) {
  fs_vec acc[FS_MAX_NR][FS_MAX_NV];
  fs_vec acc2[FS_MAX_NR][FS_MAX_NV];
#pragma GCC unroll 8
  for (size_t r = 0; r < nr; r++) {
    const fs_vec b = bias != NULL ? fs_vset1(bias[row + r]) : fs_vzero();
#pragma GCC unroll 8
    for (size_t v = 0; v < nv; v++) {
      acc[r][v] = b;
      acc2[r][v] = fs_vzero();
    }
  }
  const float* w = *wp;
  const int32_t* o = *op;
  uint32_t k = nnz;
  if (unroll == 2) {
    /* Alternate non-zeros feed two accumulator sets: twice the independent FMA chains. */
    for (; k >= 2; k -= 2) {
      fs_spmm_accumulate(acc, nv, nr, has_tail, tail, input, o[0], w);
      fs_spmm_accumulate(acc2, nv, nr, has_tail, tail, input, o[1], w + nr);
      w += 2 * nr;
      o += 2;
    }
  }
  for (; k != 0; k--) {
    fs_spmm_accumulate(acc, nv, nr, has_tail, tail, input, o[0], w);
    w += nr;
    o += 1;
  }
  *wp = w;
  *op = o;
#pragma GCC unroll 8
  for (size_t r = 0; r < nr; r++) {
    float* out = (float*)((char*)output + (row + r) * output_stride);
    const float* res =
        residual != NULL ? (const float*)((const char*)residual + (row + r) * residual_stride) : NULL;
    if (prefetch) {
      /* Every line of the row's next tile. Integer arithmetic: after the last tile the lines
       * lie past the row (a prefetch never faults, but a pointer past its array would be
       * undefined). x86 builds have no -mprfchw, so the write hint becomes prefetcht1. */
      const uintptr_t next = (uintptr_t)(out + nv * FS_VLEN);
      for (uintptr_t line = next & ~(uintptr_t)63; line < next + nv * FS_VLEN * sizeof(float);
           line += 64) {
        __builtin_prefetch((const void*)line, 1, 2);
      }
    }
#pragma GCC unroll 8
    for (size_t v = 0; v < nv; v++) {
      fs_vec y = acc[r][v];
      if (unroll == 2) y = fs_vadd(y, acc2[r][v]);
      if (res != NULL) y = fs_vadd(y, fs_row_load(res, v, nv, has_tail, tail));
      fs_row_store(out, fs_vclamp(y, vlo, vhi), v, nv, has_tail, tail);
    }
  }
}

/* All output channels for one tile of nv vectors of positions. */
FS_INLINE void fs_spmm_tile(size_t nv, size_t nr, size_t unroll, int prefetch, int has_tail,
                            fs_tail tail, size_t nc, const float* input, const float* weights,
                            const uint32_t* nnzmap, const int32_t* offsets, const float* bias,
                            const float* residual, size_t residual_stride, float* output,
                            size_t output_stride, fs_vec vlo, fs_vec vhi) {
  const float* w = weights;
  const int32_t* o = offsets;
  const size_t full_blocks = nc / nr;
  for (size_t b = 0; b < full_blocks; b++) {
    fs_spmm_block(nv, nr, unroll, prefetch, has_tail, tail, b * nr, nnzmap[b], input, &w, &o,
                  bias, residual, residual_stride, output, output_stride, vlo, vhi);
  }
  /* Leftover channels (nc % nr) were packed as blocks of one. */
  for (size_t row = full_blocks * nr, b = full_blocks; row < nc; row++, b++) {
    fs_spmm_block(nv, 1, unroll, prefetch, has_tail, tail, row, nnzmap[b], input, &w, &o, bias,
                  residual, residual_stride, output, output_stride, vlo, vhi);
  }
}

/* MR = 1 (ISAs with FMA): one position at a time, each row's dot product in four scalar FMA
 * chains over its non-zeros. For a batch-1 classifier, where the vector tiles fill one lane of
 * a vector per non-zero. Scalar code beat gathers on Zen 4, whose 16-lane gather takes about
 * 23 cycles (1280x1000 at 90 %: 52 -> 42 us; 8-lane gathers 48 us). */
#if defined(FS_HAVE_SPMM_DOT)
FS_INLINE void fs_spmm_dot(size_t mc, size_t nc, const float* input, const float* weights,
                           const uint32_t* nnzmap, const int32_t* offsets, const float* bias,
                           const float* residual, size_t residual_stride, float* output,
                           size_t output_stride, float lo, float hi) {
  for (size_t m = 0; m < mc; m++) {
    const char* x = (const char*)(input + m);
    const float* w = weights;
    const int32_t* o = offsets;
    for (size_t r = 0; r < nc; r++) {
      const uint32_t nnz = nnzmap[r];
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
      uint32_t j = 0;
      for (; j + 4 <= nnz; j += 4) {
        s0 = fmaf(w[j], *(const float*)(x + o[j]), s0);
        s1 = fmaf(w[j + 1], *(const float*)(x + o[j + 1]), s1);
        s2 = fmaf(w[j + 2], *(const float*)(x + o[j + 2]), s2);
        s3 = fmaf(w[j + 3], *(const float*)(x + o[j + 3]), s3);
      }
      for (; j < nnz; j++) s0 = fmaf(w[j], *(const float*)(x + o[j]), s0);
      float y = ((s0 + s1) + (s2 + s3)) + (bias != NULL ? bias[r] : 0.0f);
      if (residual != NULL) y += ((const float*)((const char*)residual + r * residual_stride))[m];
      if (y < lo) y = lo; /* comparisons keep a NaN */
      if (y > hi) y = hi;
      ((float*)((char*)output + r * output_stride))[m] = y;
      w += nnz;
      o += nnz;
    }
  }
}
#define FS_SPMM_DOT(MR, ...) \
  if (MR == 1) {             \
    fs_spmm_dot(__VA_ARGS__); \
    return;                  \
  }
#else
#define FS_SPMM_DOT(MR, ...)
#endif

#define FS_SPMM_TAIL_CASE(NVT)                                                                  \
  case NVT:                                                                                     \
    if (NVT <= NV_) {                                                                \
      fs_spmm_tile(NVT, NR_, UNROLL_, 0, 1, tail, nc, input, weights, nnzmap, offsets, bias,   \
                   residual, residual_stride, output, output_stride, vlo, vhi);                \
    }                                                                                           \
    break;

/* The spatial loop shared by all variants: full tiles of MR, then one tail pass of
 * ceil(rem / VLEN) vectors whose last vector is partial. */
#define FS_SPMM_DEFINE(MR, NR, UNROLL, SUFFIX, ISA)                                             \
  void FS_SPMM_NAME(MR, NR, SUFFIX, ISA)(                                                      \
      size_t mc, size_t nc, const float* input, const float* weights, const uint32_t* nnzmap, \
      const int32_t* offsets, const float* bias, const float* residual,                       \
      size_t residual_stride, float* output, size_t output_stride, float lo, float hi) {      \
    enum { MR_ = MR, NR_ = NR, UNROLL_ = UNROLL, NV_ = MR / FS_VLEN };                         \
    const int PREFETCH_ = FS_SPMM_PREFETCH(SUFFIX);                                            \
    _Static_assert(sizeof(#SUFFIX) == 1 || sizeof(#SUFFIX) == sizeof("_prefetch"), "suffix");  \
    _Static_assert((MR % FS_VLEN == 0 || (MR == 1 && NR == 1)) && NV_ <= FS_MAX_NV &&          \
                   NR <= FS_MAX_NR, "tile");                                                   \
    assert(mc != 0);                                                                            \
    assert(nc != 0);                                                                            \
    assert(input != NULL && weights != NULL && nnzmap != NULL && offsets != NULL);              \
    assert(output != NULL);                                                                     \
    assert(!(lo > hi));                                                                         \
    FS_SPMM_DOT(MR, mc, nc, input, weights, nnzmap, offsets, bias, residual, residual_stride,  \
                output, output_stride, lo, hi)                                                  \
    const fs_vec vlo = fs_vset1(lo);                                                            \
    const fs_vec vhi = fs_vset1(hi);                                                            \
    const fs_tail full = fs_tail_make(FS_VLEN);                                                 \
    for (; mc >= MR_; mc -= MR_) {                                                              \
      fs_spmm_tile(NV_, NR_, UNROLL_, PREFETCH_, 0, full, nc, input, weights, nnzmap, offsets, \
                   bias, residual, residual_stride, output, output_stride, vlo, vhi);           \
      input += MR_;                                                                             \
      output += MR_;                                                                            \
      if (residual != NULL) residual += MR_;                                                    \
    }                                                                                           \
    if (mc != 0) {                                                                              \
      const size_t nvt = (mc + FS_VLEN - 1) / FS_VLEN;                                          \
      const fs_tail tail = fs_tail_make(mc - (nvt - 1) * FS_VLEN);                              \
      switch (nvt) {                                                                            \
        FS_SPMM_TAIL_CASES                                                                      \
        default:                                                                                \
          assert(0);                                                                            \
      }                                                                                         \
    }                                                                                           \
  }

/* A tail is shorter than MR, so it needs 1..NV_ vectors (the last one partial); the cases
 * above NV_ are compiled out by the constant condition in FS_SPMM_TAIL_CASE. */
#define FS_SPMM_TAIL_CASES                                                                      \
  FS_SPMM_TAIL_CASE(1) FS_SPMM_TAIL_CASE(2) FS_SPMM_TAIL_CASE(3) FS_SPMM_TAIL_CASE(4)          \
  FS_SPMM_TAIL_CASE(5) FS_SPMM_TAIL_CASE(6) FS_SPMM_TAIL_CASE(7) FS_SPMM_TAIL_CASE(8)

#endif /* FS_SPMM_IMPL_H */
