/* SSE2 vector vocabulary: 4 lanes, the x86-64 baseline. No FMA: a multiply and an add, each
 * rounded. Partial vectors of 1-3 lanes are loaded and stored piecewise: SSE2 has no masked load.
 *
 * Defines what the op templates (*_impl.h) expect: see the list in spmm_impl.h. */
#ifndef FS_VEC_SSE2_H
#define FS_VEC_SSE2_H

#if !defined(__SSE2__)
#error "vec_sse2.h needs SSE2 (x86-64)"
#endif
#include <emmintrin.h>
#include <stddef.h>

#define FS_VLEN 4
typedef __m128 fs_vec;
typedef size_t fs_tail; /* number of lanes, 1..4 */

static inline fs_tail fs_tail_make(size_t n) { return n; }
static inline fs_vec fs_vload(const float* p) { return _mm_loadu_ps(p); }
static inline void fs_vstore(float* p, fs_vec v) { _mm_storeu_ps(p, v); }
/* Two floats move as one 64-bit lane with _mm_loadl_epi64/_mm_storel_epi64: they access
 * memory through an unaligned, may-alias type. (_mm_load_sd/_mm_store_sd dereference a
 * double*, which is undefined for the 4-byte aligned float rows they get; UBSan flags it.) */
static inline fs_vec fs_vload_lo2(const float* p) {
  return _mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)p));
}
static inline void fs_vstore_lo2(float* p, fs_vec v) {
  _mm_storel_epi64((__m128i*)p, _mm_castps_si128(v));
}
static inline fs_vec fs_vload_tail(const float* p, fs_tail n) {
  switch (n) {
    case 1: return _mm_load_ss(p);
    case 2: return fs_vload_lo2(p);
    case 3: return _mm_movelh_ps(fs_vload_lo2(p), _mm_load_ss(p + 2));
    default: return _mm_loadu_ps(p);
  }
}
static inline void fs_vstore_tail(float* p, fs_vec v, fs_tail n) {
  switch (n) {
    case 1: _mm_store_ss(p, v); break;
    case 2: fs_vstore_lo2(p, v); break;
    case 3:
      fs_vstore_lo2(p, v);
      _mm_store_ss(p + 2, _mm_movehl_ps(v, v));
      break;
    default: _mm_storeu_ps(p, v);
  }
}
static inline fs_vec fs_vset1(float x) { return _mm_set1_ps(x); }
static inline fs_vec fs_vzero(void) { return _mm_setzero_ps(); }
static inline fs_vec fs_vadd(fs_vec a, fs_vec b) { return _mm_add_ps(a, b); }
static inline fs_vec fs_vfma(fs_vec a, fs_vec b, fs_vec c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
/* maxps/minps return their second operand when either is NaN: x goes second. */
static inline fs_vec fs_vclamp(fs_vec x, fs_vec lo, fs_vec hi) {
  return _mm_min_ps(hi, _mm_max_ps(lo, x));
}

/* Used by the CHW companion ops (dwconv_impl.h, chw_impl.h). */
static inline fs_vec fs_vmul(fs_vec a, fs_vec b) { return _mm_mul_ps(a, b); }
/* (a, b) = 8 consecutive floats -> their even-indexed and odd-indexed halves, in order. */
static inline void fs_vdeinterleave(fs_vec a, fs_vec b, fs_vec* even, fs_vec* odd) {
  *even = _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  *odd = _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
}
static inline float fs_vhsum(fs_vec v) {
  __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/* Used by the flat depthwise path (dwconv_impl.h). */
typedef __m128 fs_vmask; /* all-ones or all-zeros lanes */
static inline fs_vec fs_vsub(fs_vec a, fs_vec b) { return _mm_sub_ps(a, b); }
static inline fs_vmask fs_vlt(fs_vec a, fs_vec b) { return _mm_cmplt_ps(a, b); }
static inline fs_vec fs_vmaskz(fs_vmask m, fs_vec v) { return _mm_and_ps(m, v); }
/* A mask stored by fs_dw_mask_table, read straight into a register. */
static inline fs_vmask fs_vmask_load(const void* p) { return _mm_loadu_ps((const float*)p); }
/* Lanes [a, b) of the vector at p (a <= b <= 4), zeros elsewhere; reads only p[a..b). Built
 * in registers: the depthwise row path takes it at both ends of every row, and a copy through
 * a stack array would stall each load on store forwarding. */
static inline fs_vec fs_vload_range(const float* p, size_t a, size_t b) {
  return _mm_setr_ps(a <= 0 && 0 < b ? p[0] : 0.0f, a <= 1 && 1 < b ? p[1] : 0.0f,
                     a <= 2 && 2 < b ? p[2] : 0.0f, a <= 3 && 3 < b ? p[3] : 0.0f);
}

#endif /* FS_VEC_SSE2_H */
