/* Depthwise KxK convolution of one CHW plane (K 3 and 5, stride 1 and 2): each variant of one
 * ISA against the scalar variant of the same K and stride, and both against a float64 sum.
 *
 * Shapes: for every kernel and every padding (top, left, bottom, right) of PADS that fits K,
 * every input width 1..MAX_IW (so every output tail after 0..4 pairs of 16-float vectors) with
 * one height from 1..MAX_IH, and a second height for the padding TensorFlow's "same" uses.
 * Cases rotate through bias on/off x the four clamps, the data scale and where each operand
 * sits (rows at the end of their page or at its start: reads past either side fault); one case
 * in five puts a NaN or two in the input, which must reach exactly the outputs whose window
 * holds it (0 * NaN is NaN: zero weights included, padding not).
 *
 * Stride 1 with "same" padding on a contiguous plane takes the flat path (dwconv_impl.h): for
 * those, every width also runs on planes stored contiguously in one guarded block, with three
 * heights (a staged plane, a smaller staged one, and one past FS_DW_FLAT_STAGE_ROWS).
 *
 * Scratch: zero-filled only when (iw, ow, pad_left) changes, as callers do; consecutive cases
 * of one width reuse it, which checks that a kernel leaves its padding zero. */
#include <stdio.h>
#include <string.h>

#include "fs_kernels.h"
#include "harness.h"

#define MAX_IH 24
#define FLAT_IH (FS_DW_FLAT_STAGE_ROWS + 8) /* contiguous planes, up to past the staging limit */
#define MAX_IW 72 /* past 48: whole rows in blocks of rows (fs_dw_rows_s1) */
#define MAX_OH (FLAT_IH + 2)
#define MAX_OW (MAX_IW + 2)
#define SCRATCH_FLOATS 8192

typedef struct {
  size_t t, l, b, r;
} padding;
/* Symmetric 0..2, TF-same's asymmetric ones, and top != left. Used when every pad < K. */
static const padding PADS[] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {2, 2, 2, 2},
                               {0, 0, 1, 1}, {1, 1, 2, 2}, {1, 0, 0, 1}};
#define NPADS (sizeof PADS / sizeof PADS[0])

typedef struct {
  size_t k, s, ih, iw, oh, ow;
  padding pad;
  int bias, clamp, nan_input, in_front, out_front, w_front, flat;
  float scale;
  uint64_t seed;
} dw_case;

/* A plane operand: rows in a guarded row buffer, or (dw_case.flat) one contiguous block. */
typedef struct {
  fs_guarded rows;
  fs_block flat;
} dw_plane;

typedef struct {
  dw_plane in, out, oracle;
  fs_block w, scratch_k, scratch_o;
  float copy[FLAT_IH][MAX_IW];
  double ref[MAX_OH][MAX_OW], mag[MAX_OH][MAX_OW];
  size_t scratch_floats; /* 0: scratch must be zero-filled before the next call */
  size_t key[8];         /* (k, s, ih, iw, oh, ow, pad_top, pad_left) of the scratch */
} dw_buffers;

static float* plane_row(const dw_case* c, const dw_plane* p, size_t r, size_t len, size_t rows,
                        int front) {
  return c->flat ? fs_block_at(&p->flat, rows * len, front) + r * len
                 : fs_guarded_row_at(&p->rows, r, len, front);
}

static size_t plane_stride(const dw_case* c, const dw_plane* p, size_t len) {
  return c->flat ? len * sizeof(float) : fs_guarded_stride(&p->rows);
}

/* 1 if nothing around row r (for a contiguous plane: around the plane) was written. */
static int plane_canary_outside(const dw_case* c, const dw_plane* p, size_t r, size_t len,
                                size_t rows, int front) {
  return c->flat ? fs_block_canary_outside(&p->flat, rows * len, front)
                 : fs_guarded_canary_outside(&p->rows, r, len, front);
}

static void plane_fill_canary(const dw_case* c, dw_plane* p, size_t rows) {
  if (c->flat) {
    fs_block_fill_canary(&p->flat);
  } else {
    fs_guarded_fill_canary_rows(&p->rows, rows);
  }
}

static void plane_alloc(dw_plane* p, size_t rows, size_t flat_floats) {
  fs_guarded_alloc(&p->rows, rows);
  fs_block_alloc(&p->flat, flat_floats);
}

static void plane_free(dw_plane* p) {
  fs_guarded_free(&p->rows);
  fs_block_free(&p->flat);
}

static void reference(const dw_case* c, dw_buffers* b, const float* w, float bias, float lo,
                      float hi) {
  for (size_t oy = 0; oy < c->oh; oy++) {
    for (size_t ox = 0; ox < c->ow; ox++) {
      double y = bias, mag = fabs((double)bias);
      for (size_t ky = 0; ky < c->k; ky++) {
        const ptrdiff_t iy = (ptrdiff_t)(oy * c->s + ky) - (ptrdiff_t)c->pad.t;
        if (iy < 0 || iy >= (ptrdiff_t)c->ih) continue;
        for (size_t kx = 0; kx < c->k; kx++) {
          const ptrdiff_t ix = (ptrdiff_t)(ox * c->s + kx) - (ptrdiff_t)c->pad.l;
          if (ix < 0 || ix >= (ptrdiff_t)c->iw) continue;
          const double t = (double)w[ky * c->k + kx] * b->copy[iy][ix];
          y += t;
          mag += fabs(t);
        }
      }
      b->ref[oy][ox] = fs_clamp_ref(y, lo, hi);
      b->mag[oy][ox] = mag;
    }
  }
}

/* The input and the weights are as they were, and nothing was written around them. */
static int check_inputs(const char* who, const dw_case* c, dw_buffers* b, const float* w,
                        const float* w_copy) {
  for (size_t iy = 0; iy < c->ih; iy++) {
    if (memcmp(plane_row(c, &b->in, iy, c->iw, c->ih, c->in_front), b->copy[iy],
               c->iw * sizeof(float)) != 0 ||
        !plane_canary_outside(c, &b->in, iy, c->iw, c->ih, c->in_front)) {
      return fs_fail("%s modified input row %zu (or the page around it)", who, iy);
    }
  }
  if (memcmp(w, w_copy, c->k * c->k * sizeof(float)) != 0 ||
      !fs_block_canary_outside(&b->w, c->k * c->k, c->w_front)) {
    return fs_fail("%s modified the weights", who);
  }
  return 0;
}

static int check_output(const char* who, const dw_case* c, dw_buffers* b, const dw_plane* out,
                        const dw_plane* against, const fs_block* scratch, size_t nscratch) {
  for (size_t oy = 0; oy < c->oh; oy++) {
    const float* y = plane_row(c, out, oy, c->ow, c->oh, c->out_front);
    const float* z = against != NULL ? plane_row(c, against, oy, c->ow, c->oh, c->out_front) : NULL;
    if (!plane_canary_outside(c, out, oy, c->ow, c->oh, c->out_front)) {
      return fs_fail("%s wrote outside output row %zu (ow = %zu)", who, oy, c->ow);
    }
    for (size_t ox = 0; ox < c->ow; ox++) {
      const double tol = fs_tolerance(c->k * c->k + 1, b->mag[oy][ox]);
      if (fs_is_canary(y[ox])) {
        return fs_fail("%s left output[%zu][%zu] unwritten", who, oy, ox);
      }
      if (!fs_close(y[ox], (float)b->ref[oy][ox], tol)) {
        return fs_fail("%s output[%zu][%zu] = %.9g, float64 reference %.9g, tolerance %.3g", who,
                       oy, ox, y[ox], b->ref[oy][ox], tol);
      }
      if (z != NULL && !fs_close(y[ox], z[ox], tol)) {
        return fs_fail("%s output[%zu][%zu] = %.9g, scalar %.9g, tolerance %.3g", who, oy, ox,
                       y[ox], z[ox], tol);
      }
    }
  }
  if (!c->flat && !fs_guarded_canary_outside(&out->rows, c->oh, 0, c->out_front)) {
    return fs_fail("%s wrote past the last output row (oh = %zu)", who, c->oh);
  }
  if (!fs_block_canary_outside(scratch, nscratch, 0)) {
    return fs_fail("%s wrote outside its %zu scratch floats", who, nscratch);
  }
  return 0;
}

static void run_kernel(fs_dwconv2d_fn fn, const dw_case* c, dw_buffers* b, const float* w,
                       float bias, float* scratch, dw_plane* out, float lo, float hi) {
  plane_fill_canary(c, out, c->oh + 1);
  fn(c->ih, c->iw, c->oh, c->ow, c->pad.t, c->pad.l,
     plane_row(c, &b->in, 0, c->iw, c->ih, c->in_front), plane_stride(c, &b->in, c->iw), NULL,
     NULL, w, bias, scratch, plane_row(c, out, 0, c->ow, c->oh, c->out_front),
     plane_stride(c, out, c->ow), 0, c->oh * c->ow, lo, hi);
}

static void run_case(const char* name, fs_dwconv2d_fn fn, const char* oname, fs_dwconv2d_fn ofn,
                     const dw_case* c, dw_buffers* b) {
  fs_set_case("dwconv %s vs %s: ih=%zu iw=%zu oh=%zu ow=%zu pad=(%zu,%zu,%zu,%zu) bias=%d "
              "clamp=%s nan=%d scale=%g front(in,out,w)=(%d,%d,%d) contiguous=%d seed=%llu",
              name, oname, c->ih, c->iw, c->oh, c->ow, c->pad.t, c->pad.l, c->pad.b, c->pad.r,
              c->bias, fs_clamp_names[c->clamp], c->nan_input, c->scale, c->in_front,
              c->out_front, c->w_front, c->flat, (unsigned long long)c->seed);
  fs_rng rng;
  fs_rng_seed(&rng, c->seed);
  const size_t kk = c->k * c->k;
  float w_copy[25];
  fs_block_fill_canary(&b->w);
  float* w = fs_block_at(&b->w, kk, c->w_front);
  for (size_t i = 0; i < kk; i++) {
    w_copy[i] = fs_rng_below(&rng, 5) == 0 ? 0.0f : fs_rng_sym(&rng);
    w[i] = w_copy[i];
  }
  const float bias = c->bias ? fs_rng_sym(&rng) * c->scale : 0.0f;
  plane_fill_canary(c, &b->in, c->ih);
  for (size_t iy = 0; iy < c->ih; iy++) {
    for (size_t ix = 0; ix < c->iw; ix++) b->copy[iy][ix] = fs_rng_sym(&rng) * c->scale;
  }
  for (int n = 0; n < c->nan_input; n++) {
    const size_t ix = fs_rng_below(&rng, 2) ? c->iw - 1 : fs_rng_below(&rng, c->iw);
    b->copy[fs_rng_below(&rng, c->ih)][ix] = NAN;
  }
  for (size_t iy = 0; iy < c->ih; iy++) {
    memcpy(plane_row(c, &b->in, iy, c->iw, c->ih, c->in_front), b->copy[iy],
           c->iw * sizeof(float));
  }
  float lo, hi;
  fs_clamp_bounds(c->clamp, c->scale, &lo, &hi);
  reference(c, b, w_copy, bias, lo, hi);

  const size_t ns =
      fs_dwconv2d_scratch_floats(c->k, c->s, c->ih, c->iw, c->oh, c->ow, c->pad.t, c->pad.l);
  const size_t key[8] = {c->k, c->s, c->ih, c->iw, c->oh, c->ow, c->pad.t, c->pad.l};
  if (b->scratch_floats != ns || memcmp(key, b->key, sizeof key) != 0) {
    fs_block_fill_canary(&b->scratch_k);
    fs_block_fill_canary(&b->scratch_o);
    memset(fs_block_at(&b->scratch_k, ns, 0), 0, ns * sizeof(float));
    memset(fs_block_at(&b->scratch_o, ns, 0), 0, ns * sizeof(float));
    b->scratch_floats = ns;
    memcpy(b->key, key, sizeof key);
  }
  run_kernel(ofn, c, b, w, bias, fs_block_at(&b->scratch_o, ns, 0), &b->oracle, lo, hi);
  if (check_inputs(oname, c, b, w, w_copy) ||
      check_output(oname, c, b, &b->oracle, NULL, &b->scratch_o, ns)) {
    b->scratch_floats = 0;
    return;
  }
  run_kernel(fn, c, b, w, bias, fs_block_at(&b->scratch_k, ns, 0), &b->out, lo, hi);
  if (check_inputs(name, c, b, w, w_copy) ||
      check_output(name, c, b, &b->out, &b->oracle, &b->scratch_k, ns)) {
    b->scratch_floats = 0;
  }
}

/* The padding TensorFlow's "same" gives an even-sized input. */
static int is_tf_same(size_t k, size_t s, padding p) {
  const size_t total = k - s;
  return p.t == total / 2 && p.l == total / 2 && p.b == total - total / 2 &&
         p.r == total - total / 2;
}

size_t fs_test_dwconv(int isa) {
  static dw_buffers b;
  const fs_chw_ops* ops = fs_chw_ops_for(isa);
  const fs_chw_ops* scalar = fs_chw_ops_for(FS_ISA_SCALAR);
  if (ops == NULL || scalar == NULL) {
    fs_fail("no CHW ops for %s", fs_isa_name(isa));
    return 0;
  }
  plane_alloc(&b.in, MAX_IH, FLAT_IH * MAX_IW);
  plane_alloc(&b.out, MAX_OH + 1, FLAT_IH * MAX_IW);
  plane_alloc(&b.oracle, MAX_OH + 1, FLAT_IH * MAX_IW);
  fs_block_alloc(&b.w, 25);
  fs_block_alloc(&b.scratch_k, SCRATCH_FLOATS);
  fs_block_alloc(&b.scratch_o, SCRATCH_FLOATS);
  size_t cases = 0;
  for (int big = 0; big < 2; big++) {
    for (int s2 = 0; s2 < 2; s2++) {
      const size_t k = big ? 5 : 3, s = s2 ? 2 : 1;
      const char* name = ops->dwconv2d_names[big][s2];
      const char* oname = scalar->dwconv2d_names[big][s2];
      const size_t before = fs_failures(), cases_before = cases;
      size_t index = 0;
      for (size_t p = 0; p < NPADS; p++) {
        const padding pad = PADS[p];
        if (pad.t >= k || pad.l >= k || pad.b >= k || pad.r >= k) continue;
        if (pad.t == pad.b && pad.l == pad.r && pad.t > k / 2) continue;
        fs_rng rng;
        fs_rng_seed(&rng, (uint64_t)(big * 2 + s2 + 1) * 7919u + p);
        const int heights = is_tf_same(k, s, pad) ? 2 : 1;
        const int same = s == 1 && pad.t == k / 2 && pad.l == k / 2 && pad.b == k / 2 &&
                         pad.r == k / 2;
        const size_t half = FS_DW_FLAT_STAGE_ROWS / 2;
        for (size_t iw = 1; iw <= MAX_IW; iw++) {
          if (iw + pad.l + pad.r < k) continue;
          for (int h = 0; h < heights + (same ? 3 : 0); h++, index++) {
            dw_case c = {.k = k, .s = s, .iw = iw, .pad = pad, .seed = fs_rng_next(&rng)};
            c.ih = h == 0 ? 1 + fs_rng_below(&rng, MAX_IH) : 1 + fs_rng_below(&rng, 6);
            if (h >= heights) { /* contiguous: flat path, staged (larger, then smaller) or not */
              c.flat = 1;
              c.ih = h == heights       ? half + 1 + fs_rng_below(&rng, half)
                     : h == heights + 1 ? 1 + fs_rng_below(&rng, half)
                                        : FS_DW_FLAT_STAGE_ROWS + 1 + fs_rng_below(&rng, 8);
            }
            if (c.ih + pad.t + pad.b < k) c.ih = k - pad.t - pad.b;
            c.oh = (c.ih + pad.t + pad.b - k) / s + 1;
            c.ow = (iw + pad.l + pad.r - k) / s + 1;
            c.bias = (int)(index % 2);
            c.clamp = (int)(index / 2 % FS_CLAMP_COUNT);
            c.scale = fs_rng_scale(&rng);
            c.nan_input = fs_rng_below(&rng, 5) == 0 ? 1 + (int)fs_rng_below(&rng, 2) : 0;
            c.in_front = (int)fs_rng_below(&rng, 2);
            c.out_front = (int)fs_rng_below(&rng, 2);
            c.w_front = (int)fs_rng_below(&rng, 2);
            run_case(name, ops->dwconv2d[big][s2], oname, scalar->dwconv2d[big][s2], &c, &b);
            cases++;
          }
        }
      }
      printf("  %-36s %4zu shapes (iw 1..%d, ih 1..%d) vs %-30s %s\n", name, cases - cases_before,
             MAX_IW, MAX_IH, oname, fs_failures() == before ? "ok" : "FAILED");
    }
  }
  plane_free(&b.in);
  plane_free(&b.out);
  plane_free(&b.oracle);
  fs_block_free(&b.w);
  fs_block_free(&b.scratch_k);
  fs_block_free(&b.scratch_o);
  return cases;
}
