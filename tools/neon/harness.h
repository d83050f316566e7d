/* Shared pieces of the C kernel test driver (tools/neon/): a seeded RNG, guarded buffers,
 * the error-analysis tolerance and failure reporting.
 *
 * The driver compares every variant of a SIMD ISA with the scalar variant (the oracle, itself
 * checked against a float64 sum) on random and edge inputs. It is written for the NEON kernels
 * cross-compiled for AArch64 and run under qemu-aarch64 (tools/neon_tier1.sh), but is plain C
 * over the dispatch tables, so it runs natively on x86 against SSE2/AVX2 just as well.
 *
 * Guarded buffers: every row of every operand sits at the END of its own page, followed by a
 * PROT_NONE page, so any read or write past the end of a row faults (qemu-user keeps the guest's
 * page protections); the bytes in front of each output row hold a canary that must survive. */
#ifndef FS_TEST_HARNESS_H
#define FS_TEST_HARNESS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* --- random numbers (xorshift64*, seeded per case: every failure is reproducible) --------- */
typedef struct { uint64_t s; } fs_rng;
void fs_rng_seed(fs_rng* r, uint64_t seed);
uint64_t fs_rng_next(fs_rng* r);
/* Uniform in [0, n). */
size_t fs_rng_below(fs_rng* r, size_t n);
/* Uniform in [-1, 1). */
float fs_rng_sym(fs_rng* r);

/* --- guarded row buffers ------------------------------------------------------------------ */
#define FS_ROW_CAPACITY 1024 /* floats per row page: the widest row a test may use */
typedef struct {
  char* base;  /* mapping: per row one data page then one PROT_NONE page */
  size_t rows;
  size_t data;  /* bytes of one row page */
} fs_guarded;
void fs_guarded_alloc(fs_guarded* g, size_t rows);
void fs_guarded_free(fs_guarded* g);
/* Row r of a matrix whose rows hold `len` floats: ends exactly at the guard page. */
float* fs_guarded_row(const fs_guarded* g, size_t r, size_t len);
/* Byte stride between consecutive rows (the same for every len). */
size_t fs_guarded_stride(const fs_guarded* g);
/* Fills each row page entirely with the canary pattern. */
void fs_guarded_fill_canary(fs_guarded* g);
/* 1 if the `n` floats in front of row r (of `len` floats) still hold the canary. */
int fs_guarded_canary_before(const fs_guarded* g, size_t r, size_t len, size_t n);
/* 1 if the `len` floats of row r still hold the canary (a row no kernel may write). */
int fs_guarded_canary_row(const fs_guarded* g, size_t r, size_t len);

/* --- tolerance ---------------------------------------------------------------------------
 * Summing k products in float32 (fused or not, in any order) errs by at most about
 * (k + 1) * u * sum|terms| with u = eps32 / 2; bias, residual and the final rounding add a few
 * u more. Two such results differ by at most twice that, (k + 2) * eps32 * mag; (k + 4) keeps
 * a little margin, and nothing more: a lost, doubled or misplaced term is far outside it.
 * `mag` = sum of |terms| (|w| * |x|, |bias|, |residual|), taken in float64; the absolute term
 * covers underflow. Clamping is 1-Lipschitz, so it does not widen the bound. */
static inline double fs_tolerance(size_t k, double mag) {
  return ((double)k + 4.0) * (1.1920928955078125e-07 * mag + 1.401298464324817e-45);
}
/* |a - b| <= tol, or both NaN. */
static inline int fs_close(float a, float b, double tol) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  return fabs((double)a - (double)b) <= tol;
}

/* --- reporting ---------------------------------------------------------------------------- */
/* Describes the case being run; printed by the SIGSEGV handler if a kernel faults. */
void fs_set_case(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
const char* fs_current_case(void);
/* Records one failure (printed for the first few), returns 1. */
int fs_fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
size_t fs_failures(void);
void fs_install_fault_handler(void);

/* --- the op tests ------------------------------------------------------------------------ *
 * One function per op: runs every variant of `isa` against the scalar variants and returns the
 * number of kernel x shape cases it compared (failures go through fs_fail). */
size_t fs_test_spmm(int isa);

#endif /* FS_TEST_HARNESS_H */
