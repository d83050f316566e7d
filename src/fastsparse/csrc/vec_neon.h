/* NEON vector vocabulary (AArch64, where NEON and FMA are mandatory): 4 lanes per q register.
 * Partial vectors of 1-3 lanes are loaded and stored piecewise (a d register and/or one lane):
 * NEON has no masked load, and nothing past the n lanes is touched.
 *
 * The same source also compiles on x86-64 through SIMDe for the test build (FS_NEON_VIA_SIMDE,
 * set by setup.py under FASTSPARSE_SIMDE_NEON=1; the unit then needs -mavx2 -mfma so that
 * vfmaq_f32 stays fused, as on hardware).
 *
 * Defines what the op templates (*_impl.h) expect: see the list in spmm_impl.h. */
#ifndef FS_VEC_NEON_H
#define FS_VEC_NEON_H

#if defined(FS_NEON_VIA_SIMDE)
#if !defined(__FMA__)
#error "the SIMDe NEON test build needs -mavx2 -mfma (an unfused vfmaq_f32 differs by 1 ulp)"
#endif
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#else
#error "vec_neon.h needs AArch64 (or FS_NEON_VIA_SIMDE with SIMDe installed)"
#endif
#include <stddef.h>

#define FS_VLEN 4
typedef float32x4_t fs_vec;
typedef size_t fs_tail; /* number of lanes, 1..4 */

static inline fs_tail fs_tail_make(size_t n) { return n; }
static inline fs_vec fs_vload(const float* p) { return vld1q_f32(p); }
static inline void fs_vstore(float* p, fs_vec v) { vst1q_f32(p, v); }
static inline fs_vec fs_vload_tail(const float* p, fs_tail n) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  switch (n) {
    case 1: return vld1q_lane_f32(p, zero, 0);
    case 2: return vcombine_f32(vld1_f32(p), vdup_n_f32(0.0f));
    case 3: return vld1q_lane_f32(p + 2, vcombine_f32(vld1_f32(p), vdup_n_f32(0.0f)), 2);
    default: return vld1q_f32(p);
  }
}
static inline void fs_vstore_tail(float* p, fs_vec v, fs_tail n) {
  switch (n) {
    case 1: vst1q_lane_f32(p, v, 0); break;
    case 2: vst1_f32(p, vget_low_f32(v)); break;
    case 3:
      vst1_f32(p, vget_low_f32(v));
      vst1q_lane_f32(p + 2, v, 2);
      break;
    default: vst1q_f32(p, v);
  }
}
static inline fs_vec fs_vset1(float x) { return vdupq_n_f32(x); }
static inline fs_vec fs_vzero(void) { return vdupq_n_f32(0.0f); }
static inline fs_vec fs_vadd(fs_vec a, fs_vec b) { return vaddq_f32(a, b); }
static inline fs_vec fs_vfma(fs_vec a, fs_vec b, fs_vec c) { return vfmaq_f32(c, a, b); }
/* FMAX/FMIN (unlike FMAXNM/FMINNM) return NaN when either operand is NaN: a NaN x survives. */
static inline fs_vec fs_vclamp(fs_vec x, fs_vec lo, fs_vec hi) {
  return vminq_f32(vmaxq_f32(x, lo), hi);
}

/* Used by the CHW companion ops (dwconv_impl.h, chw_impl.h). */
static inline fs_vec fs_vmul(fs_vec a, fs_vec b) { return vmulq_f32(a, b); }
/* (a, b) = 8 consecutive floats -> their even-indexed and odd-indexed halves, in order. */
static inline void fs_vdeinterleave(fs_vec a, fs_vec b, fs_vec* even, fs_vec* odd) {
  *even = vuzp1q_f32(a, b);
  *odd = vuzp2q_f32(a, b);
}
static inline float fs_vhsum(fs_vec v) { return vaddvq_f32(v); }

/* Used by the flat depthwise path (dwconv_impl.h). */
typedef uint32x4_t fs_vmask; /* all-ones or all-zeros lanes */
static inline fs_vec fs_vsub(fs_vec a, fs_vec b) { return vsubq_f32(a, b); }
static inline fs_vmask fs_vlt(fs_vec a, fs_vec b) { return vcltq_f32(a, b); }
static inline fs_vec fs_vmaskz(fs_vmask m, fs_vec v) {
  return vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(v)));
}
/* A mask stored by fs_dw_mask_table, read straight into a register. */
static inline fs_vmask fs_vmask_load(const void* p) { return vld1q_u32((const uint32_t*)p); }
/* Lanes [a, b) of the vector at p (a <= b <= 4), zeros elsewhere; reads only p[a..b). Built
 * in registers: the depthwise row path takes it at both ends of every row, and a copy through
 * a stack array would stall each load on store forwarding. */
static inline fs_vec fs_vload_range(const float* p, size_t a, size_t b) {
  fs_vec v = vdupq_n_f32(0.0f);
  if (a <= 0 && 0 < b) v = vsetq_lane_f32(p[0], v, 0);
  if (a <= 1 && 1 < b) v = vsetq_lane_f32(p[1], v, 1);
  if (a <= 2 && 2 < b) v = vsetq_lane_f32(p[2], v, 2);
  if (a <= 3 && 3 < b) v = vsetq_lane_f32(p[3], v, 3);
  return v;
}

#endif /* FS_VEC_NEON_H */
