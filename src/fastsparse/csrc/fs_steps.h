/* Step lists: a run of kernel calls executed back to back inside ONE OpenMP parallel region.
 *
 * A network (or a single op) is a list of steps over numbered tensors. Each step is split into
 * `items` independent work items (an image x spatial chunk x channel group for spmm, a channel
 * plane for the depthwise conv, ...); the threads share the items of a step and meet at the
 * step's barrier before the next one reads its output. One parallel region per list, instead
 * of one per layer, saves the fork/join of every layer, and the loop over layers runs in C,
 * without Python between layers.
 *
 * Work items are assigned to threads statically and each item's arithmetic does not depend on
 * which thread runs it, so results are bit-identical for every thread count.
 *
 * Included only by the Cython module (_kernels.pyx), which builds the steps after checking
 * every shape, pointer and size against the arrays it keeps alive.
 */
#ifndef FS_STEPS_H
#define FS_STEPS_H

#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fs_kernels.h"

enum fs_step_kind {
  FS_STEP_SPMM = 0,
  FS_STEP_DWCONV2D = 1,
  FS_STEP_CONV2D = 2,
  FS_STEP_GAVGPOOL = 3,
  FS_STEP_VADD = 4,
  FS_STEP_SPMM_DWCONV2D = 5, /* a sparse 1x1 fused with the depthwise conv that reads it */
  FS_STEP_SPMM_KSPLIT = 6,   /* a 1x1 summed in two halves of its input channels, then added */
  FS_STEP_DWCONV2D_SPMM = 7, /* a stride-1 depthwise conv fused with the sparse 1x1 reading it */
  FS_STEP_CONV2D_DWCONV2D_SPMM = 8 /* the first conv, then FS_STEP_DWCONV2D_SPMM on its output */
};

/* The non-zeros of a packed sparse matrix in one range of input channels (a "part"; the
 * whole matrix when there is one part). Same row blocks in every part. */
typedef struct fs_spmm_part {
  const float* values;
  const uint32_t* nnzmap;
  const int32_t* offsets;
  const int64_t* value_start; /* per block (and one past the last): first value, */
  const int64_t* nz_start;    /* first non-zero column */
} fs_spmm_part;

/* Sparse 1x1: item t = (image, spatial piece of `chunk` positions, group of output blocks).
 *
 * With nparts > 1 (K-blocking, for wide inputs), each tile of part_mc positions is computed
 * part after part: part 0 writes bias + its products (+ the residual), each later part adds
 * its products to the output, and the last one clamps. Each part's rows of the tile
 * (part_mc x its input channels) stay in L1, where the whole tile would not. */
typedef struct fs_spmm_args {
  fs_spmm_fn fn;
  size_t hw, cin, cout, chunk, pieces, groups, nparts, part_mc;
  const fs_spmm_part* parts;
  const int64_t* bounds;    /* groups + 1 block indices */
  const int64_t* row_start; /* per block (and one past the last): first row */
  const float* bias;        /* NULL: no bias */
  float lo, hi;
  /* FS_STEP_SPMM_KSPLIT (nparts >= 2, one image per call item pair): item t = (image, half
   * h of the parts). Half 0 sums bias + its parts into the output, half 1 its parts into
   * `partial` (cout planes of `plane` floats per image), neither clamped; then, by pieces of
   * `rchunk` positions, output = clamp(output + partial (+ residual)). Each thread thus reads
   * the input channels a channel-split step before it wrote on the same thread; the sums are
   * associated the same way on any thread count. */
  float* partial;
  size_t plane, rchunk, rpieces;
  fs_vadd_fn vadd;
} fs_spmm_args;

/* Depthwise: item t = one (image, channel) plane; or, with pieces > 0 (stride-1 flat path
 * only), t = (image, piece of `chunk` output positions) over every channel, the positions
 * cut where the 1x1 steps on the same image size cut theirs, so that a thread reads the 1x1
 * output it wrote itself, but for one row of taps at each cut. With `linked` > 0 the
 * tensors' `linked` images are the row pieces of one image (see fs_strides): item t = (piece,
 * channel), whose taps read the halo_rows rows above and below it from the pieces next to
 * it. */
typedef struct fs_dwconv2d_args {
  fs_dwconv2d_fn fn;
  size_t c, ih, iw, oh, ow, pad_top, pad_left, taps, chunk, pieces, linked, halo_rows;
  const float* weights;
  const float* bias;
  float lo, hi;
  size_t scratch_floats; /* the kernel's scratch, at the start of each thread's scratch */
  /* FS_STEP_SPMM_DWCONV2D: bands of output rows, 4 values each: the output positions
   * [out_begin, out_end) and the input positions [in_begin, in_end) (whole rows) that the
   * band's taps use, which the band's 1x1 computes. FS_STEP_DWCONV2D_SPMM: the same, each band
   * inside one row piece of the input; its planes start `gap` floats into the thread's work.
   * FS_STEP_CONV2D_DWCONV2D_SPMM: item t = (image, band t % nbands). */
  size_t nbands, gap;
  const int64_t* bands;
} fs_dwconv2d_args;

/* Dense 3x3: item t = (image, band of `band` output rows); an output in row pieces has one
 * band per piece. Strides in bytes. In FS_STEP_CONV2D_DWCONV2D_SPMM, `band` is the rows each
 * output plane holds in the work buffer. */
typedef struct fs_conv2d_args {
  fs_conv2d_fn fn;
  size_t cin, ih, iw, oh, ow, pad_top, pad_left, cout, band, pieces;
  size_t channel_stride, row_stride, pixel_stride;
  const float* weights;
  const float* bias;
  float lo, hi;
} fs_conv2d_args;

/* Global average pooling: item t = (image, run of `chunk` of its c channels x hw positions),
 * `chunks` runs per image: on T threads at batch 1, each thread pools the channels the 1x1
 * before it wrote, not the whole image from both cores' halves. */
typedef struct fs_gavgpool_args {
  fs_gavgpool_fn fn;
  size_t c, hw, chunk, chunks;
} fs_gavgpool_args;

/* Elementwise add: item t = floats [t * chunk, min(n, (t + 1) * chunk)). */
typedef struct fs_vadd_args {
  fs_vadd_fn fn;
  size_t n, chunk;
  float lo, hi;
} fs_vadd_args;

/* Where a tensor's images and channel planes start, in floats from its first element. A
 * plane's positions are contiguous; planes may be padded (channel > H * W) so that every
 * plane starts on a 64-byte boundary, which the vector loads of small planes (7x7, 14x14)
 * need to run at full speed.
 *
 * Row pieces: on T threads at batch 1, a tensor may hold its one image as T bands of rows
 * ("pieces", each `piece` positions), every band stored as an image of its own (channel
 * planes of that band; the next band's a fixed number of floats on, the image stride, with
 * other tensors' pieces possibly in between): each thread then writes and reads one
 * contiguous block. Cut inside every plane instead, a thread's writes sit next to the other
 * core's in every plane, and the hardware prefetchers' reads across the cut cost 2-3x the
 * step (measured: tools/xcore_bench.c). Steps that run one piece per item see the pieces as
 * images; a fused step, which cuts its own bands, maps position m to piece m / piece. piece
 * = 0: whole images. */
typedef struct fs_strides {
  size_t image, channel, piece;
} fs_strides;

typedef struct fs_step {
  int kind;
  int src, res, dst;  /* tensors: indices into the run's table; res < 0 for none */
  fs_strides src_s, res_s, dst_s;
  size_t items;
  float* scratch;     /* per thread `scratch_floats` apart, zero-filled by the builder */
  size_t scratch_floats;
  /* Planes a step writes before it reads them, in the one buffer all steps of a list share
   * (a call then touches its lines once, not once per step): per thread `work_floats` apart
   * for the fused steps; FS_STEP_SPMM_KSPLIT's `partial` points there too. */
  float* work;
  size_t work_floats;
  fs_spmm_args spmm;
  fs_dwconv2d_args dw;
  fs_conv2d_args conv;
  fs_gavgpool_args pool;
  fs_vadd_args vadd;
  /* NULL, or `nclaims` counters, one per 64-byte line, that make the items claimed, not
   * assigned (fs_run_steps zeroes them before each run): the threads of each pair (2i,
   * 2i + 1) share the items the static schedule would give them through counter i, thread
   * 2i taking them from the front, 2i + 1 from the back. For a list's first step: a worker
   * woken from sleep starts 25-40 us late in a VM, and its partner takes its first items
   * instead of waiting at the barrier. The items each thread gets then vary from call to
   * call, never the arithmetic of an item. */
  int64_t* claims;
  size_t nclaims;
} fs_step;

/* What a thread keeps from one item of a step to its next: the first conv's rows that the
 * band of FS_STEP_CONV2D_DWCONV2D_SPMM before held, rows [ra, rb) of image img (none when
 * rb == 0). Reset at every step. */
typedef struct fs_item_state {
  size_t img, ra, rb;
} fs_item_state;

static inline double fs_now(void) {
#ifdef _OPENMP
  return omp_get_wtime();
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

static inline int fs_thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/* Blocks [b0, b1) of the 1x1 over parts [q0, q1) of its input channels, for mc positions of
 * x (already at the first one), tile by tile of part_mc positions: the first part writes bias
 * + its products (+ `res`), each later one adds its products to `out`, the last one clamps to
 * [lo, hi]. Residual and output rows are `res_stride` and `out_stride` bytes apart. */
static inline void fs_spmm_parts(const fs_spmm_args* a, int64_t b0, int64_t b1, size_t q0,
                                 size_t q1, const float* x, size_t mc, const float* bias,
                                 const float* res, size_t res_stride, float* out,
                                 size_t out_stride, float lo, float hi) {
  const size_t nc = (size_t)(a->row_start[b1] - a->row_start[b0]);
  for (size_t m = 0; m < mc; m += a->part_mc) {
    const size_t n = mc - m < a->part_mc ? mc - m : a->part_mc;
    for (size_t q = q0; q < q1; q++) {
      const fs_spmm_part* p = &a->parts[q];
      const int first = q == q0, last = q + 1 == q1;
      a->fn(n, nc, x + m, p->values + p->value_start[b0], p->nnzmap + b0,
            p->offsets + p->nz_start[b0], first ? bias : NULL,
            first ? (res != NULL ? res + m : NULL) : out + m, first ? res_stride : out_stride,
            out + m, out_stride, last ? lo : -INFINITY, last ? hi : INFINITY);
    }
  }
}

/* Rows [r0, r0 + rows) of the 1x1 for positions [m0, m0 + mc) of image `x` (whose channel
 * planes the packed offsets address). Residual and output rows are `res_stride` and
 * `out_stride` bytes apart from `res` and `out`, which hold row r0's position m0. */
static inline void fs_spmm_rows(const fs_spmm_args* a, int64_t b0, int64_t b1, size_t m0,
                                size_t mc, const float* x, const float* res, size_t res_stride,
                                float* out, size_t out_stride) {
  const size_t r0 = (size_t)a->row_start[b0], nc = (size_t)a->row_start[b1] - r0;
  const float* bias = a->bias != NULL ? a->bias + r0 : NULL;
  x += m0;
  if (a->nparts == 1) {
    const fs_spmm_part* p = a->parts;
    a->fn(mc, nc, x, p->values + p->value_start[b0], p->nnzmap + b0, p->offsets + p->nz_start[b0],
          bias, res, res_stride, out, out_stride, a->lo, a->hi);
    return;
  }
  fs_spmm_parts(a, b0, b1, 0, a->nparts, x, mc, bias, res, res_stride, out, out_stride, a->lo,
                a->hi);
}

/* Depthwise conv of channel ch, from its input plane (and halo rows, or NULL) to output
 * positions [begin, end) of its output plane. */
static inline void fs_dwconv2d_plane(const fs_dwconv2d_args* a, size_t ch, const float* plane,
                                     const float* above, const float* below, float* scratch,
                                     float* out, size_t begin, size_t end) {
  a->fn(a->ih, a->iw, a->oh, a->ow, a->pad_top, a->pad_left, plane, a->iw * sizeof(float),
        above, below, a->weights + ch * a->taps, a->bias != NULL ? a->bias[ch] : 0.0f, scratch,
        out, a->ow * sizeof(float), begin, end, a->lo, a->hi);
}

/* What to add to an image's first float so that adding position m then addresses m: 0, or
 * for a tensor in row pieces, the start of piece m / s.piece less the positions before it. */
static inline ptrdiff_t fs_piece_shift(fs_strides s, size_t m) {
  if (s.piece == 0) return 0;
  const size_t q = m / s.piece;
  return (ptrdiff_t)(q * s.image) - (ptrdiff_t)(q * s.piece);
}

/* Floats between the planes a fused step keeps in its work buffer: whole 64-byte lines. */
static inline size_t fs_plane_floats(size_t hw) { return (hw + 15) / 16 * 16; }

/* The fused steps' depthwise conv of output positions [b0, b1) of every channel, from input
 * planes of ih rows (channel ch at in + ch * in_channel, with the halo rows above + and
 * below + ch * in_channel, or NULL) into this thread's work planes (ps floats apart, position
 * b0 first), then the 1x1 from them into `out` (+ `res`), rows out_stride and res_stride
 * bytes apart. */
static inline void fs_dw_band_spmm(const fs_dwconv2d_args* d, const fs_spmm_args* a, size_t ih,
                                   const float* in, size_t in_channel, const float* above,
                                   const float* below, float* scratch, float* planes, size_t ps,
                                   size_t b0, size_t b1, const float* res, size_t res_stride,
                                   float* out, size_t out_stride) {
  const size_t w = d->iw;
  for (size_t ch = 0; ch < d->c; ch++) {
    const size_t at = ch * in_channel;
    d->fn(ih, w, ih, w, d->pad_top, d->pad_left, in + at, w * sizeof(float),
          above != NULL ? above + at : NULL, below != NULL ? below + at : NULL,
          d->weights + ch * d->taps, d->bias != NULL ? d->bias[ch] : 0.0f, scratch,
          planes + ch * ps - b0, w * sizeof(float), b0, b1, d->lo, d->hi);
  }
  fs_spmm_rows(a, a->bounds[0], a->bounds[a->groups], 0, b1 - b0, planes, res, res_stride, out,
               out_stride);
}

/* How many channels ahead a row piece's depthwise conv asks for its halo rows: 2 us less per
 * 192 x 28 x 28 layer of MobileNet v2 on 2 threads (4, 8 and 16 alike). */
#define FS_HALO_AHEAD 8

/* Asks for the lines of floats [p, p + n). */
static inline void fs_prefetch_floats(const float* p, size_t n) {
  const char* c = (const char*)p;
  for (size_t o = 0; o < n * sizeof(float); o += 64) __builtin_prefetch(c + o, 0, 3);
  __builtin_prefetch(c + n * sizeof(float) - 1, 0, 3);
}

static void fs_step_item(const fs_step* st, size_t t, float* const* tensors, int thread,
                         fs_item_state* held) {
  const float* x = tensors[st->src];
  float* y = tensors[st->dst];
  const float* r = st->res >= 0 ? tensors[st->res] : NULL;
  float* scratch = st->scratch + (size_t)thread * st->scratch_floats;
  const fs_strides xs = st->src_s, rs = st->res_s, ys = st->dst_s;
  switch (st->kind) {
    case FS_STEP_SPMM: {
      const fs_spmm_args* a = &st->spmm;
      const size_t g = t % a->groups, rest = t / a->groups;
      const size_t img = rest / a->pieces, m0 = (rest % a->pieces) * a->chunk;
      const int64_t b0 = a->bounds[g], b1 = a->bounds[g + 1];
      if (b1 <= b0) return;
      const size_t r0 = (size_t)a->row_start[b0];
      fs_spmm_rows(a, b0, b1, m0, a->hw - m0 < a->chunk ? a->hw - m0 : a->chunk,
                   x + img * xs.image, r != NULL ? r + img * rs.image + r0 * rs.channel + m0 : NULL,
                   rs.channel * sizeof(float), y + img * ys.image + r0 * ys.channel + m0,
                   ys.channel * sizeof(float));
      return;
    }
    case FS_STEP_SPMM_KSPLIT: {
      const fs_spmm_args* a = &st->spmm;
      const size_t img = t / 2, half = t % 2;
      float* dst = half == 0 ? y + img * ys.image : a->partial + img * a->cout * a->plane;
      const size_t stride = (half == 0 ? ys.channel : a->plane) * sizeof(float);
      fs_spmm_parts(a, a->bounds[0], a->bounds[a->groups], half * a->nparts / 2,
                    (half + 1) * a->nparts / 2, x + img * xs.image, a->hw,
                    half == 0 ? a->bias : NULL, NULL, 0, dst, stride, -INFINITY, INFINITY);
      return;
    }
    case FS_STEP_SPMM_DWCONV2D: {
      /* One group of the 1x1's output channels, for the input rows one band of output rows
       * uses, into this thread's planes in the shared work buffer, where the depthwise conv
       * reads them at once: the expanded tensor never makes the round trip
       * through L3 or memory. Bands split an image between threads at the rows where the
       * steps before and after split it, so each thread reads the input it wrote itself. */
      const fs_spmm_args* a = &st->spmm;
      const size_t g = t % a->groups, rest = t / a->groups, ps = fs_plane_floats(a->hw);
      const size_t img = rest / st->dw.nbands;
      const int64_t* band = st->dw.bands + 4 * (rest % st->dw.nbands);
      const int64_t b0 = a->bounds[g], b1 = a->bounds[g + 1];
      if (b1 <= b0) return;
      float* planes = st->work + (size_t)thread * st->work_floats;
      /* An input in row pieces: the band's rows from each piece they fall in (a halo row
       * from the piece before or after). */
      for (size_t m = (size_t)band[2]; m < (size_t)band[3];) {
        size_t m1 = (size_t)band[3];
        if (xs.piece != 0 && (m / xs.piece + 1) * xs.piece < m1) m1 = (m / xs.piece + 1) * xs.piece;
        fs_spmm_rows(a, b0, b1, m, m1 - m, x + img * xs.image + fs_piece_shift(xs, m), NULL, 0,
                     planes + m, ps * sizeof(float));
        m = m1;
      }
      /* An output in row pieces: the bands are its pieces (StepList.add_spmm_dwconv2d). */
      float* out = y + img * ys.image + fs_piece_shift(ys, (size_t)band[0]);
      const size_t r0 = (size_t)a->row_start[b0], r1 = (size_t)a->row_start[b1];
      for (size_t ch = r0; ch < r1; ch++) {
        fs_dwconv2d_plane(&st->dw, ch, planes + (ch - r0) * ps, NULL, NULL, scratch,
                          out + ch * ys.channel, (size_t)band[0], (size_t)band[1]);
      }
      return;
    }
    case FS_STEP_DWCONV2D_SPMM: {
      /* One band of output rows of the depthwise conv, every channel, into this thread's
       * work planes, where the 1x1 then reads them at once: the depthwise output never makes
       * the round trip through L3 or memory. The kernel reads the input plane (or row piece,
       * with its neighbours' halo rows) in place and writes positions [b0, b1) of an output
       * plane whose origin lies b0 floats before the band's plane, inside the `gap` left for
       * it. */
      const fs_dwconv2d_args* d = &st->dw;
      const fs_spmm_args* a = &st->spmm;
      const size_t img = t / d->nbands, w = d->iw, h = d->halo_rows;
      const int64_t* band = d->bands + 4 * (t % d->nbands);
      const size_t m0 = (size_t)band[0], m1 = (size_t)band[1], n = d->ih * w;
      const size_t piece = xs.piece != 0 ? xs.piece : n, q = m0 / piece;
      const size_t b0 = m0 - q * piece, b1 = m1 - q * piece, ps = fs_plane_floats(m1 - m0);
      const float* image = x + img * xs.image;
      const float* plane = image + fs_piece_shift(xs, m0) + q * piece;
      const size_t prev = q * piece - h * w; /* (used only when q > 0) */
      const float* above = q > 0 ? image + fs_piece_shift(xs, prev) + prev : NULL;
      const size_t next = (q + 1) * piece;
      const float* below = next < n ? image + fs_piece_shift(xs, next) + next : NULL;
      fs_dw_band_spmm(d, a, piece / w, plane, xs.channel, above, below, scratch,
                      st->work + (size_t)thread * st->work_floats + d->gap, ps, b0, b1,
                      r != NULL ? r + img * rs.image + fs_piece_shift(rs, m0) + m0 : NULL,
                      rs.channel * sizeof(float), y + img * ys.image + fs_piece_shift(ys, m0) + m0,
                      ys.channel * sizeof(float));
      return;
    }
    case FS_STEP_CONV2D_DWCONV2D_SPMM: {
      /* FS_STEP_DWCONV2D_SPMM on one band, on the conv's output rows that its taps read,
       * which the conv first writes into this thread's work. The rows the thread's band before
       * also read (the band above or below on the same image) are kept, moved to where this
       * band's rows sit. Neither the conv's output nor the depthwise conv's makes the round
       * trip through L3 or memory. The conv and the depthwise kernel address their planes by
       * absolute rows, from origins up to `gap` floats before the work's planes (never
       * touched). Scratch: the depthwise kernel's, then the conv's. */
      const fs_conv2d_args* c = &st->conv;
      const fs_dwconv2d_args* d = &st->dw;
      const fs_spmm_args* a = &st->spmm;
      const size_t img = t / d->nbands, w = d->iw;
      const size_t cs = c->band * w, ps = fs_plane_floats((size_t)(d->bands[1] - d->bands[0]));
      float* rows = st->work + (size_t)thread * st->work_floats + d->gap;
      const int64_t* band = d->bands + 4 * (t % d->nbands);
      const size_t m0 = (size_t)band[0], m1 = (size_t)band[1];
      const size_t na = (size_t)band[2] / w, nb = (size_t)band[3] / w;
      size_t from = na, to = nb; /* the conv rows still to compute */
      if (held->img == img && held->ra <= na && na < held->rb) { /* going down: keep the top */
        if (na > held->ra) {
          for (size_t ch = 0; ch < c->cout; ch++) {
            memmove(rows + ch * cs, rows + ch * cs + (na - held->ra) * w,
                    (held->rb - na) * w * sizeof(float));
          }
        }
        from = held->rb;
      } else if (held->img == img && na < held->ra && held->ra < nb && nb <= held->rb) {
        for (size_t ch = 0; ch < c->cout; ch++) { /* going up: keep the bottom */
          memmove(rows + ch * cs + (held->ra - na) * w, rows + ch * cs,
                  (nb - held->ra) * w * sizeof(float));
        }
        to = held->ra;
      }
      if (from < to) {
        c->fn(c->cin, c->ih, c->iw, c->oh, c->ow, c->pad_top, c->pad_left, from, to,
              x + img * xs.image, c->channel_stride, c->row_stride, c->pixel_stride, c->cout,
              c->weights, c->bias, scratch + d->scratch_floats, rows - na * w, cs * sizeof(float),
              w * sizeof(float), c->lo, c->hi);
      }
      held->img = img;
      held->ra = na;
      held->rb = nb;
      fs_dw_band_spmm(d, a, d->ih, rows - na * w, cs, NULL, NULL, scratch, rows + c->cout * cs, ps,
                      m0, m1, r != NULL ? r + img * rs.image + m0 : NULL,
                      rs.channel * sizeof(float), y + img * ys.image + m0,
                      ys.channel * sizeof(float));
      return;
    }
    case FS_STEP_DWCONV2D: {
      const fs_dwconv2d_args* a = &st->dw;
      const size_t n = a->oh * a->ow;
      if (a->pieces == 0) {
        size_t img = 0, ch = t; /* one image: no division per plane */
        if (t >= a->c) {
          img = t / a->c;
          ch = t - img * a->c;
        }
        const float* plane = x + img * xs.image + ch * xs.channel;
        const float *above = NULL, *below = NULL;
        if (a->linked > 0) { /* img is a row piece: halo rows from the pieces around it */
          assert(a->halo_rows <= a->ih);
          const size_t halo = a->halo_rows * a->iw;
          if (img % a->linked != 0) above = plane - xs.image + (a->ih - a->halo_rows) * a->iw;
          if (img % a->linked + 1 != a->linked) below = plane + xs.image;
          /* The halo rows of the plane FS_HALO_AHEAD channels on, which the other core
           * wrote: asked for now, they arrive while this plane and the next ones run. */
          if (ch + FS_HALO_AHEAD < a->c) {
            const size_t on = FS_HALO_AHEAD * xs.channel;
            if (above != NULL) fs_prefetch_floats(above + on, halo);
            if (below != NULL) fs_prefetch_floats(below + on, halo);
          }
        }
        fs_dwconv2d_plane(a, ch, plane, above, below, scratch,
                          y + img * ys.image + ch * ys.channel, 0, n);
        return;
      }
      const size_t img = t / a->pieces, begin = (t % a->pieces) * a->chunk;
      const size_t end = n - begin < a->chunk ? n : begin + a->chunk;
      for (size_t ch = 0; ch < a->c; ch++) {
        fs_dwconv2d_plane(a, ch, x + img * xs.image + ch * xs.channel, NULL, NULL, scratch,
                          y + img * ys.image + ch * ys.channel, begin, end);
      }
      return;
    }
    case FS_STEP_CONV2D: {
      const fs_conv2d_args* a = &st->conv;
      const size_t img = t / a->pieces, oy0 = (t % a->pieces) * a->band;
      const size_t oy1 = oy0 + a->band < a->oh ? oy0 + a->band : a->oh;
      a->fn(a->cin, a->ih, a->iw, a->oh, a->ow, a->pad_top, a->pad_left, oy0, oy1,
            x + img * xs.image, a->channel_stride, a->row_stride, a->pixel_stride, a->cout,
            a->weights, a->bias, scratch, y + img * ys.image + fs_piece_shift(ys, oy0 * a->ow),
            ys.channel * sizeof(float), a->ow * sizeof(float), a->lo, a->hi);
      return;
    }
    case FS_STEP_GAVGPOOL: {
      const fs_gavgpool_args* a = &st->pool;
      const size_t img = t / a->chunks, c0 = (t % a->chunks) * a->chunk;
      a->fn(a->c - c0 < a->chunk ? a->c - c0 : a->chunk, a->hw,
            x + img * xs.image + c0 * xs.channel, xs.channel * sizeof(float),
            1.0f / (float)a->hw, y + img * ys.image + c0);
      return;
    }
    case FS_STEP_VADD: {
      const fs_vadd_args* a = &st->vadd;
      const size_t i0 = t * a->chunk, n = a->n - i0 < a->chunk ? a->n - i0 : a->chunk;
      a->fn(n, x + i0, r + i0, y + i0, a->lo, a->hi);
      return;
    }
    default:
      return;
  }
}

/* Second phase of FS_STEP_SPMM_KSPLIT: item t = (image, piece of rchunk positions). */
static void fs_step_reduce(const fs_step* st, size_t t, float* const* tensors) {
  const fs_spmm_args* a = &st->spmm;
  const size_t img = t / a->rpieces, m0 = (t % a->rpieces) * a->rchunk;
  const size_t n = a->hw - m0 < a->rchunk ? a->hw - m0 : a->rchunk;
  float* y = tensors[st->dst] + img * st->dst_s.image + m0;
  const float* part = a->partial + img * a->cout * a->plane + m0;
  const float* r = st->res >= 0 ? tensors[st->res] + img * st->res_s.image + m0 : NULL;
  for (size_t c = 0; c < a->cout; c++) {
    float* yc = y + c * st->dst_s.channel;
    if (r == NULL) {
      a->vadd(n, yc, part + c * a->plane, yc, a->lo, a->hi);
    } else {
      a->vadd(n, yc, part + c * a->plane, yc, -INFINITY, INFINITY);
      a->vadd(n, yc, r + c * st->res_s.channel, yc, a->lo, a->hi);
    }
  }
}

/* The items of a step with claims (fs_step.claims) that this thread of a `team` takes;
 * returns how many. */
static size_t fs_claim_items(const fs_step* st, float* const* tensors, int thread, int team,
                             fs_item_state* held) {
  const size_t n = st->items, q = n / (size_t)team, extra = n % (size_t)team;
  const size_t first = (size_t)(thread & ~1), last = (size_t)(thread | 1) < (size_t)team
                                                         ? (size_t)(thread | 1) : first;
  /* The static schedule's ranges of the pair's threads, joined: [lo, hi). */
  const size_t lo = first * q + (first < extra ? first : extra);
  const size_t hi = (last + 1) * q + (last + 1 < extra ? last + 1 : extra);
  int64_t* counter = st->claims + 8 * (size_t)(thread / 2);
  size_t i = 0;
  for (; i < hi - lo; i++) {
    if (__atomic_fetch_add(counter, 1, __ATOMIC_RELAXED) >= (int64_t)(hi - lo)) break;
    fs_step_item(st, (thread & 1) ? hi - 1 - i : lo + i, tensors, thread, held);
  }
  return i;
}

/* Runs steps [0, count) on `threads` threads over the tensor table. If `times` is not NULL,
 * times[0] is the start and, if `each`, times[s + 1] the end of step s (after its barrier),
 * else times[1] the end of the last step, in seconds. (A clock read costs up to 0.5 us in a
 * VM without a TSC clock source: reading it per step adds ~25 us per MobileNet call.) If
 * `done` is not NULL, done[t * count + s] is when thread t < done_threads finished its items
 * of step s, before the barrier: the step's imbalance and each thread's share, for
 * profiling; and if `ran` is not NULL, ran[t * count + s] how many items it ran. */
static void fs_run_steps(const fs_step* steps, size_t count, float* const* tensors, int threads,
                         double* times, int each, double* done, int64_t* ran, int done_threads) {
  if (times != NULL) times[0] = fs_now();
  for (size_t s = 0; s < count; s++) {
    if (steps[s].claims != NULL) memset(steps[s].claims, 0, steps[s].nclaims * 64);
  }
#ifndef _OPENMP
  (void)threads;
#endif
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    const int thread = fs_thread_id();
#ifdef _OPENMP
    const int team = omp_get_num_threads();
#else
    const int team = 1;
#endif
    for (size_t s = 0; s < count; s++) {
      const fs_step* st = &steps[s];
      const ptrdiff_t items = (ptrdiff_t)st->items;
      fs_item_state held = {0, 0, 0};
      size_t mine = 0;
      if (st->claims != NULL && team > 1) {
        mine = fs_claim_items(st, tensors, thread, team, &held);
      } else {
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (ptrdiff_t t = 0; t < items; t++) {
          fs_step_item(st, (size_t)t, tensors, thread, &held);
          mine++;
        }
      }
      if (st->kind == FS_STEP_SPMM_KSPLIT) { /* the same branch on every thread */
#ifdef _OPENMP
#pragma omp barrier
#endif
        const ptrdiff_t pieces = items / 2 * (ptrdiff_t)st->spmm.rpieces;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (ptrdiff_t t = 0; t < pieces; t++) fs_step_reduce(st, (size_t)t, tensors);
      }
      if (done != NULL && thread < done_threads) done[(size_t)thread * count + s] = fs_now();
      if (ran != NULL && thread < done_threads) ran[(size_t)thread * count + s] = (int64_t)mine;
#ifdef _OPENMP
#pragma omp barrier
#endif
      if (times != NULL && thread == 0 && (each || s + 1 == count)) times[each ? s + 1 : 1] = fs_now();
    }
  }
  if (times != NULL && count == 0) times[1] = times[0];
}

/* Images side by side: `lists` step lists, each built for one image and one thread, with its
 * own tensors and scratch. List l runs images [l * per, (l + 1) * per) one after another,
 * each image's input `x_image` floats after the one before and its output `y_image` floats;
 * `tables[l]` is list l's tensor table, whose entries 0 and ntensors - 1 this overwrites.
 * Every image thus gets the arithmetic of a batch-1 call, and its activations stay in its own
 * core's L2 from layer to layer. A team smaller than asked for takes several lists per thread.
 * If `times` is not NULL, times[0] and times[1] are the start and the end, in seconds. */
static void fs_run_images(const fs_step* const* steps, const size_t* counts, float** const* tables,
                          size_t ntensors, int lists, const float* x, size_t x_image, float* y,
                          size_t y_image, size_t per, double* times) {
  if (times != NULL) times[0] = fs_now();
#ifdef _OPENMP
#pragma omp parallel num_threads(lists) if (lists > 1)
#endif
  {
#ifdef _OPENMP
    const int team = omp_get_num_threads();
#else
    const int team = 1;
#endif
    for (int l = fs_thread_id(); l < lists; l += team) {
      float** table = tables[l];
      for (size_t i = (size_t)l * per; i < (size_t)(l + 1) * per; i++) {
        table[0] = (float*)(x + i * x_image);
        table[ntensors - 1] = y + i * y_image;
        fs_run_steps(steps[l], counts[l], table, 1, NULL, 0, NULL, NULL, 0);
      }
    }
  }
  if (times != NULL) times[1] = fs_now();
}

#endif /* FS_STEPS_H */
