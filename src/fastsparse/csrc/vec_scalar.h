/* Scalar vector vocabulary: one lane. The portable fallback, and the oracle the SIMD variants
 * are compared with in the C tests.
 *
 * Defines what the op templates (*_impl.h) expect: see the list in spmm_impl.h. */
#ifndef FS_VEC_SCALAR_H
#define FS_VEC_SCALAR_H

#include <stddef.h>
#include <string.h>

#define FS_VLEN 1
typedef float fs_vec;
typedef int fs_tail; /* a partial vector of one lane is a full one */

static inline fs_tail fs_tail_make(size_t n) { (void)n; return 1; }
static inline fs_vec fs_vload(const float* p) { return *p; }
static inline void fs_vstore(float* p, fs_vec v) { *p = v; }
static inline fs_vec fs_vload_tail(const float* p, fs_tail t) { (void)t; return *p; }
static inline void fs_vstore_tail(float* p, fs_vec v, fs_tail t) { (void)t; *p = v; }
static inline fs_vec fs_vset1(float x) { return x; }
static inline fs_vec fs_vzero(void) { return 0.0f; }
static inline fs_vec fs_vadd(fs_vec a, fs_vec b) { return a + b; }
static inline fs_vec fs_vfma(fs_vec a, fs_vec b, fs_vec c) { return a * b + c; }
/* Comparisons with NaN are false, so a NaN x passes through unchanged. */
static inline fs_vec fs_vclamp(fs_vec x, fs_vec lo, fs_vec hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

/* Used by the CHW companion ops (dwconv_impl.h, chw_impl.h). */
static inline fs_vec fs_vmul(fs_vec a, fs_vec b) { return a * b; }
/* (a, b) = 2 consecutive floats -> the even-indexed one and the odd-indexed one. */
static inline void fs_vdeinterleave(fs_vec a, fs_vec b, fs_vec* even, fs_vec* odd) {
  *even = a;
  *odd = b;
}
static inline float fs_vhsum(fs_vec v) { return v; }

/* Used by the flat depthwise path (dwconv_impl.h). */
typedef int fs_vmask;
static inline fs_vec fs_vsub(fs_vec a, fs_vec b) { return a - b; }
static inline fs_vmask fs_vlt(fs_vec a, fs_vec b) { return a < b; }
static inline fs_vec fs_vmaskz(fs_vmask m, fs_vec v) { return m ? v : 0.0f; }
/* A mask stored by fs_dw_mask_table, read straight into a register. */
static inline fs_vmask fs_vmask_load(const void* p) {
  fs_vmask m;
  memcpy(&m, p, sizeof m);
  return m;
}
/* Lane 0 of p if a = 0 < b, else zero; reads p[0] only in the first case. */
static inline fs_vec fs_vload_range(const float* p, size_t a, size_t b) {
  return a < b ? *p : 0.0f;
}

#endif /* FS_VEC_SCALAR_H */
