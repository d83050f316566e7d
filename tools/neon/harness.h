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
 * page protections); the bytes in front of each output row hold a canary that must survive.
 * Every row page is also preceded by a PROT_NONE page, so a test may put a row at the START of
 * its page instead (fs_guarded_row_at) to make reads in front of it fault; the CHW op tests
 * alternate between the two, and check the canary on the whole page around each output row.
 * Flat operands (scratch, weights, contiguous planes) use fs_block the same way. */
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
/* Row r placed at the end of its page (front = 0, as fs_guarded_row) or at its start
 * (front = 1: the page in front is PROT_NONE too, so reads before the row fault). */
float* fs_guarded_row_at(const fs_guarded* g, size_t r, size_t len, int front);
/* Byte stride between consecutive rows (the same for every len). */
size_t fs_guarded_stride(const fs_guarded* g);
/* Fills each row page entirely with the canary pattern. */
void fs_guarded_fill_canary(fs_guarded* g);
/* The same for the first `rows` rows only (cheaper when a case uses few of them). */
void fs_guarded_fill_canary_rows(fs_guarded* g, size_t rows);
/* 1 if the `n` floats in front of row r (of `len` floats) still hold the canary. */
int fs_guarded_canary_before(const fs_guarded* g, size_t r, size_t len, size_t n);
/* 1 if the `len` floats of row r still hold the canary (a row no kernel may write). */
int fs_guarded_canary_row(const fs_guarded* g, size_t r, size_t len);
/* 1 if the whole page of row r outside the row (fs_guarded_row_at(g, r, len, front)) still
 * holds the canary. */
int fs_guarded_canary_outside(const fs_guarded* g, size_t r, size_t len, int front);
/* 1 if x has the canary's bits (an output element nothing wrote). */
int fs_is_canary(float x);

/* --- guarded blocks: one flat array between two PROT_NONE pages -------------------------- *
 * For operands that are not a set of rows (scratch, contiguous planes): n floats placed at
 * the start (front = 1) or the end (front = 0) of the block, so reads before or after fault;
 * the rest of the block can hold the canary. */
typedef struct {
  char* map;
  float* page;     /* first data float */
  size_t capacity; /* data floats */
} fs_block;
void fs_block_alloc(fs_block* b, size_t floats);
void fs_block_free(fs_block* b);
float* fs_block_at(const fs_block* b, size_t n, int front);
void fs_block_fill_canary(fs_block* b);
int fs_block_canary_outside(const fs_block* b, size_t n, int front);

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

/* --- clamps and references shared by the CHW op tests ----------------------------------- */
enum { FS_CLAMP_NONE, FS_CLAMP_RELU6, FS_CLAMP_TIGHT, FS_CLAMP_POINT, FS_CLAMP_COUNT };
extern const char* const fs_clamp_names[FS_CLAMP_COUNT];
/* (lo, hi) of a clamp kind for outputs of magnitude ~scale: none, relu6 (0, 6 scale), tight
 * (-scale/2, scale/4: both bounds active on random data) and a point (lo = hi). */
void fs_clamp_bounds(int clamp, float scale, float* lo, float* hi);
/* The float64 reference's clamp; a NaN passes through, as in the kernels. */
static inline double fs_clamp_ref(double y, float lo, float hi) {
  return isnan(y) ? y : (y < lo ? lo : (y > hi ? hi : y));
}
/* A multiplier for the data: mostly 1, sometimes tiny or large. */
float fs_rng_scale(fs_rng* r);

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
size_t fs_test_dwconv(int isa);   /* test_dwconv.c */
size_t fs_test_conv2d(int isa);   /* test_conv2d.c */
size_t fs_test_gavgpool(int isa); /* test_gavgpool.c */
size_t fs_test_vadd(int isa);     /* test_vadd.c */

#endif /* FS_TEST_HARNESS_H */
