/* Elementwise add with clamp: the variant of one ISA against the scalar one, and both against
 * the float64 sum.
 *
 * Shapes: every length 0..MAX_N (every tail after 0..12 blocks of the 4-vector main loop),
 * each three times: y a separate array, y = a, y = b (the kernels allow both aliases). The
 * clamp rotates through none, relu6, tight and lo = hi; every operand sits at the end or the
 * start of its own mapping (n = 0 must touch nothing); one case in six puts NaNs in a or b,
 * which must pass through the clamp. One rounding of a + b: NEON and scalar must agree
 * exactly. */
#include <stdio.h>
#include <string.h>

#include "fs_kernels.h"
#include "harness.h"

#define MAX_N 200

enum { ALIAS_NONE, ALIAS_A, ALIAS_B, ALIAS_COUNT };
static const char* const ALIAS_NAMES[ALIAS_COUNT] = {"none", "y=a", "y=b"};

typedef struct {
  size_t n;
  int alias, clamp, nan_input, front[3];
  float scale;
  uint64_t seed;
} vadd_case;

typedef struct {
  fs_block a, b, y;
  float a_copy[MAX_N], b_copy[MAX_N], oracle[MAX_N];
  double ref[MAX_N], mag[MAX_N];
} vadd_buffers;

/* Runs fn on fresh copies of the operands; the result is left in *result. */
static int run_one(const char* who, fs_vadd_fn fn, const vadd_case* c, vadd_buffers* b,
                   float lo, float hi, const float* against, float* result) {
  fs_block_fill_canary(&b->a);
  fs_block_fill_canary(&b->b);
  fs_block_fill_canary(&b->y);
  float* a = fs_block_at(&b->a, c->n, c->front[0]);
  float* bb = fs_block_at(&b->b, c->n, c->front[1]);
  float* y = c->alias == ALIAS_A ? a : c->alias == ALIAS_B ? bb : fs_block_at(&b->y, c->n, c->front[2]);
  memcpy(a, b->a_copy, c->n * sizeof(float));
  memcpy(bb, b->b_copy, c->n * sizeof(float));
  fn(c->n, a, bb, y, lo, hi);
  if (!fs_block_canary_outside(&b->a, c->n, c->front[0]) ||
      !fs_block_canary_outside(&b->b, c->n, c->front[1]) ||
      !fs_block_canary_outside(&b->y, c->alias == ALIAS_NONE ? c->n : 0, c->front[2])) {
    return fs_fail("%s wrote outside the n = %zu elements", who, c->n);
  }
  if ((c->alias != ALIAS_A && memcmp(a, b->a_copy, c->n * sizeof(float)) != 0) ||
      (c->alias != ALIAS_B && memcmp(bb, b->b_copy, c->n * sizeof(float)) != 0)) {
    return fs_fail("%s modified an input it does not alias", who);
  }
  for (size_t i = 0; i < c->n; i++) {
    const double tol = fs_tolerance(1, b->mag[i]);
    if (fs_is_canary(y[i])) return fs_fail("%s left y[%zu] unwritten", who, i);
    if (!fs_close(y[i], (float)b->ref[i], tol)) {
      return fs_fail("%s y[%zu] = %.9g, float64 reference %.9g, tolerance %.3g", who, i, y[i],
                     b->ref[i], tol);
    }
    if (against != NULL && !fs_close(y[i], against[i], 0.0)) {
      return fs_fail("%s y[%zu] = %.9g, scalar %.9g (must be equal)", who, i, y[i], against[i]);
    }
    result[i] = y[i];
  }
  return 0;
}

static void run_case(const char* name, fs_vadd_fn fn, const char* oname, fs_vadd_fn ofn,
                     const vadd_case* c, vadd_buffers* b) {
  fs_set_case("vadd %s vs %s: n=%zu alias=%s clamp=%s nan=%d scale=%g front(a,b,y)=(%d,%d,%d) "
              "seed=%llu", name, oname, c->n, ALIAS_NAMES[c->alias], fs_clamp_names[c->clamp],
              c->nan_input, c->scale, c->front[0], c->front[1], c->front[2],
              (unsigned long long)c->seed);
  fs_rng rng;
  fs_rng_seed(&rng, c->seed);
  for (size_t i = 0; i < c->n; i++) {
    b->a_copy[i] = fs_rng_sym(&rng) * c->scale;
    b->b_copy[i] = fs_rng_sym(&rng) * c->scale;
  }
  for (int k = 0; k < c->nan_input && c->n > 0; k++) {
    float* v = fs_rng_below(&rng, 2) ? b->a_copy : b->b_copy;
    v[fs_rng_below(&rng, 2) ? c->n - 1 : fs_rng_below(&rng, c->n)] = NAN;
  }
  float lo, hi;
  fs_clamp_bounds(c->clamp, c->scale, &lo, &hi);
  for (size_t i = 0; i < c->n; i++) {
    b->ref[i] = fs_clamp_ref((double)b->a_copy[i] + b->b_copy[i], lo, hi);
    b->mag[i] = fabs((double)b->a_copy[i]) + fabs((double)b->b_copy[i]);
  }
  float result[MAX_N];
  if (run_one(oname, ofn, c, b, lo, hi, NULL, b->oracle)) return;
  run_one(name, fn, c, b, lo, hi, b->oracle, result);
}

size_t fs_test_vadd(int isa) {
  static vadd_buffers b;
  const fs_chw_ops* ops = fs_chw_ops_for(isa);
  const fs_chw_ops* scalar = fs_chw_ops_for(FS_ISA_SCALAR);
  if (ops == NULL || scalar == NULL) {
    fs_fail("no CHW ops for %s", fs_isa_name(isa));
    return 0;
  }
  fs_block_alloc(&b.a, MAX_N);
  fs_block_alloc(&b.b, MAX_N);
  fs_block_alloc(&b.y, MAX_N);
  fs_rng rng;
  fs_rng_seed(&rng, 32452843u);
  size_t cases = 0;
  const size_t before = fs_failures();
  for (size_t n = 0; n <= MAX_N; n++) {
    for (int alias = 0; alias < ALIAS_COUNT; alias++) {
      vadd_case c = {.n = n, .alias = alias, .seed = fs_rng_next(&rng)};
      c.clamp = (int)(cases % FS_CLAMP_COUNT);
      c.scale = fs_rng_scale(&rng);
      c.nan_input = fs_rng_below(&rng, 6) == 0 ? 1 + (int)fs_rng_below(&rng, 2) : 0;
      for (int i = 0; i < 3; i++) c.front[i] = (int)fs_rng_below(&rng, 2);
      run_case(ops->vadd_name, ops->vadd, scalar->vadd_name, scalar->vadd, &c, &b);
      cases++;
    }
  }
  printf("  %-36s %4zu shapes (n 0..%d, y separate / = a / = b) vs %-30s %s\n", ops->vadd_name,
         cases, MAX_N, scalar->vadd_name, fs_failures() == before ? "ok" : "FAILED");
  fs_block_free(&b.a);
  fs_block_free(&b.b);
  fs_block_free(&b.y);
  return cases;
}
