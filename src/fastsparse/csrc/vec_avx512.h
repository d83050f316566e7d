/* AVX-512F vector vocabulary: 16 lanes. Partial vectors use mask registers (masked loads do not
 * fault on masked-out lanes), so tails touch nothing beyond the row.
 *
 * Defines what the op templates (*_impl.h) expect: see the list in spmm_impl.h. */
#ifndef FS_VEC_AVX512_H
#define FS_VEC_AVX512_H

#if !defined(__AVX512F__)
#error "vec_avx512.h needs -mavx512f"
#endif
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FS_VLEN 16
typedef __m512 fs_vec;
typedef __mmask16 fs_tail; /* lane mask */

static inline fs_tail fs_tail_make(size_t n) { return (__mmask16)((1u << n) - 1u); }
static inline fs_vec fs_vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void fs_vstore(float* p, fs_vec v) { _mm512_storeu_ps(p, v); }
static inline fs_vec fs_vload_tail(const float* p, fs_tail m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void fs_vstore_tail(float* p, fs_vec v, fs_tail m) { _mm512_mask_storeu_ps(p, m, v); }
static inline fs_vec fs_vset1(float x) { return _mm512_set1_ps(x); }
static inline fs_vec fs_vzero(void) { return _mm512_setzero_ps(); }
static inline fs_vec fs_vadd(fs_vec a, fs_vec b) { return _mm512_add_ps(a, b); }
static inline fs_vec fs_vfma(fs_vec a, fs_vec b, fs_vec c) { return _mm512_fmadd_ps(a, b, c); }
/* vmaxps/vminps return their second operand when either is NaN: x goes second. */
static inline fs_vec fs_vclamp(fs_vec x, fs_vec lo, fs_vec hi) {
  return _mm512_min_ps(hi, _mm512_max_ps(lo, x));
}

/* Used by the CHW companion ops (dwconv_impl.h, chw_impl.h). */
static inline fs_vec fs_vmul(fs_vec a, fs_vec b) { return _mm512_mul_ps(a, b); }
/* (a, b) = 32 consecutive floats -> their even-indexed and odd-indexed halves, in order. */
static inline void fs_vdeinterleave(fs_vec a, fs_vec b, fs_vec* even, fs_vec* odd) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  *even = _mm512_permutex2var_ps(a, ie, b);
  *odd = _mm512_permutex2var_ps(a, io, b);
}
static inline float fs_vhsum(fs_vec v) {
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/* Used by the flat depthwise path (dwconv_impl.h). */
typedef __mmask16 fs_vmask;
static inline fs_vec fs_vsub(fs_vec a, fs_vec b) { return _mm512_sub_ps(a, b); }
static inline fs_vmask fs_vlt(fs_vec a, fs_vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline fs_vec fs_vmaskz(fs_vmask m, fs_vec v) { return _mm512_maskz_mov_ps(m, v); }
/* A mask stored by fs_dw_mask_table, read straight into a register. */
static inline fs_vmask fs_vmask_load(const void* p) {
  fs_vmask m;
  memcpy(&m, p, sizeof m);
  return m;
}
/* An empty asm that takes x in a register and may change it: GCC would otherwise fold a
 * load into every FMA that uses it, and the rows depthwise path (dwconv_impl.h) loads each
 * tap vector once for several output rows. */
#define fs_vkeep(x) __asm__("" : "+v"(x))
/* Lanes [a, b) (a <= b <= 16), as a mask. */
static inline fs_tail fs_tail_range(size_t a, size_t b) {
  return (__mmask16)((1u << b) - (1u << a));
}
/* Lanes [a, b) of the vector at p (a <= b <= 16), zeros elsewhere; reads only p[a..b). */
static inline fs_vec fs_vload_range(const float* p, size_t a, size_t b) {
  return _mm512_maskz_loadu_ps(fs_tail_range(a, b), p);
}

/* Used by the 3x3 stride-2 depthwise path that splits input rows in registers
 * (dwconv_impl.h, fs_dw_s2_rows), in blocks of 3 output rows (4 spilled: 112 -> 56 took 1.05
 * us per plane against 0.82 for 3 and 0.86 for 2), and puts two
 * output rows of at most 8 columns in one vector (fs_dw_s2_pairs). Quarter order: column
 * j of the pair's even (odd) columns at lane [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7,
 * 14, 15]^-1 (j), the lanes vshufps leaves them in. */
#define FS_DW_S2_DIRECT 1
#define FS_DW_S2_ROW_BLOCK 3
#define FS_DW_S2_PAIRS 1
/* (a, b) = 32 consecutive floats -> their even and odd columns, in quarter order. */
static inline void fs_vsplit_quarters(fs_vec a, fs_vec b, fs_vec* even, fs_vec* odd) {
  *even = _mm512_shuffle_ps(a, b, 0x88);
  *odd = _mm512_shuffle_ps(a, b, 0xDD);
}
static inline fs_vec fs_vquarters_to_columns(fs_vec v) {
  const __m512i i = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  return _mm512_permutexvar_ps(i, v);
}
/* In quarter order: column j of the result is column j - 1 of cur, column 0 the last column
 * of prev. */
static inline fs_vec fs_vquarters_shift_up(fs_vec cur, fs_vec prev) {
  const __m512i i = _mm512_setr_epi32(31, 0, 13, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14);
  return _mm512_permutex2var_ps(cur, i, prev);
}
/* In quarter order: column j of the result is column j + 1 of cur, the last column the first
 * column of next. */
static inline fs_vec fs_vquarters_shift_down(fs_vec cur, fs_vec next) {
  const __m512i i = _mm512_setr_epi32(1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 2, 15, 16);
  return _mm512_permutex2var_ps(cur, i, next);
}
/* The first conv's tile: 4 channels x 3 vectors (12 of the 32 registers) ran 224x224 -> 32
 * channels in 227-228 us against 236-239 for 4 x 2 (x 4: 231). */
#define FS_CONV_NV 3
/* Two input rows of at most 16 floats as the three stride-2 column taps t[kx] of two output
 * rows of at most 8 (dwconv_impl.h, fs_dw_s2_pairs): lanes l < 8 from a, lanes 8 + l from b,
 * columns 2 l + kx - pad_left (pad_left 0 or 1, a constant); columns -1 and 16 are zeros (the
 * padding). */
static inline void fs_vsplit_row_pair(fs_vec a, fs_vec b, size_t pad_left, fs_vec* t) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const fs_vec even = _mm512_permutex2var_ps(a, ie, b), odd = _mm512_permutex2var_ps(a, io, b);
  if (pad_left == 1) {
    const __m512i ib = _mm512_setr_epi32(0, 1, 3, 5, 7, 9, 11, 13, 0, 17, 19, 21, 23, 25, 27, 29);
    t[0] = _mm512_maskz_permutex2var_ps((__mmask16)0xFEFE, a, ib, b);
    t[1] = even;
    t[2] = odd;
  } else {
    const __m512i ia = _mm512_setr_epi32(2, 4, 6, 8, 10, 12, 14, 0, 18, 20, 22, 24, 26, 28, 30, 0);
    t[0] = even;
    t[1] = odd;
    t[2] = _mm512_maskz_permutex2var_ps((__mmask16)0x7F7F, a, ia, b);
  }
}
/* Lanes n.. of lo, then lanes ..n-1 of hi: (lo, hi) as 32 lanes, moved down n (0 <= n < 16,
 * a constant). */
#define fs_valign_lanes(hi, lo, n) \
  _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), (n)))

/* The stride-1 3x3 flat path on staged copies moves its side chains one lane
 * (dwconv_impl.h, fs_dw_flat_span3): [prev's last lane, cur's lanes 0..14] and [cur's lanes
 * 1..15, next's first lane]. */
#define FS_DW_FLAT_CARRY 1
#define fs_vshift_in_up(cur, prev) fs_valign_lanes(cur, prev, FS_VLEN - 1)
#define fs_vshift_in_down(cur, next) fs_valign_lanes(next, cur, 1)

/* FMA in scalar code too: the one-position spmm variant (spmm_impl.h). */
#define FS_HAVE_SPMM_DOT 1

#endif /* FS_VEC_AVX512_H */
