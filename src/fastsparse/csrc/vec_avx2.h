/* AVX2+FMA vector vocabulary: 8 lanes. Partial vectors load through a lane mask (vmaskmovps
 * does not fault on masked-out lanes) and store by pieces of 4, 2 and 1 lanes, so tails touch
 * nothing beyond the row.
 *
 * Defines what the op templates (*_impl.h) expect: see the list in spmm_impl.h. */
#ifndef FS_VEC_AVX2_H
#define FS_VEC_AVX2_H

#if !defined(__AVX2__) || !defined(__FMA__)
#error "vec_avx2.h needs -mavx2 -mfma"
#endif
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define FS_VLEN 8
typedef __m256 fs_vec;
typedef struct fs_tail {
  __m256i mask; /* lanes [0, n) all ones */
  size_t n;
} fs_tail;

static inline fs_tail fs_tail_make(size_t n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  fs_tail t;
  t.mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane);
  t.n = n;
  return t;
}
static inline fs_vec fs_vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void fs_vstore(float* p, fs_vec v) { _mm256_storeu_ps(p, v); }
static inline fs_vec fs_vload_tail(const float* p, fs_tail t) { return _mm256_maskload_ps(p, t.mask); }
/* Not vmaskmovps: AMD cores run its store form as microcode, 3.3 ns a store on Zen 4 against
 * 0.3 for a plain one (AVX2 stride-2 depthwise planes of 14x14 spent half their time there). */
static inline void fs_vstore_tail(float* p, fs_vec v, fs_tail t) {
  size_t n = t.n;
  if (n >= 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  __m128 part = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(p, part);
    part = _mm256_extractf128_ps(v, 1);
    p += 4;
    n -= 4;
  }
  if (n >= 2) { /* as one 64-bit integer lane: an unaligned, may-alias access */
    _mm_storel_epi64((__m128i*)p, _mm_castps_si128(part));
    part = _mm_movehl_ps(part, part);
    p += 2;
    n -= 2;
  }
  if (n == 1) _mm_store_ss(p, part);
}
static inline fs_vec fs_vset1(float x) { return _mm256_set1_ps(x); }
static inline fs_vec fs_vzero(void) { return _mm256_setzero_ps(); }
static inline fs_vec fs_vadd(fs_vec a, fs_vec b) { return _mm256_add_ps(a, b); }
static inline fs_vec fs_vfma(fs_vec a, fs_vec b, fs_vec c) { return _mm256_fmadd_ps(a, b, c); }
/* maxps/minps return their second operand when either is NaN: x goes second. */
static inline fs_vec fs_vclamp(fs_vec x, fs_vec lo, fs_vec hi) {
  return _mm256_min_ps(hi, _mm256_max_ps(lo, x));
}

/* Used by the CHW companion ops (dwconv_impl.h, chw_impl.h). */
static inline fs_vec fs_vmul(fs_vec a, fs_vec b) { return _mm256_mul_ps(a, b); }
/* (a, b) = 16 consecutive floats -> their even-indexed and odd-indexed halves, in order. */
static inline void fs_vdeinterleave(fs_vec a, fs_vec b, fs_vec* even, fs_vec* odd) {
  const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* a0 a2 b0 b2 | a4 a6 b4 b6 */
  const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
  *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}
static inline float fs_vhsum(fs_vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/* Used by the flat depthwise path (dwconv_impl.h). Blocks of 3 output rows: a 3x3's 9
 * broadcast weights leave 7 of the 16 registers, and 4 rows (12 accumulators) spill more than
 * 3 (9): 4.7 vs 4.3 us per 112x112 plane. */
#define FS_DW_ROW_BLOCK 3
typedef __m256 fs_vmask; /* all-ones or all-zeros lanes */
static inline fs_vec fs_vsub(fs_vec a, fs_vec b) { return _mm256_sub_ps(a, b); }
static inline fs_vmask fs_vlt(fs_vec a, fs_vec b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline fs_vec fs_vmaskz(fs_vmask m, fs_vec v) { return _mm256_and_ps(m, v); }
/* A mask stored by fs_dw_mask_table, read straight into a register. */
static inline fs_vmask fs_vmask_load(const void* p) { return _mm256_loadu_ps((const float*)p); }
/* An empty asm that takes x in a register and may change it: GCC would otherwise fold a
 * load into every FMA that uses it, and the rows depthwise path (dwconv_impl.h) loads each
 * tap vector once for several output rows. */
#define fs_vkeep(x) __asm__("" : "+x"(x))
/* Lanes [a, b) of the vector at p (a <= b <= 8), zeros elsewhere; reads only p[a..b). */
static inline fs_vec fs_vload_range(const float* p, size_t a, size_t b) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)a), lane),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)b), lane));
  return _mm256_maskload_ps(p, m);
}

/* Used by the 3x3 stride-2 depthwise path that splits input rows in registers
 * (dwconv_impl.h, fs_dw_s2_rows), one output row at a time: with 16 registers, 2 or 3 rows
 * (and their 9 weights) spilled, 112 -> 56 taking 1.47 and 1.61 us per plane against 1.17.
 * Quarter order: column j of the pair's even (odd)
 * columns at lane [0, 1, 4, 5, 2, 3, 6, 7] (j), the lanes vshufps leaves them in. */
#define FS_DW_S2_DIRECT 1
#define FS_DW_S2_ROW_BLOCK 1
/* (a, b) = 16 consecutive floats -> their even and odd columns, in quarter order. */
static inline void fs_vsplit_quarters(fs_vec a, fs_vec b, fs_vec* even, fs_vec* odd) {
  *even = _mm256_shuffle_ps(a, b, 0x88);
  *odd = _mm256_shuffle_ps(a, b, 0xDD);
}
static inline fs_vec fs_vquarters_to_columns(fs_vec v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
}
/* The depthwise paths' one-column moves: cur with its lane 7 (an "up" move: the column
 * entering from the vector before) or its lane 0 (a "down" move: from the vector after)
 * taken from `other`, then permuted by `to`; one lane-crossing permute each. */
static inline fs_vec fs_vmove_up(fs_vec cur, fs_vec prev, __m256i to) {
  return _mm256_permutevar8x32_ps(_mm256_blend_ps(cur, prev, 0x80), to);
}
static inline fs_vec fs_vmove_down(fs_vec cur, fs_vec next, __m256i to) {
  return _mm256_permutevar8x32_ps(_mm256_blend_ps(cur, next, 0x01), to);
}
/* In quarter order: column j of the result is column j - 1 of cur, column 0 the last column
 * of prev (lane 7 in both orders). */
static inline fs_vec fs_vquarters_shift_up(fs_vec cur, fs_vec prev) {
  return fs_vmove_up(cur, prev, _mm256_setr_epi32(7, 0, 5, 2, 1, 4, 3, 6));
}
/* In quarter order: column j of the result is column j + 1 of cur, the last column the first
 * column of next (lane 0 in both orders). */
static inline fs_vec fs_vquarters_shift_down(fs_vec cur, fs_vec next) {
  return fs_vmove_down(cur, next, _mm256_setr_epi32(1, 4, 3, 6, 5, 2, 7, 0));
}

/* The stride-1 3x3 flat path on staged copies moves its side chains one lane
 * (dwconv_impl.h, fs_dw_flat_span3): [prev's last lane, cur's lanes 0..6] and [cur's lanes
 * 1..7, next's first lane]. */
#define FS_DW_FLAT_CARRY 1
static inline fs_vec fs_vshift_in_up(fs_vec cur, fs_vec prev) {
  return fs_vmove_up(cur, prev, _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6));
}
static inline fs_vec fs_vshift_in_down(fs_vec cur, fs_vec next) {
  return fs_vmove_down(cur, next, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0));
}

/* FMA in scalar code too: the one-position spmm variant (spmm_impl.h). */
#define FS_HAVE_SPMM_DOT 1

#endif /* FS_VEC_AVX2_H */
