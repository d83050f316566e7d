/* First-layer dense 3x3 convolution (stride 1 and 2, CHW or HWC input, NCHW output): each
 * variant of one ISA against the scalar variant of the same stride, and both against a
 * float64 sum.
 *
 * Shapes: every Cin of CINS x Cout 1..9 (the 4-channel tile, +-1, two tiles and a leftover)
 * x stride x layout, three cases each; the cases walk through every input width 1..MAX_IW
 * with a random padding of PADS and height 1..MAX_IH (1..MAX_IH/2 for the larger Cin). Each case makes its calls in one of three
 * ways, as the executor does with its bands of rows: all rows in one call; the rows in two
 * calls that share the scratch (the second one reuses what the first staged); or one band
 * only, and then every output row outside it must be untouched. Bias on/off, the four clamps,
 * the data scale, NaN input (one case in six) and the operands' placement in their pages
 * are drawn at random (seeded), as in test_dwconv.c. */
#include <stdio.h>
#include <string.h>

#include "fs_kernels.h"
#include "harness.h"

#define MAX_CIN 11
#define MAX_COUT 9
#define MAX_IH 16
#define MAX_IW 40
#define MAX_OH (MAX_IH + 1)
#define MAX_OW (MAX_IW + 1)
#define SCRATCH_FLOATS 8192

static const size_t CINS[] = {1, 2, 3, 4, MAX_CIN};
#define NCINS (sizeof CINS / sizeof CINS[0])

typedef struct {
  size_t t, l, b, r;
} padding;
static const padding PADS[] = {{1, 1, 1, 1}, {0, 0, 1, 1}, {0, 0, 0, 0}, {1, 1, 2, 2}, {1, 0, 0, 1}};
#define NPADS (sizeof PADS / sizeof PADS[0])

enum { CALL_ALL, CALL_TWO_BANDS, CALL_ONE_BAND, CALL_COUNT };
static const char* const CALL_NAMES[CALL_COUNT] = {"all", "two_bands", "one_band"};

typedef struct {
  size_t s, cin, cout, ih, iw, oh, ow;
  padding pad;
  int hwc, bias, clamp, nan_input, calls, in_front, out_front, w_front;
  size_t split, band_begin, band_end; /* rows computed: [band_begin, band_end) */
  float scale;
  uint64_t seed;
} conv_case;

typedef struct {
  fs_guarded in, out, oracle;
  fs_block w, bias, scratch_k, scratch_o;
  float copy[MAX_CIN][MAX_IH][MAX_IW];
  float w_copy[MAX_COUT * MAX_CIN * 9], bias_copy[MAX_COUT];
  double ref[MAX_COUT][MAX_OH][MAX_OW], mag[MAX_COUT][MAX_OH][MAX_OW];
  size_t scratch_floats;
  size_t key[5];
} conv_buffers;

static void reference(const conv_case* c, conv_buffers* b, float lo, float hi) {
  for (size_t co = 0; co < c->cout; co++) {
    const double bias = c->bias ? b->bias_copy[co] : 0.0;
    for (size_t oy = 0; oy < c->oh; oy++) {
      for (size_t ox = 0; ox < c->ow; ox++) {
        double y = bias, mag = fabs(bias);
        for (size_t ci = 0; ci < c->cin; ci++) {
          for (size_t ky = 0; ky < 3; ky++) {
            const ptrdiff_t iy = (ptrdiff_t)(oy * c->s + ky) - (ptrdiff_t)c->pad.t;
            if (iy < 0 || iy >= (ptrdiff_t)c->ih) continue;
            for (size_t kx = 0; kx < 3; kx++) {
              const ptrdiff_t ix = (ptrdiff_t)(ox * c->s + kx) - (ptrdiff_t)c->pad.l;
              if (ix < 0 || ix >= (ptrdiff_t)c->iw) continue;
              const double t =
                  (double)b->w_copy[((co * c->cin + ci) * 3 + ky) * 3 + kx] * b->copy[ci][iy][ix];
              y += t;
              mag += fabs(t);
            }
          }
        }
        b->ref[co][oy][ox] = fs_clamp_ref(y, lo, hi);
        b->mag[co][oy][ox] = mag;
      }
    }
  }
}

/* Guarded input rows: CHW, row ci*ih + iy of iw floats; HWC, row iy of iw*cin floats. */
static size_t in_rows(const conv_case* c) { return c->hwc ? c->ih : c->cin * c->ih; }
static size_t in_len(const conv_case* c) { return c->hwc ? c->iw * c->cin : c->iw; }
static float* in_elem(const conv_case* c, conv_buffers* b, size_t ci, size_t iy, size_t ix) {
  if (c->hwc) return fs_guarded_row_at(&b->in, iy, in_len(c), c->in_front) + ix * c->cin + ci;
  return fs_guarded_row_at(&b->in, ci * c->ih + iy, in_len(c), c->in_front) + ix;
}

static int check_inputs(const char* who, const conv_case* c, conv_buffers* b) {
  for (size_t ci = 0; ci < c->cin; ci++) {
    for (size_t iy = 0; iy < c->ih; iy++) {
      for (size_t ix = 0; ix < c->iw; ix++) {
        if (memcmp(in_elem(c, b, ci, iy, ix), &b->copy[ci][iy][ix], sizeof(float)) != 0) {
          return fs_fail("%s modified input[%zu][%zu][%zu]", who, ci, iy, ix);
        }
      }
    }
  }
  for (size_t r = 0; r < in_rows(c); r++) {
    if (!fs_guarded_canary_outside(&b->in, r, in_len(c), c->in_front)) {
      return fs_fail("%s wrote around input row %zu", who, r);
    }
  }
  const size_t nw = c->cout * c->cin * 9;
  if (memcmp(fs_block_at(&b->w, nw, c->w_front), b->w_copy, nw * sizeof(float)) != 0 ||
      !fs_block_canary_outside(&b->w, nw, c->w_front)) {
    return fs_fail("%s modified the weights", who);
  }
  if (c->bias && (memcmp(fs_block_at(&b->bias, c->cout, c->w_front), b->bias_copy,
                         c->cout * sizeof(float)) != 0 ||
                  !fs_block_canary_outside(&b->bias, c->cout, c->w_front))) {
    return fs_fail("%s modified the bias", who);
  }
  return 0;
}

static int check_output(const char* who, const conv_case* c, conv_buffers* b,
                        const fs_guarded* out, const fs_guarded* against,
                        const fs_block* scratch, size_t nscratch) {
  for (size_t co = 0; co < c->cout; co++) {
    for (size_t oy = 0; oy < c->oh; oy++) {
      const size_t row = co * c->oh + oy;
      if (oy < c->band_begin || oy >= c->band_end) {
        if (!fs_guarded_canary_outside(out, row, 0, c->out_front)) {
          return fs_fail("%s wrote output row %zu of channel %zu, outside rows [%zu, %zu)", who,
                         oy, co, c->band_begin, c->band_end);
        }
        continue;
      }
      if (!fs_guarded_canary_outside(out, row, c->ow, c->out_front)) {
        return fs_fail("%s wrote outside output row %zu of channel %zu (ow = %zu)", who, oy, co,
                       c->ow);
      }
      const float* y = fs_guarded_row_at(out, row, c->ow, c->out_front);
      const float* z = against != NULL ? fs_guarded_row_at(against, row, c->ow, c->out_front)
                                       : NULL;
      for (size_t ox = 0; ox < c->ow; ox++) {
        const double tol = fs_tolerance(9 * c->cin + 1, b->mag[co][oy][ox]);
        if (fs_is_canary(y[ox])) {
          return fs_fail("%s left output[%zu][%zu][%zu] unwritten", who, co, oy, ox);
        }
        if (!fs_close(y[ox], (float)b->ref[co][oy][ox], tol)) {
          return fs_fail("%s output[%zu][%zu][%zu] = %.9g, float64 reference %.9g, tolerance "
                         "%.3g", who, co, oy, ox, y[ox], b->ref[co][oy][ox], tol);
        }
        if (z != NULL && !fs_close(y[ox], z[ox], tol)) {
          return fs_fail("%s output[%zu][%zu][%zu] = %.9g, scalar %.9g, tolerance %.3g", who, co,
                         oy, ox, y[ox], z[ox], tol);
        }
      }
    }
  }
  if (!fs_guarded_canary_outside(out, c->cout * c->oh, 0, c->out_front)) {
    return fs_fail("%s wrote past the last output channel (cout = %zu)", who, c->cout);
  }
  if (!fs_block_canary_outside(scratch, nscratch, 0)) {
    return fs_fail("%s wrote outside its %zu scratch floats", who, nscratch);
  }
  return 0;
}

static void run_kernel(fs_conv2d_fn fn, const conv_case* c, conv_buffers* b, float* scratch,
                       fs_guarded* out, float lo, float hi) {
  fs_guarded_fill_canary_rows(out, c->cout * c->oh + 1);
  const size_t g = fs_guarded_stride(&b->in), f = sizeof(float);
  const size_t channel_stride = c->hwc ? f : c->ih * g, pixel_stride = c->hwc ? c->cin * f : f;
  const float* input = fs_guarded_row_at(&b->in, 0, in_len(c), c->in_front);
  const float* w = fs_block_at(&b->w, c->cout * c->cin * 9, c->w_front);
  const float* bias = c->bias ? fs_block_at(&b->bias, c->cout, c->w_front) : NULL;
  float* output = fs_guarded_row_at(out, 0, c->ow, c->out_front);
  const size_t og = fs_guarded_stride(out);
  if (c->calls == CALL_TWO_BANDS) { /* [0, split) then [split, oh); either may be empty */
    fn(c->cin, c->ih, c->iw, c->oh, c->ow, c->pad.t, c->pad.l, 0, c->split, input,
       channel_stride, g, pixel_stride, c->cout, w, bias, scratch, output, c->oh * og, og, lo,
       hi);
    fn(c->cin, c->ih, c->iw, c->oh, c->ow, c->pad.t, c->pad.l, c->split, c->oh, input,
       channel_stride, g, pixel_stride, c->cout, w, bias, scratch, output, c->oh * og, og, lo,
       hi);
  } else {
    fn(c->cin, c->ih, c->iw, c->oh, c->ow, c->pad.t, c->pad.l, c->band_begin, c->band_end,
       input, channel_stride, g, pixel_stride, c->cout, w, bias, scratch, output, c->oh * og,
       og, lo, hi);
  }
}

static void run_case(const char* name, fs_conv2d_fn fn, const char* oname, fs_conv2d_fn ofn,
                     const conv_case* c, conv_buffers* b) {
  fs_set_case("conv2d %s vs %s: cin=%zu cout=%zu %s ih=%zu iw=%zu oh=%zu ow=%zu "
              "pad=(%zu,%zu,%zu,%zu) calls=%s rows=[%zu,%zu) split=%zu bias=%d clamp=%s nan=%d "
              "scale=%g front(in,out,w)=(%d,%d,%d) seed=%llu",
              name, oname, c->cin, c->cout, c->hwc ? "HWC" : "CHW", c->ih, c->iw, c->oh, c->ow,
              c->pad.t, c->pad.l, c->pad.b, c->pad.r, CALL_NAMES[c->calls], c->band_begin,
              c->band_end, c->split, c->bias, fs_clamp_names[c->clamp], c->nan_input, c->scale,
              c->in_front, c->out_front, c->w_front, (unsigned long long)c->seed);
  fs_rng rng;
  fs_rng_seed(&rng, c->seed);
  const size_t nw = c->cout * c->cin * 9;
  for (size_t i = 0; i < nw; i++) {
    b->w_copy[i] = fs_rng_below(&rng, 6) == 0 ? 0.0f : fs_rng_sym(&rng);
  }
  for (size_t co = 0; co < c->cout; co++) b->bias_copy[co] = fs_rng_sym(&rng) * c->scale;
  fs_block_fill_canary(&b->w);
  fs_block_fill_canary(&b->bias);
  memcpy(fs_block_at(&b->w, nw, c->w_front), b->w_copy, nw * sizeof(float));
  memcpy(fs_block_at(&b->bias, c->cout, c->w_front), b->bias_copy, c->cout * sizeof(float));
  for (size_t ci = 0; ci < c->cin; ci++) {
    for (size_t iy = 0; iy < c->ih; iy++) {
      for (size_t ix = 0; ix < c->iw; ix++) b->copy[ci][iy][ix] = fs_rng_sym(&rng) * c->scale;
    }
  }
  if (c->nan_input) {
    const size_t ix = fs_rng_below(&rng, 2) ? c->iw - 1 : fs_rng_below(&rng, c->iw);
    b->copy[fs_rng_below(&rng, c->cin)][fs_rng_below(&rng, c->ih)][ix] = NAN;
  }
  fs_guarded_fill_canary_rows(&b->in, in_rows(c));
  for (size_t ci = 0; ci < c->cin; ci++) {
    for (size_t iy = 0; iy < c->ih; iy++) {
      for (size_t ix = 0; ix < c->iw; ix++) *in_elem(c, b, ci, iy, ix) = b->copy[ci][iy][ix];
    }
  }
  float lo, hi;
  fs_clamp_bounds(c->clamp, c->scale, &lo, &hi);
  reference(c, b, lo, hi);

  const size_t ns = fs_conv2d_scratch_floats(c->cin, c->s, c->iw, c->ow, c->pad.l);
  const size_t key[5] = {c->cin, c->s, c->iw, c->ow, c->pad.l};
  if (b->scratch_floats != ns || memcmp(key, b->key, sizeof key) != 0) {
    fs_block_fill_canary(&b->scratch_k);
    fs_block_fill_canary(&b->scratch_o);
    memset(fs_block_at(&b->scratch_k, ns, 0), 0, ns * sizeof(float));
    memset(fs_block_at(&b->scratch_o, ns, 0), 0, ns * sizeof(float));
    b->scratch_floats = ns;
    memcpy(b->key, key, sizeof key);
  }
  run_kernel(ofn, c, b, fs_block_at(&b->scratch_o, ns, 0), &b->oracle, lo, hi);
  if (check_inputs(oname, c, b) || check_output(oname, c, b, &b->oracle, NULL, &b->scratch_o, ns)) {
    b->scratch_floats = 0;
    return;
  }
  run_kernel(fn, c, b, fs_block_at(&b->scratch_k, ns, 0), &b->out, lo, hi);
  if (check_inputs(name, c, b) || check_output(name, c, b, &b->out, &b->oracle, &b->scratch_k, ns)) {
    b->scratch_floats = 0;
  }
}

size_t fs_test_conv2d(int isa) {
  static conv_buffers b;
  const fs_chw_ops* ops = fs_chw_ops_for(isa);
  const fs_chw_ops* scalar = fs_chw_ops_for(FS_ISA_SCALAR);
  if (ops == NULL || scalar == NULL) {
    fs_fail("no CHW ops for %s", fs_isa_name(isa));
    return 0;
  }
  fs_guarded_alloc(&b.in, MAX_CIN * MAX_IH);
  fs_guarded_alloc(&b.out, MAX_COUT * MAX_OH + 1);
  fs_guarded_alloc(&b.oracle, MAX_COUT * MAX_OH + 1);
  fs_block_alloc(&b.w, MAX_COUT * MAX_CIN * 9);
  fs_block_alloc(&b.bias, MAX_COUT);
  fs_block_alloc(&b.scratch_k, SCRATCH_FLOATS);
  fs_block_alloc(&b.scratch_o, SCRATCH_FLOATS);
  size_t cases = 0;
  for (int s2 = 0; s2 < 2; s2++) {
    const size_t s = s2 ? 2 : 1;
    const char* name = ops->conv2d_names[s2];
    const char* oname = scalar->conv2d_names[s2];
    const size_t before = fs_failures(), cases_before = cases;
    fs_rng rng;
    fs_rng_seed(&rng, 104729u + (uint64_t)s2);
    size_t index = 0;
    for (size_t i = 0; i < NCINS; i++) {
      for (size_t cout = 1; cout <= MAX_COUT; cout++) {
        for (int hwc = 0; hwc < 2; hwc++) {
          for (int rep = 0; rep < 3; rep++, index++) {
            conv_case c = {.s = s, .cin = CINS[i], .cout = cout, .hwc = hwc,
                           .seed = fs_rng_next(&rng)};
            c.pad = PADS[fs_rng_below(&rng, NPADS)];
            c.iw = index * 17 % MAX_IW + 1; /* 17 and 40 coprime: every width in 40 cases */
            c.ih = 1 + fs_rng_below(&rng, c.cin > 4 ? MAX_IH / 2 : MAX_IH);
            if (c.iw + c.pad.l + c.pad.r < 3) c.iw = 3 - c.pad.l - c.pad.r;
            if (c.ih + c.pad.t + c.pad.b < 3) c.ih = 3 - c.pad.t - c.pad.b;
            c.oh = (c.ih + c.pad.t + c.pad.b - 3) / s + 1;
            c.ow = (c.iw + c.pad.l + c.pad.r - 3) / s + 1;
            c.calls = (int)(index % CALL_COUNT);
            c.band_begin = 0;
            c.band_end = c.oh;
            c.split = fs_rng_below(&rng, c.oh + 1);
            if (c.calls == CALL_ONE_BAND) {
              c.band_begin = fs_rng_below(&rng, c.oh);
              c.band_end = c.band_begin + 1 + fs_rng_below(&rng, c.oh - c.band_begin);
            }
            c.bias = (int)fs_rng_below(&rng, 2);
            c.clamp = (int)fs_rng_below(&rng, FS_CLAMP_COUNT);
            c.scale = fs_rng_scale(&rng);
            c.nan_input = fs_rng_below(&rng, 6) == 0;
            c.in_front = (int)fs_rng_below(&rng, 2);
            c.out_front = (int)fs_rng_below(&rng, 2);
            c.w_front = (int)fs_rng_below(&rng, 2);
            run_case(name, ops->conv2d[s2], oname, scalar->conv2d[s2], &c, &b);
            cases++;
          }
        }
      }
    }
    printf("  %-36s %4zu shapes (cin 1..4,%d cout 1..%d CHW/HWC iw 1..%d) vs %-30s %s\n", name,
           cases - cases_before, MAX_CIN, MAX_COUT, MAX_IW, oname,
           fs_failures() == before ? "ok" : "FAILED");
  }
  fs_guarded_free(&b.in);
  fs_guarded_free(&b.out);
  fs_guarded_free(&b.oracle);
  fs_block_free(&b.w);
  fs_block_free(&b.bias);
  fs_block_free(&b.scratch_k);
  fs_block_free(&b.scratch_o);
  return cases;
}
