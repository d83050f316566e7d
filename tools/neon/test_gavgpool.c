/* Global average pooling of CHW planes: the variant of one ISA against the scalar one, and both
 * against a float64 sum.
 *
 * Shapes: every channel count 1..MAX_C x every plane size hw 1..MAX_HW (every tail after 0..4
 * blocks of the 4-vector main loop). The channels are either rows of their own pages
 * (stride = one row page) or one contiguous C x HW array (stride = 4 * hw); either sits at the
 * end or at the start of its mapping, so reading past either side faults. The scale is 1/hw
 * or a random one; one case in five puts a NaN in one channel, which must reach that
 * channel's output only. */
#include <stdio.h>
#include <string.h>

#include "fs_kernels.h"
#include "harness.h"

#define MAX_C 9
#define MAX_HW 70

typedef struct {
  size_t channels, hw;
  int contiguous, in_front, out_front, nan_input;
  float scale, data_scale;
  uint64_t seed;
} pool_case;

typedef struct {
  fs_guarded rows;
  fs_block plane, out, oracle;
  float copy[MAX_C][MAX_HW];
  double ref[MAX_C], mag[MAX_C];
} pool_buffers;

static const float* input_of(const pool_case* c, pool_buffers* b, size_t* stride) {
  if (c->contiguous) {
    *stride = c->hw * sizeof(float);
    return fs_block_at(&b->plane, c->channels * c->hw, c->in_front);
  }
  *stride = fs_guarded_stride(&b->rows);
  return fs_guarded_row_at(&b->rows, 0, c->hw, c->in_front);
}

static int check(const char* who, const pool_case* c, pool_buffers* b, const fs_block* out,
                 const float* against) {
  size_t stride;
  const char* x = (const char*)input_of(c, b, &stride);
  for (size_t ch = 0; ch < c->channels; ch++) {
    if (memcmp(x + ch * stride, b->copy[ch], c->hw * sizeof(float)) != 0 ||
        (!c->contiguous && !fs_guarded_canary_outside(&b->rows, ch, c->hw, c->in_front))) {
      return fs_fail("%s modified input channel %zu", who, ch);
    }
  }
  if (c->contiguous && !fs_block_canary_outside(&b->plane, c->channels * c->hw, c->in_front)) {
    return fs_fail("%s wrote around the input", who);
  }
  if (!fs_block_canary_outside(out, c->channels, c->out_front)) {
    return fs_fail("%s wrote outside output[0, %zu)", who, c->channels);
  }
  const float* y = fs_block_at(out, c->channels, c->out_front);
  for (size_t ch = 0; ch < c->channels; ch++) {
    const double tol = fs_tolerance(c->hw, b->mag[ch]);
    if (fs_is_canary(y[ch])) return fs_fail("%s left output[%zu] unwritten", who, ch);
    if (!fs_close(y[ch], (float)b->ref[ch], tol)) {
      return fs_fail("%s output[%zu] = %.9g, float64 reference %.9g, tolerance %.3g", who, ch,
                     y[ch], b->ref[ch], tol);
    }
    if (against != NULL && !fs_close(y[ch], against[ch], tol)) {
      return fs_fail("%s output[%zu] = %.9g, scalar %.9g, tolerance %.3g", who, ch, y[ch],
                     against[ch], tol);
    }
  }
  return 0;
}

static void run_case(const char* name, fs_gavgpool_fn fn, const char* oname, fs_gavgpool_fn ofn,
                     const pool_case* c, pool_buffers* b) {
  fs_set_case("gavgpool %s vs %s: channels=%zu hw=%zu %s scale=%g data_scale=%g nan=%d "
              "front(in,out)=(%d,%d) seed=%llu", name, oname, c->channels, c->hw,
              c->contiguous ? "contiguous" : "row_pages", c->scale, c->data_scale, c->nan_input,
              c->in_front, c->out_front, (unsigned long long)c->seed);
  fs_rng rng;
  fs_rng_seed(&rng, c->seed);
  for (size_t ch = 0; ch < c->channels; ch++) {
    for (size_t i = 0; i < c->hw; i++) b->copy[ch][i] = fs_rng_sym(&rng) * c->data_scale;
  }
  if (c->nan_input) b->copy[fs_rng_below(&rng, c->channels)][fs_rng_below(&rng, c->hw)] = NAN;
  for (size_t ch = 0; ch < c->channels; ch++) {
    double sum = 0.0, mag = 0.0;
    for (size_t i = 0; i < c->hw; i++) {
      sum += b->copy[ch][i];
      mag += fabs((double)b->copy[ch][i]);
    }
    b->ref[ch] = sum * c->scale;
    b->mag[ch] = mag * fabs((double)c->scale);
  }
  if (c->contiguous) {
    fs_block_fill_canary(&b->plane);
  } else {
    fs_guarded_fill_canary_rows(&b->rows, c->channels);
  }
  size_t stride;
  char* x = (char*)input_of(c, b, &stride);
  for (size_t ch = 0; ch < c->channels; ch++) {
    memcpy(x + ch * stride, b->copy[ch], c->hw * sizeof(float));
  }
  fs_block_fill_canary(&b->oracle);
  ofn(c->channels, c->hw, (const float*)x, stride, c->scale,
      fs_block_at(&b->oracle, c->channels, c->out_front));
  if (check(oname, c, b, &b->oracle, NULL)) return;
  fs_block_fill_canary(&b->out);
  fn(c->channels, c->hw, (const float*)x, stride, c->scale,
     fs_block_at(&b->out, c->channels, c->out_front));
  check(name, c, b, &b->out, fs_block_at(&b->oracle, c->channels, c->out_front));
}

size_t fs_test_gavgpool(int isa) {
  static pool_buffers b;
  const fs_chw_ops* ops = fs_chw_ops_for(isa);
  const fs_chw_ops* scalar = fs_chw_ops_for(FS_ISA_SCALAR);
  if (ops == NULL || scalar == NULL) {
    fs_fail("no CHW ops for %s", fs_isa_name(isa));
    return 0;
  }
  fs_guarded_alloc(&b.rows, MAX_C);
  fs_block_alloc(&b.plane, MAX_C * MAX_HW);
  fs_block_alloc(&b.out, MAX_C);
  fs_block_alloc(&b.oracle, MAX_C);
  fs_rng rng;
  fs_rng_seed(&rng, 15485863u);
  size_t cases = 0;
  const size_t before = fs_failures();
  for (size_t channels = 1; channels <= MAX_C; channels++) {
    for (size_t hw = 1; hw <= MAX_HW; hw++) {
      pool_case c = {.channels = channels, .hw = hw, .seed = fs_rng_next(&rng)};
      c.contiguous = (int)fs_rng_below(&rng, 2);
      c.in_front = (int)fs_rng_below(&rng, 2);
      c.out_front = (int)fs_rng_below(&rng, 2);
      c.nan_input = fs_rng_below(&rng, 5) == 0;
      c.data_scale = fs_rng_scale(&rng);
      c.scale = fs_rng_below(&rng, 4) == 0 ? fs_rng_sym(&rng) * 3.0f : 1.0f / (float)hw;
      run_case(ops->gavgpool_name, ops->gavgpool, scalar->gavgpool_name, scalar->gavgpool, &c,
               &b);
      cases++;
    }
  }
  printf("  %-36s %4zu shapes (channels 1..%d, hw 1..%d) vs %-30s %s\n", ops->gavgpool_name,
         cases, MAX_C, MAX_HW, scalar->gavgpool_name, fs_failures() == before ? "ok" : "FAILED");
  fs_guarded_free(&b.rows);
  fs_block_free(&b.plane);
  fs_block_free(&b.out);
  fs_block_free(&b.oracle);
  return cases;
}
