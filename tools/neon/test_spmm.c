/* Sparse 1x1 kernels: every variant of one ISA against the scalar variant of the same block
 * size (and both against a float64 sum over the same packed weights).
 *
 * Shapes: every spatial length mc from 1 to three tiles past the ISA's widest MR (+3), so every
 * tail length of every variant runs after 0..3 full tiles. For each mc: one fixed hard case
 * (random weights, bias, residual, an active clamp, Cout not a multiple of NR), sixteen cases
 * rotating through all combinations of weight pattern x bias x residual x clamp x Cout, and one
 * case with a NaN in the input (it must reach exactly the outputs whose packed block holds
 * that input channel, clamp or not). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fs_kernels.h"
#include "harness.h"

#define MAX_CIN 40
#define MAX_COUT 24
#define ROTATING 16

enum { PAT_RANDOM, PAT_DENSE, PAT_EMPTY_ROWS, PAT_ALL_ZERO, PAT_ONE_NONZERO, PAT_COUNT };
static const char* const PATTERN_NAMES[PAT_COUNT] = {"random", "dense", "empty_rows", "all_zero",
                                                     "one_nonzero"};
enum { CLAMP_NONE, CLAMP_RELU6, CLAMP_TIGHT, CLAMP_POINT, CLAMP_COUNT };
static const char* const CLAMP_NAMES[CLAMP_COUNT] = {"none", "relu6", "tight", "lo=hi"};
enum { COUT_MULTIPLE, COUT_LEFTOVER, COUT_BELOW_NR, COUT_COUNT };
#define CONFIGS (PAT_COUNT * 2 * 2 * CLAMP_COUNT * COUT_COUNT)

typedef struct {
  size_t mc, cin, cout;
  int pattern, bias, residual, clamp, nan_input;
  float scale;
  uint64_t seed;
} spmm_case;

typedef struct {
  float values[MAX_COUT * MAX_CIN];
  uint32_t nnzmap[MAX_COUT];
  int32_t offsets[MAX_COUT * MAX_CIN];
} packed_weights;

/* The kernels' format: blocks of nr rows, then the cout % nr leftover rows as blocks of one;
 * per block, the columns where any row is non-zero with the block's values and the byte
 * offset of that input row. */
static void pack(const float* wd, size_t cout, size_t cin, size_t nr, size_t in_stride,
                 packed_weights* p) {
  size_t nv = 0, no = 0, b = 0;
  for (size_t row = 0; row < cout; b++) {
    const size_t bn = (row + nr <= cout / nr * nr) ? nr : 1;
    uint32_t nnz = 0;
    for (size_t k = 0; k < cin; k++) {
      int any = 0;
      for (size_t r = 0; r < bn; r++) any |= wd[(row + r) * cin + k] != 0.0f;
      if (!any) continue;
      for (size_t r = 0; r < bn; r++) p->values[nv++] = wd[(row + r) * cin + k];
      p->offsets[no++] = (int32_t)(k * in_stride);
      nnz++;
    }
    p->nnzmap[b] = nnz;
    row += bn;
  }
}

static void make_weights(fs_rng* rng, const spmm_case* c, float* wd) {
  const size_t n = c->cout * c->cin;
  for (size_t i = 0; i < n; i++) {
    float v = fs_rng_sym(rng) * c->scale;
    switch (c->pattern) {
      case PAT_RANDOM: if (fs_rng_below(rng, 10) >= 3) v = 0.0f; break;
      case PAT_EMPTY_ROWS: if (fs_rng_below(rng, 2)) v = 0.0f; break;
      case PAT_ALL_ZERO: v = 0.0f; break;
      case PAT_ONE_NONZERO: v = 0.0f; break;
      default: if (v == 0.0f) v = c->scale; break;
    }
    wd[i] = v;
  }
  if (c->pattern == PAT_EMPTY_ROWS) {
    for (size_t r = 0; r < c->cout; r++) {
      if (fs_rng_below(rng, 2)) memset(wd + r * c->cin, 0, c->cin * sizeof(float));
    }
  } else if (c->pattern == PAT_ONE_NONZERO) {
    wd[fs_rng_below(rng, n)] = c->scale * 0.75f;
  }
}

static void clamp_bounds(const spmm_case* c, float* lo, float* hi) {
  switch (c->clamp) {
    case CLAMP_RELU6: *lo = 0.0f; *hi = 6.0f * c->scale; break;
    case CLAMP_TIGHT: *lo = -0.5f * c->scale; *hi = 0.25f * c->scale; break;
    case CLAMP_POINT: *lo = *hi = 0.125f * c->scale; break;
    default: *lo = -INFINITY; *hi = INFINITY;
  }
}

typedef struct {
  fs_guarded in, res, out, oracle;
  float wd[MAX_COUT * MAX_CIN];
  float bias[MAX_COUT];
  packed_weights packed;
  double ref[MAX_COUT][FS_ROW_CAPACITY];
  double mag[MAX_COUT][FS_ROW_CAPACITY];
  size_t terms[MAX_COUT];
} spmm_buffers;

static void run_kernel(const fs_spmm_kernel* k, const spmm_case* c, spmm_buffers* b,
                       fs_guarded* out, float lo, float hi) {
  fs_guarded_fill_canary(out);
  const size_t stride = fs_guarded_stride(out);
  k->fn(c->mc, c->cout, fs_guarded_row(&b->in, 0, c->mc), b->packed.values, b->packed.nnzmap,
        b->packed.offsets, c->bias ? b->bias : NULL,
        c->residual ? fs_guarded_row(&b->res, 0, c->mc) : NULL, stride,
        fs_guarded_row(out, 0, c->mc), stride, lo, hi);
}

/* float64 sum over the packed terms (explicit zeros of a block included, as the kernels do,
 * so that 0 * NaN matches), the magnitude for the tolerance, and the clamp. */
static void reference(const spmm_case* c, size_t nr, spmm_buffers* b, float lo, float hi) {
  const float* w = b->packed.values;
  const int32_t* o = b->packed.offsets;
  const size_t stride = fs_guarded_stride(&b->in);
  size_t blk = 0;
  for (size_t row = 0; row < c->cout; blk++) {
    const size_t bn = (row + nr <= c->cout / nr * nr) ? nr : 1;
    for (size_t r = 0; r < bn; r++) {
      const float* res = fs_guarded_row(&b->res, row + r, c->mc);
      for (size_t m = 0; m < c->mc; m++) {
        const double bias = c->bias ? b->bias[row + r] : 0.0;
        const double rv = c->residual ? res[m] : 0.0;
        b->ref[row + r][m] = bias + rv;
        b->mag[row + r][m] = fabs(bias) + fabs(rv);
      }
      b->terms[row + r] = b->packed.nnzmap[blk];
    }
    for (uint32_t j = 0; j < b->packed.nnzmap[blk]; j++) {
      const float* x = fs_guarded_row(&b->in, (size_t)o[j] / stride, c->mc);
      for (size_t r = 0; r < bn; r++) {
        for (size_t m = 0; m < c->mc; m++) {
          b->ref[row + r][m] += (double)w[r] * x[m];
          b->mag[row + r][m] += fabs((double)w[r] * x[m]);
        }
      }
      w += bn;
    }
    o += b->packed.nnzmap[blk];
    row += bn;
  }
  for (size_t n = 0; n < c->cout; n++) {
    for (size_t m = 0; m < c->mc; m++) {
      double y = b->ref[n][m];
      if (!isnan(y)) y = y < lo ? lo : (y > hi ? hi : y);
      b->ref[n][m] = y;
    }
  }
}

/* Output rows: written everywhere, in tolerance, nothing in front of a row or in row cout. */
static int check_output(const char* who, const spmm_case* c, spmm_buffers* b, fs_guarded* out,
                        const fs_guarded* against) {
  int bad = 0;
  for (size_t n = 0; n < c->cout && !bad; n++) {
    const float* y = fs_guarded_row(out, n, c->mc);
    const float* z = against != NULL ? fs_guarded_row(against, n, c->mc) : NULL;
    if (!fs_guarded_canary_before(out, n, c->mc, 8)) {
      bad = fs_fail("%s wrote in front of output row %zu", who, n);
    }
    for (size_t m = 0; m < c->mc && !bad; m++) {
      uint32_t bits;
      memcpy(&bits, &y[m], sizeof bits);
      const double tol = fs_tolerance(b->terms[n], b->mag[n][m]);
      if (bits == 0x7FA5A5A5u) {
        bad = fs_fail("%s left output[%zu][%zu] unwritten", who, n, m);
      } else if (!fs_close(y[m], (float)b->ref[n][m], tol)) {
        bad = fs_fail("%s output[%zu][%zu] = %.9g, float64 reference %.9g, tolerance %.3g", who,
                      n, m, y[m], b->ref[n][m], tol);
      } else if (z != NULL && !fs_close(y[m], z[m], tol)) {
        bad = fs_fail("%s output[%zu][%zu] = %.9g, scalar %.9g, tolerance %.3g", who, n, m, y[m],
                      z[m], tol);
      }
    }
  }
  if (!bad && !fs_guarded_canary_row(out, c->cout, c->mc)) {
    bad = fs_fail("%s wrote past the last output row (nc = %zu)", who, c->cout);
  }
  return bad;
}

static void run_case(const fs_spmm_kernel* k, const fs_spmm_kernel* oracle, const spmm_case* c,
                     spmm_buffers* b) {
  fs_set_case("spmm %s vs %s: mc=%zu cin=%zu cout=%zu pattern=%s bias=%d residual=%d "
              "clamp=%s nan=%d scale=%g seed=%llu", k->name, oracle->name, c->mc, c->cin,
              c->cout, PATTERN_NAMES[c->pattern], c->bias, c->residual, CLAMP_NAMES[c->clamp],
              c->nan_input, c->scale, (unsigned long long)c->seed);
  fs_rng rng;
  fs_rng_seed(&rng, c->seed);
  make_weights(&rng, c, b->wd);
  for (size_t n = 0; n < c->cout; n++) b->bias[n] = fs_rng_sym(&rng) * c->scale;
  fs_guarded_fill_canary(&b->in);
  fs_guarded_fill_canary(&b->res);
  for (size_t kk = 0; kk < c->cin; kk++) {
    float* x = fs_guarded_row(&b->in, kk, c->mc);
    for (size_t m = 0; m < c->mc; m++) x[m] = fs_rng_sym(&rng);
  }
  for (size_t n = 0; n < c->cout; n++) {
    float* r = fs_guarded_row(&b->res, n, c->mc);
    for (size_t m = 0; m < c->mc; m++) r[m] = fs_rng_sym(&rng) * c->scale;
  }
  if (c->nan_input) {
    fs_guarded_row(&b->in, fs_rng_below(&rng, c->cin), c->mc)[fs_rng_below(&rng, c->mc)] = NAN;
  }
  pack(b->wd, c->cout, c->cin, k->nr, fs_guarded_stride(&b->in), &b->packed);
  float lo, hi;
  clamp_bounds(c, &lo, &hi);
  reference(c, k->nr, b, lo, hi);
  run_kernel(oracle, c, b, &b->oracle, lo, hi);
  if (check_output(oracle->name, c, b, &b->oracle, NULL)) return;
  run_kernel(k, c, b, &b->out, lo, hi);
  check_output(k->name, c, b, &b->out, &b->oracle);
}

static const fs_spmm_kernel* scalar_with_nr(unsigned nr) {
  for (size_t i = 0; i < fs_spmm_kernel_count(FS_ISA_SCALAR); i++) {
    const fs_spmm_kernel* k = fs_spmm_kernel_at(FS_ISA_SCALAR, i);
    if (k->nr == nr) return k;
  }
  return NULL;
}

static size_t cout_for(int sel, unsigned nr, fs_rng* rng) {
  switch (sel) {
    case COUT_LEFTOVER: return 2 * nr + (nr > 1 ? 1 + fs_rng_below(rng, nr - 1) : 1);
    case COUT_BELOW_NR: return 1 + fs_rng_below(rng, nr);
    default: return 2 * nr;
  }
}

static size_t cin_for(fs_rng* rng) {
  return fs_rng_below(rng, 8) == 0 ? 33 + fs_rng_below(rng, MAX_CIN - 32) : 1 + fs_rng_below(rng, 24);
}

size_t fs_test_spmm(int isa) {
  static spmm_buffers b;
  fs_guarded_alloc(&b.in, MAX_CIN);
  fs_guarded_alloc(&b.res, MAX_COUT);
  fs_guarded_alloc(&b.out, MAX_COUT + 1);
  fs_guarded_alloc(&b.oracle, MAX_COUT + 1);
  const size_t nk = fs_spmm_kernel_count(isa);
  unsigned widest = 0;
  for (size_t i = 0; i < nk; i++) {
    if (fs_spmm_kernel_at(isa, i)->mr > widest) widest = fs_spmm_kernel_at(isa, i)->mr;
  }
  const size_t max_mc = 3 * (size_t)widest + 3;
  size_t cases = 0;
  static const float scales[] = {1.0f, 1.0f, 1e-3f, 1e3f};
  for (size_t i = 0; i < nk; i++) {
    const fs_spmm_kernel* k = fs_spmm_kernel_at(isa, i);
    const fs_spmm_kernel* oracle = scalar_with_nr(k->nr);
    if (oracle == NULL) {
      fs_fail("no scalar spmm kernel with nr=%u to compare %s with", k->nr, k->name);
      continue;
    }
    const size_t before = fs_failures();
    for (size_t mc = 1; mc <= max_mc && mc <= FS_ROW_CAPACITY; mc++) {
      fs_rng rng;
      fs_rng_seed(&rng, (uint64_t)(i + 1) * 1000003u + mc);
      for (int j = 0; j < ROTATING + 2; j++) {
        spmm_case c = {.mc = mc, .seed = fs_rng_next(&rng)};
        c.cin = cin_for(&rng);
        c.scale = scales[fs_rng_below(&rng, 4)];
        if (j < ROTATING) {
          int cfg = (int)((mc * ROTATING + (size_t)j) % CONFIGS);
          c.pattern = cfg % PAT_COUNT;
          cfg /= PAT_COUNT;
          c.bias = cfg % 2;
          cfg /= 2;
          c.residual = cfg % 2;
          cfg /= 2;
          c.clamp = cfg % CLAMP_COUNT;
          cfg /= CLAMP_COUNT;
          c.cout = cout_for(cfg, k->nr, &rng);
        } else {
          /* The fixed hard case, then the same with a NaN in the input. */
          c.pattern = PAT_RANDOM;
          c.bias = c.residual = 1;
          c.clamp = CLAMP_TIGHT;
          c.cout = cout_for(COUT_LEFTOVER, k->nr, &rng);
          c.nan_input = j == ROTATING + 1;
        }
        run_case(k, oracle, &c, &b);
        cases++;
      }
    }
    printf("  %-42s mc 1..%zu vs %-32s %s\n", k->name, max_mc, oracle->name,
           fs_failures() == before ? "ok" : "FAILED");
  }
  fs_guarded_free(&b.in);
  fs_guarded_free(&b.res);
  fs_guarded_free(&b.out);
  fs_guarded_free(&b.oracle);
  return cases;
}
