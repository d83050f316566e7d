/* Depthwise KxK convolution of one CHW channel plane (K in {3, 5}, stride 1 or 2), written
 * once for every ISA over the vector vocabulary of vec_<isa>.h (see spmm_impl.h for the list;
 * this file also uses fs_vdeinterleave, and fs_vsub, fs_vlt, fs_vmaskz, fs_vmask_load for the
 * flat paths, fs_vload_range for the flat and rows paths, fs_vkeep if defined, fs_valign_lanes
 * if defined (the flat path's taps on planes 7, 14 and 28 wide), fs_vsplit_quarters and
 * fs_vquarters_* where FS_DW_S2_DIRECT is set, fs_vsplit_row_pair where FS_DW_S2_PAIRS is,
 * and fs_vshift_in_up/down where FS_DW_FLAT_CARRY is).
 *
 * Scheme: output rows are produced top to bottom. The K input rows an output row needs are
 * copied, each exactly once, into a ring of K + 2 padded scratch rows (slot = input row mod (K + 2)):
 * the copy puts the row at column pad_left of a zeroed row, so horizontal padding and
 * right-edge reads need no masks in the inner loop; for stride 2 the copy also splits the
 * padded row into its even and odd columns, so that every tap of a stride-2 output vector
 * is ONE contiguous load (padded column 2*ox + kx lives at half[kx & 1][ox + kx/2]). Rows
 * above or below the image read a zero row. Each output vector keeps one accumulator per
 * kernel row (K independent FMA chains) and two output vectors are computed side by side.
 *
 * "Same" padding at stride 1 on contiguous planes, and at stride 2 on even sizes, takes a flat
 * path instead (see fs_dw_flat_vector below): vectors run along the whole output plane, not
 * along rows, which on the narrow planes of a network's later layers saves most of the lanes
 * and most per-row work. Stride-1 planes at least FS_DW_ROWS_MIN_W wide go by blocks of
 * output rows (fs_dw_rows_s1), each tap vector loaded once for the block.
 *
 * Where vec_<isa>.h sets FS_DW_S2_DIRECT (AVX2, AVX-512), every 3x3 stride-2 shape with
 * padding 0 or 1 skips the ring and the quarter planes: blocks of output rows read their
 * input rows in place and split them by column parity in registers (fs_dw_s2_rows); with
 * FS_DW_S2_PAIRS (AVX-512), outputs at most 8 wide put two output rows in one vector
 * (fs_dw_s2_pairs).
 *
 * Out-of-bounds contract: the input plane is read only inside ih x iw (the last partial
 * vector of a row, or the plane's first and last vectors on the flat path, are masked loads),
 * output is written only inside oh x ow (the last partial vector is a masked store);
 * everything else happens in the caller's zero-filled scratch
 * (fs_dwconv2d_scratch_floats(), fs_kernels.h).
 */
#ifndef FS_DWCONV_IMPL_H
#define FS_DWCONV_IMPL_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fs_kernels.h"

#ifndef FS_INLINE
#define FS_INLINE static inline __attribute__((always_inline))
#endif

/* dst[0, n) = src[0, n). The last partial vector is a masked load stored in full: the lanes
 * past n are zeros, which is what the padded row holds there (the row has the slack). */
FS_INLINE void fs_chw_copy_row(float* dst, const float* src, size_t n) {
  size_t i = 0;
  for (; i + FS_VLEN <= n; i += FS_VLEN) fs_vstore(dst + i, fs_vload(src + i));
  if (i < n) fs_vstore(dst + i, fs_vload_tail(src + i, fs_tail_make(n - i)));
}

/* Padded column j = pad_left + i of x (i < n) goes to even[j / 2] or odd[j / 2] by the parity
 * of j; x's even elements all land in one half, its odd elements in the other. */
FS_INLINE void fs_chw_split_row(float* even, float* odd, const float* src, size_t n,
                                size_t pad_left) {
  float* to_e = (pad_left & 1) ? odd + (pad_left - 1) / 2 : even + pad_left / 2;
  float* to_o = (pad_left & 1) ? even + (pad_left + 1) / 2 : odd + pad_left / 2;
  size_t i = 0;
  fs_vec e, o;
  for (; i + 2 * FS_VLEN <= n; i += 2 * FS_VLEN) {
    fs_vdeinterleave(fs_vload(src + i), fs_vload(src + i + FS_VLEN), &e, &o);
    fs_vstore(to_e + i / 2, e);
    fs_vstore(to_o + i / 2, o);
  }
  if (i < n) {
    const size_t rem = n - i;
    const fs_vec a = rem >= FS_VLEN ? fs_vload(src + i) : fs_vload_tail(src + i, fs_tail_make(rem));
    const fs_vec b = rem > FS_VLEN ? fs_vload_tail(src + i + FS_VLEN, fs_tail_make(rem - FS_VLEN))
                                   : fs_vzero();
    fs_vdeinterleave(a, b, &e, &o);
    fs_vstore(to_e + i / 2, e); /* lanes past the data are zeros: the padding */
    fs_vstore(to_o + i / 2, o);
  }
}

/* Copy of one input row into a scratch row of `rowlen` floats, padded or split for stride s. */
FS_INLINE void fs_chw_load_row(size_t s, float* dst, size_t rowlen, const float* src, size_t n,
                               size_t pad_left) {
  if (s == 1) {
    fs_chw_copy_row(dst + pad_left, src, n);
  } else {
    fs_chw_split_row(dst, dst + rowlen / 2, src, n, pad_left);
  }
}

/* Address of padded column ox*s + kx of a scratch row (for s = 2: in its even or odd half). */
FS_INLINE const float* fs_chw_tap(size_t s, const float* row, size_t half, size_t ox, size_t kx) {
  return s == 1 ? row + ox + kx : row + (kx & 1) * half + ox + kx / 2;
}

/* One output vector at column ox: K chains (one per kernel row), summed at the end. */
FS_INLINE fs_vec fs_dw_vector(size_t k, size_t s, const float* const* rows, size_t half,
                              size_t ox, const fs_vec* wv, fs_vec vbias) {
  fs_vec acc[5];
#pragma GCC unroll 5
  for (size_t ky = 0; ky < k; ky++) {
    acc[ky] = ky == 0 ? vbias : fs_vzero();
#pragma GCC unroll 5
    for (size_t kx = 0; kx < k; kx++) {
      acc[ky] = fs_vfma(wv[ky * k + kx], fs_vload(fs_chw_tap(s, rows[ky], half, ox, kx)), acc[ky]);
    }
  }
  fs_vec y = fs_vadd(acc[0], acc[1]);
#pragma GCC unroll 5
  for (size_t ky = 2; ky < k; ky++) y = fs_vadd(y, acc[ky]);
  return y;
}

/* Stages input row iy (if inside the image and not yet in the ring) into slot iy % nslots. */
FS_INLINE void fs_chw_stage_row(size_t s, ptrdiff_t iy, size_t ih, size_t iw, size_t pad_left,
                                const char* plane, size_t row_stride, float* scratch,
                                size_t rowlen, size_t nslots, ptrdiff_t* tags) {
  if (iy < 0 || iy >= (ptrdiff_t)ih) return;
  const size_t slot = (size_t)iy % nslots;
  if (tags[slot] != iy) {
    fs_chw_load_row(s, scratch + slot * rowlen, rowlen,
                    (const float*)(plane + (size_t)iy * row_stride), iw, pad_left);
    tags[slot] = iy;
  }
}

/* Points rows[0..k) at the scratch rows of input rows oy*s - pad_top + ky, or at the zero
 * row (after the nslots = k + 2 ring slots) outside the image. The rows of output row
 * oy + 1 (if it is before oy_end, the end of the call's rows) are staged now too: reading a row right after storing it with a misaligned offset would
 * stall on store forwarding, which dominates small images. k + s <= k + 2 consecutive rows
 * get distinct slots. */
FS_INLINE void fs_chw_ring_rows(size_t k, size_t s, size_t oy, size_t oy_end, size_t pad_top,
                                size_t ih, size_t iw, size_t pad_left, const char* plane,
                                size_t row_stride, float* scratch, size_t rowlen,
                                ptrdiff_t* tags, const float** rows) {
  const size_t nslots = k + 2;
  const float* zero = scratch + nslots * rowlen;
  const ptrdiff_t top = (ptrdiff_t)(oy * s) - (ptrdiff_t)pad_top;
  const ptrdiff_t last = top + (ptrdiff_t)(k - 1 + (oy + 1 < oy_end ? s : 0));
  for (ptrdiff_t iy = top; iy <= last; iy++) {
    fs_chw_stage_row(s, iy, ih, iw, pad_left, plane, row_stride, scratch, rowlen, nslots, tags);
  }
#pragma GCC unroll 5
  for (size_t ky = 0; ky < k; ky++) {
    const ptrdiff_t iy = top + (ptrdiff_t)ky;
    rows[ky] = (iy < 0 || iy >= (ptrdiff_t)ih) ? zero : scratch + ((size_t)iy % nslots) * rowlen;
  }
}

/* Flat paths ("same" padding). Stride 1: the plane is one run of ih * iw floats and output
 * i = y * iw + x takes tap (ky, kx) from flat index i + (ky - k/2) * iw + (kx - k/2), so no
 * lane is wasted on narrow rows and there is no per-row work. Stride 2 (even sizes): the
 * input is first split into four oh x ow quarter planes by row and column parity; input row
 * 2y + r is row y + floor(r/2) of the quarters of parity r & 1, so tap (ky, kx) reads quarter
 * (ry & 1, rx & 1) at flat index i + floor(ry/2) * ow + floor(rx/2), ry = ky - pad,
 * rx = kx - pad: the stride-1 scheme again, on planes of the output's width. With pad k/2
 * (PyTorch's) or k/2 - 1 (TensorFlow's "same" on even sizes) every shift is -1, 0 or 1.
 * A tap whose column shift dx moves it outside the row reads the neighbouring row's element
 * instead: each kx has its own accumulator (k independent FMA chains), whose wrapped lanes are
 * zeroed by a select (which also drops a NaN read there) before the sum. On stride 1,
 * vectors whose taps reach above or below the plane load only the lanes inside it
 * (fs_vload_range); the quarter planes have zero margins instead. */
FS_INLINE ptrdiff_t fs_dw_flat_shift(size_t s, ptrdiff_t r) { return s == 1 ? r : (r - (r & 1)) / 2; }

/* Which lanes of the vector whose lanes sit in columns `col` (rows of w) keep tap column kx:
 * those whose column shift dx keeps them inside their row. m[kx] for dx != 0 only. */
FS_INLINE void fs_dw_flat_masks(size_t k, size_t s, size_t pad, size_t w, fs_vec col,
                                fs_vmask* m) {
#pragma GCC unroll 5
  for (size_t kx = 0; kx < k; kx++) {
    const ptrdiff_t dx = fs_dw_flat_shift(s, (ptrdiff_t)kx - (ptrdiff_t)pad);
    if (dx < 0) { /* column x + dx >= 0 */
      m[kx] = fs_vlt(fs_vset1((float)(-dx - 1)), col);
    } else if (dx > 0) { /* column x + dx < w */
      m[kx] = fs_vlt(col, fs_vset1((float)((ptrdiff_t)w - dx)));
    }
  }
}

/* Lanes [lo, hi) of the vector at p + at are those inside p[0, n); fs_vload_inside loads
 * only them (zeros elsewhere, nothing read outside): taps that reach past a plane's or a
 * row's ends. */
typedef struct fs_lanes {
  size_t lo, hi;
} fs_lanes;

FS_INLINE fs_lanes fs_lanes_inside(ptrdiff_t at, size_t n) {
  const ptrdiff_t vl = FS_VLEN, lo = at < 0 ? (-at < vl ? -at : vl) : 0;
  const ptrdiff_t end = (ptrdiff_t)n - at, hi = end < lo ? lo : (end < vl ? end : vl);
  const fs_lanes r = {(size_t)lo, (size_t)hi};
  return r;
}

FS_INLINE fs_vec fs_vload_inside(const float* p, ptrdiff_t at, size_t n) {
  const fs_lanes l = fs_lanes_inside(at, n);
  return fs_vload_range(p + at, l.lo, l.hi);
}

#ifdef fs_valign_lanes
/* Lanes r.. of lo, then lanes ..r-1 of hi (0 <= r < FS_VLEN, a constant after inlining; the
 * shift's immediate must be a literal). */
FS_INLINE fs_vec fs_vshift(fs_vec hi, fs_vec lo, ptrdiff_t r) {
  switch (r) {
    case 0: return lo;
    case 1: return fs_valign_lanes(hi, lo, 1);
    case 2: return fs_valign_lanes(hi, lo, 2);
    case 3: return fs_valign_lanes(hi, lo, 3);
    case 4: return fs_valign_lanes(hi, lo, 4);
    case 5: return fs_valign_lanes(hi, lo, 5);
    case 6: return fs_valign_lanes(hi, lo, 6);
    case 7: return fs_valign_lanes(hi, lo, 7);
    case 8: return fs_valign_lanes(hi, lo, 8);
    case 9: return fs_valign_lanes(hi, lo, 9);
    case 10: return fs_valign_lanes(hi, lo, 10);
    case 11: return fs_valign_lanes(hi, lo, 11);
    case 12: return fs_valign_lanes(hi, lo, 12);
    case 13: return fs_valign_lanes(hi, lo, 13);
    case 14: return fs_valign_lanes(hi, lo, 14);
    default: return fs_valign_lanes(hi, lo, 15);
  }
}

/* The vector at p + off (p aligned, off a constant after inlining) from the two aligned
 * vectors around it and a lane shift: no load across cache lines. */
FS_INLINE fs_vec fs_vload_shifted(const float* p, ptrdiff_t off) {
  const ptrdiff_t q = off >= 0 ? off / FS_VLEN : -((-off + FS_VLEN - 1) / FS_VLEN);
  const float* b = p + q * FS_VLEN; /* loads the compiler merges */
  return fs_vshift(fs_vload(b + FS_VLEN), fs_vload(b), off - q * FS_VLEN);
}
#endif

/* One output vector of the flat paths. `wc` != 0 (stride 1, not `edge`, w == wc a constant,
 * the plane aligned and zero-margined): each tap is a lane shift of two aligned vectors
 * instead of a load across cache lines (unaligned 512-bit loads ran about one per cycle here,
 * and those that straddle two recent stores of the staged copy wait for both to retire; the
 * shifts run beside the FMAs). On quarter planes (stride 2) it did not help: 85 ns per 14x14
 * -> 7x7 plane either way, against 62 for the direct rows path (fs_dw_s2_rows). */
FS_INLINE fs_vec fs_dw_flat_vector(size_t k, size_t s, size_t pad, int edge, size_t wc,
                                   const float* const* src, size_t n, size_t i, size_t w,
                                   const fs_vec* wv, fs_vec vbias, const fs_vmask* m) {
  const ptrdiff_t p = (ptrdiff_t)pad, c = (ptrdiff_t)(k / 2); /* tap column c has dx = 0 */
  fs_vec acc[5];
  (void)wc; /* read only where vec_<isa>.h has fs_valign_lanes */
#pragma GCC unroll 5
  for (size_t kx = 0; kx < k; kx++) acc[kx] = (ptrdiff_t)kx == c ? vbias : fs_vzero();
#pragma GCC unroll 5
  for (size_t ky = 0; ky < k; ky++) {
    const ptrdiff_t ry = (ptrdiff_t)ky - p, dy = fs_dw_flat_shift(s, ry);
#pragma GCC unroll 5
    for (size_t kx = 0; kx < k; kx++) {
      const ptrdiff_t rx = (ptrdiff_t)kx - p, dx = fs_dw_flat_shift(s, rx);
      const float* plane = s == 1 ? src[0] : src[(ry & 1) * 2 + (rx & 1)];
      const ptrdiff_t at = (ptrdiff_t)i + dy * (ptrdiff_t)w + dx;
      fs_vec x;
#ifdef fs_valign_lanes
      if (wc != 0) {
        x = fs_vload_shifted(plane + i, dy * (ptrdiff_t)wc + dx);
      } else
#endif
      if (!edge) {
        x = fs_vload(plane + at);
      } else {
        x = fs_vload_inside(plane, at, n);
      }
      acc[kx] = fs_vfma(wv[ky * k + kx], x, acc[kx]);
    }
  }
  fs_vec y = acc[c];
#pragma GCC unroll 5
  for (size_t kx = 0; kx < k; kx++) {
    if ((ptrdiff_t)kx == c) continue;
    if (fs_dw_flat_shift(s, (ptrdiff_t)kx - p) != 0) {
      y = fs_vadd(y, fs_vmaskz(m[kx], acc[kx]));
    } else {
      y = fs_vadd(y, acc[kx]);
    }
  }
  return y;
}

FS_INLINE void fs_dw_flat_store(float* output, size_t n, size_t i, fs_vec y) {
  if (n - i >= FS_VLEN) {
    fs_vstore(output + i, y);
  } else {
    fs_vstore_tail(output + i, y, fs_tail_make(n - i));
  }
}

/* The column of each lane of the vector at flat index `start` in rows of w, (start + l) % w:
 * start % w + l, minus w for every row boundary the lanes cross. (Vector arithmetic: a table
 * filled here would be read back before its stores could forward.) *step = FS_VLEN % w, the
 * shift from one vector to the next. */
FS_INLINE fs_vec fs_dw_flat_columns(size_t w, size_t start, size_t* step) {
  static const float ramp[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const fs_vec vramp = fs_vadd(fs_vload(ramp), fs_vset1((float)(start % w)));
  fs_vec vcol = vramp;
  for (size_t m = w; m < start % w + FS_VLEN; m += w) {
    vcol = fs_vsub(vcol, fs_vmaskz(fs_vlt(fs_vset1((float)m - 0.5f), vramp), fs_vset1((float)w)));
  }
  *step = FS_VLEN % w;
  return vcol;
}

/* The columns one vector further: + step (< w), less w where they reach w. */
FS_INLINE fs_vec fs_dw_flat_next(fs_vec col, fs_vec vstep, fs_vec vlast, fs_vec vw) {
  col = fs_vadd(col, vstep);
  return fs_vsub(col, fs_vmaskz(fs_vlt(vlast, col), vw)); /* both terms were < w */
}

/* The lane masks repeat every w / gcd(w, FS_VLEN) vectors (7 for rows of 7, 14, 28, 56 or 112
 * floats on AVX-512). For periods up to FS_DW_MASK_PERIOD_MAX, one period of them lives in
 * the kernel's scratch (FS_DW_MASK_TABLE_FLOATS), computed by the first plane of a shape and
 * then only loaded: tracking each vector's columns and comparing them took ~10 of the ~30
 * vector instructions per output vector. Entry t holds the k masks (FS_DW_MASK_BYTES apart)
 * of the vectors at flat indices = t * FS_VLEN (mod period * FS_VLEN), after a header whose
 * first word names the (w, pad, k, s) they were made for (0, as the zero-filled scratch
 * starts: none yet); its second is the stride-1 copy's halo flag (fs_dwconv2d_flat). Returns
 * the table, or NULL for a longer period. */
_Static_assert(sizeof(fs_vmask) <= FS_DW_MASK_BYTES, "a mask fits its table slot");
FS_INLINE const unsigned char* fs_dw_mask_table(size_t k, size_t s, size_t pad, size_t w,
                                                float* scratch, size_t* period) {
  /* gcd(w, FS_VLEN), FS_VLEN a power of two: w's lowest set bit, at most FS_VLEN (no
   * division: this runs once per plane, and 7x7 planes are 4 vectors). */
  const size_t g = (w & (0 - w)) < FS_VLEN ? (w & (0 - w)) : FS_VLEN;
  *period = w >> __builtin_ctzl(g); /* w / g without a division */
  if (*period > FS_DW_MASK_PERIOD_MAX) return NULL;
  unsigned char* table = (unsigned char*)(scratch + 16);
  const uint32_t want = (uint32_t)(((w * 8 + pad) * 8 + k) * 2 + s); /* never 0 */
  uint32_t key;
  memcpy(&key, scratch, sizeof key);
  if (key != want) {
    size_t step;
    fs_vec col = fs_dw_flat_columns(w, 0, &step);
    const fs_vec vw = fs_vset1((float)w), vlast = fs_vset1((float)(w - 1));
    const fs_vec vstep = fs_vset1((float)step);
    for (size_t t = 0; t < *period; t++) {
      fs_vmask m[5];
      memset(m, 0, sizeof m); /* the masks of dx = 0 are never read */
      fs_dw_flat_masks(k, s, pad, w, col, m);
      for (size_t kx = 0; kx < k; kx++) {
        memcpy(table + (t * k + kx) * FS_DW_MASK_BYTES, &m[kx], sizeof(fs_vmask));
      }
      col = fs_dw_flat_next(col, vstep, vlast, vw);
    }
    memcpy(scratch, &want, sizeof want);
  }
  return table;
}

/* Output vectors from flat index i (a multiple of FS_VLEN) up to `end` (a multiple of
 * FS_VLEN, or n), their lane masks loaded from `table` (fs_dw_mask_table) or, if it is NULL,
 * computed from their columns. */
FS_INLINE void fs_dw_flat_span(size_t k, size_t s, size_t pad, int edge, size_t wc,
                               const float* const* src, size_t n, size_t w, size_t i,
                               size_t end, const unsigned char* table, size_t period,
                               const fs_vec* wv, fs_vec vbias, float* output, fs_vec vlo,
                               fs_vec vhi) {
  fs_vmask m[5];
  if (table != NULL) {
    size_t t = i / FS_VLEN; /* mod period; 0 for a whole plane */
    if (t >= period) t %= period;
    for (; i < end; i += FS_VLEN) {
      /* Straight into registers: copied through the stack in halves, a mask's load waited
       * for the copy's stores (AVX2 ran 3-5x slower). */
#pragma GCC unroll 5
      for (size_t kx = 0; kx < k; kx++) m[kx] = fs_vmask_load(table + (t * k + kx) * FS_DW_MASK_BYTES);
      fs_dw_flat_store(output, n, i,
                       fs_vclamp(fs_dw_flat_vector(k, s, pad, edge, wc, src, n, i, w, wv, vbias, m),
                                 vlo, vhi));
      t = t + 1 == period ? 0 : t + 1;
    }
    return;
  }
  if (i >= end) return;
  size_t step;
  fs_vec col = fs_dw_flat_columns(w, i, &step);
  const fs_vec vw = fs_vset1((float)w), vlast = fs_vset1((float)(w - 1));
  const fs_vec vstep = fs_vset1((float)step);
  for (; i < end; i += FS_VLEN) {
    fs_dw_flat_masks(k, s, pad, w, col, m);
    fs_dw_flat_store(output, n, i,
                     fs_vclamp(fs_dw_flat_vector(k, s, pad, edge, wc, src, n, i, w, wv, vbias, m),
                               vlo, vhi));
    col = fs_dw_flat_next(col, vstep, vlast, vw);
  }
}

#ifdef FS_DW_FLAT_CARRY
/* Input vector at flat index i + dy * w of a staged copy: with `wc` != 0 (w == wc a constant,
 * the copy aligned), a lane shift of two aligned vectors, else a plain load. */
FS_INLINE fs_vec fs_dw_flat_row_tap(const float* x, size_t i, ptrdiff_t dy, size_t w, size_t wc) {
#ifdef fs_valign_lanes
  if (wc != 0) return fs_vload_shifted(x + i, dy * (ptrdiff_t)wc);
#endif
  (void)wc;
  return fs_vload(x + (ptrdiff_t)i + dy * (ptrdiff_t)w);
}

/* The tap-column chains kx in `which` (bit kx) at flat index i, each over the centre
 * column's inputs: a[kx] = sum over ky of w[ky][kx] x[i + (ky - 1) w] (a[1] from the bias). */
FS_INLINE void fs_dw_flat_chains3(unsigned which, const float* x, size_t i, size_t w,
                                  size_t wc, const fs_vec* wv, fs_vec vbias, fs_vec* a) {
  a[0] = fs_vzero();
  a[1] = vbias;
  a[2] = fs_vzero();
#pragma GCC unroll 3
  for (size_t ky = 0; ky < 3; ky++) {
    const fs_vec t = fs_dw_flat_row_tap(x, i, (ptrdiff_t)ky - 1, w, wc);
#pragma GCC unroll 3
    for (size_t kx = 0; kx < 3; kx++) {
      if (which >> kx & 1) a[kx] = fs_vfma(wv[ky * 3 + kx], t, a[kx]);
    }
  }
}

/* fs_dw_flat_span for a 3x3 "same" stride-1 conv on a staged copy (every load a plain one),
 * output vectors [i, end). Output j's tap column kx sums the chain of column 1 taken at j +
 * kx - 1: the chains run on the three row vectors at each index, and the left and right
 * ones move one lane (fs_vshift_in_up/down) with the lane from the vector before or after.
 * The same FMAs in the same order per output as fs_dw_flat_vector, from three row vectors
 * instead of nine taps: on AVX-512, for the constant widths 14 and 28, four lane shifts per
 * output vector instead of eight (other widths: plain loads and two shifts).
 * Reads the row taps of the vector after `end` (inside the staged copy's slack,
 * fs_dw_flat_stage_floats), of which only the lane at `end` counts: a right tap inside the
 * copied rows, or past the plane's last column (masked off). Of the vector before i only the
 * lane just before i counts, which lies inside the copied rows (or, for i = 0, is a left tap
 * of column 0 and masked off). */
FS_INLINE void fs_dw_flat_span3(size_t wc, const float* x, size_t n, size_t w, size_t i,
                                size_t end, const unsigned char* table, size_t period,
                                const fs_vec* wv, fs_vec vbias, float* output, fs_vec vlo,
                                fs_vec vhi) {
  if (i >= end) return;
  size_t t = i / FS_VLEN;
  if (t >= period) t %= period;
  fs_vec before[3], cur[3], next[3];
  if (i > 0) {
    fs_dw_flat_chains3(1, x, i - FS_VLEN, w, wc, wv, vbias, before);
  } else {
    before[0] = fs_vzero();
  }
  fs_dw_flat_chains3(7, x, i, w, wc, wv, vbias, cur);
  for (; i < end; i += FS_VLEN) {
    if (i + FS_VLEN < end) {
      fs_dw_flat_chains3(7, x, i + FS_VLEN, w, wc, wv, vbias, next);
    } else { /* past the span: only its first lane of the right chain */
      fs_dw_flat_chains3(4, x, i + FS_VLEN, w, wc, wv, vbias, next);
    }
    const fs_vmask m0 = fs_vmask_load(table + (t * 3) * FS_DW_MASK_BYTES);
    const fs_vmask m2 = fs_vmask_load(table + (t * 3 + 2) * FS_DW_MASK_BYTES);
    const fs_vec left = fs_vshift_in_up(cur[0], before[0]);
    const fs_vec right = fs_vshift_in_down(cur[2], next[2]);
    const fs_vec y = fs_vadd(fs_vadd(cur[1], fs_vmaskz(m0, left)), fs_vmaskz(m2, right));
    fs_dw_flat_store(output, n, i, fs_vclamp(y, vlo, vhi));
    before[0] = cur[0];
    cur[0] = next[0];
    cur[1] = next[1];
    cur[2] = next[2];
    t = t + 1 == period ? 0 : t + 1;
  }
}
#endif /* FS_DW_FLAT_CARRY */

/* Stores floats [0, n) of src (or zeros if src is NULL) at dst, nothing past them. Out of
 * line: only row pieces take it, and inlined it slowed the small planes' path by 5-10 %. */
static __attribute__((noinline)) void fs_dw_put_rows(float* dst, const float* src, size_t n) {
  for (size_t j = 0; j < n; j += FS_VLEN) {
    const size_t m = n - j < FS_VLEN ? n - j : FS_VLEN;
    const fs_vec v = src != NULL ? fs_vload_range(src + j, 0, m) : fs_vzero();
    if (m == FS_VLEN) {
      fs_vstore(dst + j, v);
    } else {
      fs_vstore_tail(dst + j, v, fs_tail_make(m));
    }
  }
}

/* Stride 1 by blocks of FS_DW_ROW_BLOCK output rows (vec_<isa>.h may set it; 4 otherwise).
 * The flat span loads k*k taps per output vector. Here the vectors at the same columns of
 * R output rows are computed together: each of the R + k - 1 input rows they read is loaded
 * once per tap column and feeds up to k of them, k*(R + k - 1) loads for R vectors (18
 * instead of 36 for 3x3, R = 4). A tap column that reaches past either end of the row loads
 * only the lanes inside it (zeros elsewhere): the padding. Every output's sums are the flat
 * span's, FMA for FMA (one chain per tap column kx, rows ky in order, the bias in the centre
 * column, the columns added in the same order), so its bits do not depend on which path or
 * which cut of a plane between threads computed it. */
#ifndef FS_DW_ROW_BLOCK
#define FS_DW_ROW_BLOCK 4
#endif
/* A vector the compiler must keep in a register: vec_<isa>.h defines it where GCC would
 * otherwise fold a load into every FMA that uses it, loading it again for each. */
#ifndef fs_vkeep
#define fs_vkeep(x) ((void)(x))
#endif

/* Columns [x0, x0 + FS_VLEN) (cut at w) of output rows r < R; in[j] is input row
 * (first output row) - k/2 + j, every row w floats. */
FS_INLINE void fs_dw_rows_vector(size_t k, size_t R, int edge, const float* const* in,
                                 size_t w, size_t x0, const fs_vec* wv, fs_vec vbias,
                                 float* out, fs_vec vlo, fs_vec vhi) {
  const size_t c = k / 2;
  fs_vec acc[FS_DW_ROW_BLOCK][5];
#pragma GCC unroll 8
  for (size_t r = 0; r < R; r++) {
#pragma GCC unroll 5
    for (size_t kx = 0; kx < k; kx++) acc[r][kx] = kx == c ? vbias : fs_vzero();
  }
  /* Edge vectors: each tap column's lanes inside the row, the same for every row. */
  size_t lo[5] = {0, 0, 0, 0, 0}, hi[5] = {FS_VLEN, FS_VLEN, FS_VLEN, FS_VLEN, FS_VLEN};
  if (edge) {
#pragma GCC unroll 5
    for (size_t kx = 0; kx < k; kx++) {
      /* fs_lanes_inside, written out: through it the AVX2 rows ran ~10 % slower. */
      const ptrdiff_t at = (ptrdiff_t)x0 + (ptrdiff_t)kx - (ptrdiff_t)c, vl = FS_VLEN;
      const ptrdiff_t l = at < 0 ? (-at < vl ? -at : vl) : 0, end = (ptrdiff_t)w - at;
      lo[kx] = (size_t)l;
      hi[kx] = (size_t)(end < l ? l : (end < vl ? end : vl));
    }
  }
#pragma GCC unroll 12
  for (size_t j = 0; j < R + k - 1; j++) {
#pragma GCC unroll 5
    for (size_t kx = 0; kx < k; kx++) {
      const ptrdiff_t at = (ptrdiff_t)x0 + (ptrdiff_t)kx - (ptrdiff_t)c;
      fs_vec x = edge ? fs_vload_range(in[j] + at, lo[kx], hi[kx]) : fs_vload(in[j] + at);
      fs_vkeep(x); /* loaded once for the R rows (GCC would fold it into each FMA) */
#pragma GCC unroll 8
      for (size_t r = 0; r < R; r++) {
        if (r <= j && j - r < k) acc[r][kx] = fs_vfma(wv[(j - r) * k + kx], x, acc[r][kx]);
      }
    }
  }
#pragma GCC unroll 8
  for (size_t r = 0; r < R; r++) {
    fs_vec y = acc[r][c];
#pragma GCC unroll 5
    for (size_t kx = 0; kx < k; kx++) {
      if (kx != c) y = fs_vadd(y, acc[r][kx]);
    }
    y = fs_vclamp(y, vlo, vhi);
    if (x0 + FS_VLEN <= w) {
      fs_vstore(out + r * w + x0, y);
    } else {
      fs_vstore_tail(out + r * w + x0, y, fs_tail_make(w - x0));
    }
  }
}

/* Output rows [y0, y0 + R) of a plane of ih rows of w floats. Input rows outside [0, ih) are
 * the halo rows `above` (the k/2 rows before row 0) and `below` (after row ih - 1) where
 * given, else read `zero` (w zeros), or, if it is NULL, lie around the plane in memory (a
 * staged copy). */
FS_INLINE void fs_dw_rows_block(size_t k, size_t R, size_t ih, size_t w, const float* input,
                                const float* zero, const float* above, const float* below,
                                size_t y0, const fs_vec* wv, fs_vec vbias, float* output,
                                fs_vec vlo, fs_vec vhi) {
  const float* in[FS_DW_ROW_BLOCK + 4];
#pragma GCC unroll 12
  for (size_t j = 0; j < R + k - 1; j++) {
    const ptrdiff_t iy = (ptrdiff_t)(y0 + j) - (ptrdiff_t)(k / 2);
    if (iy < 0 && above != NULL) {
      in[j] = above + (iy + (ptrdiff_t)(k / 2)) * (ptrdiff_t)w;
    } else if (iy >= (ptrdiff_t)ih && below != NULL) {
      in[j] = below + (iy - (ptrdiff_t)ih) * (ptrdiff_t)w;
    } else {
      in[j] = zero != NULL && (iy < 0 || iy >= (ptrdiff_t)ih) ? zero : input + iy * (ptrdiff_t)w;
    }
  }
  float* out = output + y0 * w;
  for (size_t x0 = 0; x0 < w; x0 += FS_VLEN) {
    if (x0 >= k / 2 && x0 + FS_VLEN + k / 2 <= w) {
      fs_dw_rows_vector(k, R, 0, in, w, x0, wv, vbias, out, vlo, vhi);
    } else {
      fs_dw_rows_vector(k, R, 1, in, w, x0, wv, vbias, out, vlo, vhi);
    }
  }
}

/* Flat output positions [begin, end) (begin a multiple of FS_VLEN) if they hold at least a
 * block of whole rows (else returns 0): those rows by blocks, the partial rows at either end
 * by flat spans (`edge`: their loads bounded to the plane). A span may overlap the rows next
 * to it (it starts and ends on whole vectors); it stores the same bits there. With halo rows
 * (`above`, `below`: a row piece taller than a staged copy), only whole rows. */
FS_INLINE int fs_dw_rows_s1(size_t k, size_t ih, size_t w, const float* input,
                            const float* zero, const float* above, const float* below, int edge,
                            const unsigned char* table, size_t period, const fs_vec* wv,
                            fs_vec vbias, float* output, size_t begin, size_t end, fs_vec vlo,
                            fs_vec vhi) {
  const size_t n = ih * w, R = FS_DW_ROW_BLOCK;
  if (w < FS_DW_ROWS_MIN_W) return 0; /* first: the small planes' path pays no division */
  const size_t y0 = (begin + w - 1) / w, y1 = end == n ? ih : end / w;
  const float* src[1] = {input};
  if (y1 < y0 + R) return 0;
  assert((above == NULL && below == NULL) || (begin % w == 0 && end % w == 0));
  if (begin < y0 * w) {
    const size_t to = (y0 * w + FS_VLEN - 1) / FS_VLEN * FS_VLEN;
    fs_dw_flat_span(k, 1, k / 2, edge, 0, src, n, w, begin, to, table, period, wv, vbias, output,
                    vlo, vhi);
  }
  for (size_t y = y0; y < y1; y += R) {
    /* The last block ends at y1, overlapping the one before if the rows do not divide. */
    fs_dw_rows_block(k, R, ih, w, input, zero, above, below, y + R <= y1 ? y : y1 - R, wv, vbias,
                     output, vlo, vhi);
  }
  if (y1 * w < end) {
    fs_dw_flat_span(k, 1, k / 2, edge, 0, src, n, w, y1 * w / FS_VLEN * FS_VLEN, end, table,
                    period, wv, vbias, output, vlo, vhi);
  }
  return 1;
}

/* Flat output positions [begin, end) of a stride-1 plane (begin a multiple of FS_VLEN), the
 * halo rows `above` and `below` (or NULL) around it (whole planes, or whole rows of a plane
 * taller than a staged copy); `zero`: a row of at least iw zeros. */
FS_INLINE void fs_dwconv2d_flat(size_t k, size_t ih, size_t iw, const float* input,
                                const float* above, const float* below, const float* zero,
                                const fs_vec* wv, fs_vec vbias, float* stage, float* output,
                                size_t begin, size_t end, fs_vec vlo, fs_vec vhi) {
  const size_t n = ih * iw, reach = k / 2 * (iw + 1); /* farthest tap from its output */
  size_t period;
  const unsigned char* table =
      fs_dw_mask_table(k, 1, k / 2, iw, stage + fs_dw_flat_stage_floats(k, iw), &period);
  if (ih <= FS_DW_FLAT_STAGE_ROWS) {
    /* A small plane is copied behind zeros (or the halo rows above it, rewritten by every
     * call whose range starts in the first rows), and followed by zeros up to the farthest
     * tap of its last output (a previous plane may have left data there), or the halo rows
     * below it; then every load is a plain one. Only the part the range's taps reach is
     * copied. Lanes past the range read whatever lies beyond (inside the copy's floats) and
     * are never stored. */
    float* copy = stage + (reach + 15) / 16 * 16;
    const size_t from = begin > reach ? (begin - reach) / FS_VLEN * FS_VLEN : 0;
    const size_t to = end + reach < n + reach ? end + reach : n + reach;
    for (size_t j = from; j < to; j += FS_VLEN) {
      fs_vstore(copy + j, j + FS_VLEN <= n ? fs_vload(input + j)
                                           : fs_vload_range(input + j, 0, n > j ? n - j : 0));
    }
    /* A row piece's halo rows go right before and after it (k/2 rows each, inside the zeros
     * around the copy); a plane without them puts zeros back over a previous piece's (the
     * mask table's header notes whether the rows before hold a halo: rewriting them every
     * time cost small planes 5-10 %). */
    const size_t halo = k / 2 * iw;
    float* halo_above = stage + fs_dw_flat_stage_floats(k, iw) + 1;
    if (from == 0 && (above != NULL || *halo_above != 0.0f)) {
      fs_dw_put_rows(copy - halo, above, halo);
      *halo_above = above != NULL ? 1.0f : 0.0f;
    }
    if (below != NULL) fs_dw_put_rows(copy + n, below, halo);
    if (fs_dw_rows_s1(k, ih, iw, copy, NULL, NULL, NULL, 0, table, period, wv, vbias, output,
                      begin, end, vlo, vhi)) {
      return;
    }
    const float* src[1] = {copy};
#ifdef FS_DW_FLAT_CARRY
#ifdef fs_valign_lanes
    const int nine_taps = iw == 7; /* 4 vectors: the vectors before and after cost more than
                                      the shifts save (AVX-512: 0.025 vs 0.023 us a plane) */
#else
    const int nine_taps = 0;
#endif
    if (table != NULL && k == 3 && !nine_taps) {
#ifdef fs_valign_lanes
      /* The widths of MobileNets' small planes, as constants: aligned loads and lane
       * shifts. */
      if ((uintptr_t)copy % (FS_VLEN * sizeof(float)) == 0) {
        switch (iw) {
          case 14:
            fs_dw_flat_span3(14, copy, n, 14, begin, end, table, period, wv, vbias, output, vlo,
                             vhi);
            return;
          case 28:
            fs_dw_flat_span3(28, copy, n, 28, begin, end, table, period, wv, vbias, output, vlo,
                             vhi);
            return;
          default:
            break;
        }
      }
#endif
      fs_dw_flat_span3(0, copy, n, iw, begin, end, table, period, wv, vbias, output, vlo, vhi);
      return;
    }
#endif
#ifdef fs_valign_lanes
    /* 7-wide planes (nine_taps above): aligned loads and lane shifts, the width a
     * constant. */
    if (table != NULL && (uintptr_t)copy % (FS_VLEN * sizeof(float)) == 0 && k == 3 &&
        iw == 7) {
      fs_dw_flat_span(3, 1, 1, 0, 7, src, n, 7, begin, end, table, period, wv, vbias, output,
                      vlo, vhi);
      return;
    }
#endif
    fs_dw_flat_span(k, 1, k / 2, 0, 0, src, n, iw, begin, end, table, period, wv, vbias, output,
                    vlo, vhi);
    return;
  }
  /* A taller row piece has halo rows: the rows path reads them in place (dw_piece_kind). */
  if (fs_dw_rows_s1(k, ih, iw, input, zero, above, below, 1, table, period, wv, vbias, output,
                    begin, end, vlo, vhi)) {
    return;
  }
  assert(above == NULL && below == NULL);
  /* Only the vectors whose taps reach above or below the plane bound their loads. */
  size_t head = (reach + FS_VLEN - 1) / FS_VLEN * FS_VLEN, tail = 0;
  if (head > n) head = n;
  if (n >= FS_VLEN + reach) tail = (n - FS_VLEN - reach) / FS_VLEN * FS_VLEN + FS_VLEN;
  if (tail < head) tail = head;
  /* The three spans clipped to [begin, end). */
  const size_t h0 = head < begin ? begin : (head > end ? end : head);
  const size_t t0 = tail < h0 ? h0 : (tail > end ? end : tail);
  const float* src[1] = {input};
  fs_dw_flat_span(k, 1, k / 2, 1, 0, src, n, iw, begin, h0, table, period, wv, vbias, output, vlo,
                  vhi);
  fs_dw_flat_span(k, 1, k / 2, 0, 0, src, n, iw, h0, t0, table, period, wv, vbias, output, vlo,
                  vhi);
  fs_dw_flat_span(k, 1, k / 2, 1, 0, src, n, iw, t0, end, table, period, wv, vbias, output, vlo,
                  vhi);
}

/* ow floats of quarter rows even[0, ow) and odd[0, ow) = the even and odd columns of an input
 * row of 2 * ow floats, or zeros when row is NULL (rows above or below the image). Nothing
 * past ow is stored. */
FS_INLINE void fs_dw_quarter_row(float* even, float* odd, const float* row, size_t ow) {
  const size_t iw = 2 * ow;
  size_t x = 0;
  fs_vec e = fs_vzero(), o = fs_vzero();
  for (; x + 2 * FS_VLEN <= iw; x += 2 * FS_VLEN) {
    if (row != NULL) fs_vdeinterleave(fs_vload(row + x), fs_vload(row + x + FS_VLEN), &e, &o);
    fs_vstore(even + x / 2, e);
    fs_vstore(odd + x / 2, o);
  }
  if (x < iw) {
    const size_t rem = iw - x; /* even, < 2 * FS_VLEN */
    if (row != NULL) {
      const fs_vec a = rem >= FS_VLEN ? fs_vload(row + x)
                                      : fs_vload_tail(row + x, fs_tail_make(rem));
      const fs_vec b = rem > FS_VLEN ? fs_vload_tail(row + x + FS_VLEN, fs_tail_make(rem - FS_VLEN))
                                     : fs_vzero();
      fs_vdeinterleave(a, b, &e, &o);
    }
    fs_vstore_tail(even + x / 2, e, fs_tail_make(rem / 2));
    fs_vstore_tail(odd + x / 2, o, fs_tail_make(rem / 2));
  }
}

/* Stride 2 on quarter planes (four of fs_dw_quarter_floats in `quarters`), band by band
 * (fs_dw_band_rows output rows): slot j of a quarter holds row y0 - 1 + j of that parity
 * (input row 2 (y0 - 1 + j) + row parity, split by column parity), zeros above and below the
 * image, or the k/2 halo rows `above` and `below` where given, so every tap is a plain
 * load. */
FS_INLINE void fs_dwconv2d_quarters(size_t k, size_t pad, size_t ih, size_t oh, size_t ow,
                                    size_t oy0, size_t oy1, const float* input,
                                    size_t input_stride, const float* above,
                                    const float* below, const fs_vec* wv, fs_vec vbias,
                                    float* quarters, float* output, fs_vec vlo, fs_vec vhi) {
  const size_t qf = fs_dw_quarter_floats(oh, ow), band = fs_dw_band_rows(oh, ow);
  float* q[4];
  for (size_t j = 0; j < 4; j++) q[j] = quarters + j * qf + 16;
  const float* src[4] = {q[0] + ow, q[1] + ow, q[2] + ow, q[3] + ow}; /* slot 1: row y0 */
  size_t period;
  const unsigned char* table = fs_dw_mask_table(k, 2, pad, ow, quarters + 4 * qf, &period);
  for (size_t y0 = oy0; y0 < oy1; y0 += band) {
    const size_t rows = oy1 - y0 < band ? oy1 - y0 : band;
    for (size_t j = 0; j < rows + 2; j++) {
      const ptrdiff_t y = (ptrdiff_t)(y0 + j) - 1, h = (ptrdiff_t)ih, r = (ptrdiff_t)(k / 2);
      for (size_t a = 0; a < 2; a++) {
        const ptrdiff_t iy = 2 * y + (ptrdiff_t)a;
        const float* row = NULL;
        if (iy >= 0 && iy < h) {
          row = (const float*)((const char*)input + (size_t)iy * input_stride);
        } else if (iy < 0 && iy >= -r && above != NULL) {
          row = (const float*)((const char*)above + (size_t)(iy + r) * input_stride);
        } else if (iy >= h && iy < h + r && below != NULL) {
          row = (const float*)((const char*)below + (size_t)(iy - h) * input_stride);
        }
        fs_dw_quarter_row(q[2 * a] + j * ow, q[2 * a + 1] + j * ow, row, ow);
      }
    }
    /* Every band starts at column 0. pad is k/2 or k/2 - 1: a constant in each call, so the
     * tap offsets fold. */
    const size_t n = rows * ow;
    float* out = output + y0 * ow;
    if (pad == k / 2) {
      fs_dw_flat_span(k, 2, k / 2, 0, 0, src, n, ow, 0, n, table, period, wv, vbias, out, vlo, vhi);
    } else {
      fs_dw_flat_span(k, 2, k / 2 - 1, 0, 0, src, n, ow, 0, n, table, period, wv, vbias, out, vlo,
                      vhi);
    }
  }
}

/* Stride 2, 3x3, straight from the input rows (vec_<isa>.h sets FS_DW_S2_DIRECT where the
 * shuffles below are cheap: AVX2, AVX-512). The row ring and the quarter planes copy every
 * input row into scratch split by column parity before any tap reads it; here the vectors at
 * the same columns of R output rows are computed together, and each of the 2R + 1 input rows
 * they read is loaded once per block and split by column parity in registers with in-quarter
 * shuffles (fs_vsplit_quarters), which leave the columns in "quarter order" inside each
 * vector. The accumulators stay in that order; each output vector is put back into column
 * order once, before its store. One chain per tap column, rows ky in order, the bias in the
 * centre column, summed (centre + left) + right, as on the flat paths (AVX2's row ring, which
 * took the shapes wider than the quarter planes, summed by kernel row: other bits there).
 *
 * Two of the three tap columns are the even and the odd columns of the pair of input vectors
 * at 2 x0. The third (kx = 0 with pad 1: column 2 x - 1; kx = 2 with pad 0: column 2 x + 2)
 * is the odd (even) columns one output column off: its chain runs on those columns as they
 * are, and the finished sums move one column (fs_vquarters_shift_up/down), the column
 * entering from the block of columns before (after), which therefore runs first. On Zen 4 a
 * lane-crossing permute costs an FMA's slot and an in-quarter shuffle next to nothing
 * (tools/port_microbench.c): this takes two permutes per output vector (AVX2: and a blend), where
 * splitting each input row in column order took three per input row. Per plane, AVX-512
 * 112 -> 56 / 56 -> 28 / 28 -> 14: 1.13 / 0.32 / 0.10 -> 0.82 / 0.26 / 0.09 us; AVX2, which
 * took the row ring and the quarter planes before: 1.76 / 0.90 / 0.39 / (14 -> 7) 0.195 ->
 * 1.17 / 0.37 / 0.12 / 0.05 us (tools/dw_microbench.c, Zen 4). */
#ifdef FS_DW_S2_DIRECT

/* Input columns [c, c + 2 FS_VLEN) of `row` split into even and odd columns, in quarter
 * order; on `edge` vectors lanes at or past column w are zeros (masked loads). */
FS_INLINE void fs_dw_s2_split(const float* row, size_t c, size_t w, int edge, fs_vec* even,
                              fs_vec* odd) {
  fs_vec a, b;
  if (!edge) {
    a = fs_vload(row + c);
    b = fs_vload(row + c + FS_VLEN);
  } else {
    a = c + FS_VLEN <= w ? fs_vload(row + c)
                         : (c < w ? fs_vload_tail(row + c, fs_tail_make(w - c)) : fs_vzero());
    b = c + FS_VLEN < w ? fs_vload_tail(row + c + FS_VLEN, fs_tail_make(w - c - FS_VLEN))
                        : fs_vzero();
  }
  fs_vsplit_quarters(a, b, even, odd);
}

/* Columns [x0, x0 + FS_VLEN) of output rows r < R (in[j]: input row 2 (first output row) -
 * pad_top + j, or NULL for a row of zeros). carry[r] holds row r's shifted chain (quarter
 * order) of the block that ran before; this block's replaces it. If `store`, the sums go to
 * out[r] + x0 (cut at ow). */
FS_INLINE void fs_dw_s2_vector(size_t R, int edge, size_t pad, int store,
                               const float* const* in, size_t iw, size_t ow, size_t x0,
                               const fs_vec* wv, fs_vec vbias, fs_vec* carry,
                               float* const* out, fs_vec vlo, fs_vec vhi) {
  fs_vec acc[FS_DW_S2_ROW_BLOCK][3];
#pragma GCC unroll 4
  for (size_t r = 0; r < R; r++) {
    acc[r][0] = fs_vzero();
    acc[r][1] = vbias;
    acc[r][2] = fs_vzero();
  }
#pragma GCC unroll 9
  for (size_t j = 0; j < 2 * R + 1; j++) {
    if (in[j] == NULL) continue;
    fs_vec even, odd;
    fs_dw_s2_split(in[j], 2 * x0, iw, edge, &even, &odd);
#pragma GCC unroll 3
    for (size_t kx = 0; kx < 3; kx++) {
      /* pad 1: columns 2 x - 1, 2 x, 2 x + 1; pad 0: 2 x, 2 x + 1, 2 x + 2 */
      const fs_vec t = (kx == 1) == (pad == 1) ? even : odd;
#pragma GCC unroll 4
      for (size_t r = 0; r < R; r++) {
        if (2 * r <= j && j - 2 * r < 3) {
          acc[r][kx] = fs_vfma(wv[(j - 2 * r) * 3 + kx], t, acc[r][kx]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (size_t r = 0; r < R; r++) {
    fs_vec y;
    if (pad == 1) {
      const fs_vec left = fs_vquarters_shift_up(acc[r][0], carry[r]);
      carry[r] = acc[r][0];
      y = fs_vadd(fs_vadd(acc[r][1], left), acc[r][2]);
    } else {
      const fs_vec right = fs_vquarters_shift_down(acc[r][2], carry[r]);
      carry[r] = acc[r][2];
      y = fs_vadd(fs_vadd(acc[r][1], acc[r][0]), right);
    }
    if (!store) continue;
    y = fs_vquarters_to_columns(fs_vclamp(y, vlo, vhi));
    if (x0 + FS_VLEN <= ow) {
      fs_vstore(out[r] + x0, y);
    } else {
      fs_vstore_tail(out[r] + x0, y, fs_tail_make(ow - x0));
    }
  }
}

/* Output rows [oy, oy + R). Input rows outside [0, ih) are zeros, or the halo rows `above`
 * and `below` (one row each) where given. With pad 1 the blocks of columns run left to right
 * (the shifted chain takes its first column from the block before: zeros, the padding, for
 * the first), with pad 0 right to left. With pad 0 the last column's right tap comes from
 * the block after it when ow is a whole number of vectors: zeros (the padding), or, where
 * that tap lies inside the row (no right padding), a block at ow, summed but not stored. */
FS_INLINE void fs_dw_s2_block(size_t R, size_t pad_left, size_t ih, size_t iw, size_t ow,
                              size_t pad_top, const char* input, size_t input_stride,
                              const float* above, const float* below, size_t oy,
                              const fs_vec* wv, fs_vec vbias, char* output,
                              size_t output_stride, fs_vec vlo, fs_vec vhi) {
  const float* in[2 * FS_DW_S2_ROW_BLOCK + 1];
  float* out[FS_DW_S2_ROW_BLOCK];
  fs_vec carry[FS_DW_S2_ROW_BLOCK];
#pragma GCC unroll 9
  for (size_t j = 0; j < 2 * R + 1; j++) {
    const ptrdiff_t iy = 2 * (ptrdiff_t)oy - (ptrdiff_t)pad_top + (ptrdiff_t)j;
    in[j] = NULL; /* fs_dw_s2_in_row, written out: through it this path ran 20 % slower */
    if (iy >= 0 && iy < (ptrdiff_t)ih) {
      in[j] = (const float*)(input + (size_t)iy * input_stride);
    } else if (iy == -1 && above != NULL) {
      in[j] = above;
    } else if (iy == (ptrdiff_t)ih && below != NULL) {
      in[j] = below;
    }
  }
#pragma GCC unroll 4
  for (size_t r = 0; r < R; r++) {
    out[r] = (float*)(output + (oy + r) * output_stride);
    carry[r] = fs_vzero();
  }
  if (pad_left == 1) {
    for (size_t x0 = 0; x0 < ow; x0 += FS_VLEN) {
      if (2 * x0 + 2 * FS_VLEN <= iw) {
        fs_dw_s2_vector(R, 0, 1, 1, in, iw, ow, x0, wv, vbias, carry, out, vlo, vhi);
      } else {
        fs_dw_s2_vector(R, 1, 1, 1, in, iw, ow, x0, wv, vbias, carry, out, vlo, vhi);
      }
    }
    return;
  }
  size_t x0 = (ow - 1) / FS_VLEN * FS_VLEN;
  if (x0 + FS_VLEN == ow && 2 * ow < iw) {
    fs_dw_s2_vector(R, 1, 0, 0, in, iw, ow, ow, wv, vbias, carry, out, vlo, vhi);
  }
  for (;; x0 -= FS_VLEN) {
    if (2 * x0 + 2 * FS_VLEN <= iw) {
      fs_dw_s2_vector(R, 0, 0, 1, in, iw, ow, x0, wv, vbias, carry, out, vlo, vhi);
    } else {
      fs_dw_s2_vector(R, 1, 0, 1, in, iw, ow, x0, wv, vbias, carry, out, vlo, vhi);
    }
    if (x0 == 0) break;
  }
}

#ifdef FS_DW_S2_PAIRS
/* Input row iy of a stride-2 plane: the row, a halo row (-1: above, ih: below), or NULL
 * (zeros). */
FS_INLINE const float* fs_dw_s2_in_row(ptrdiff_t iy, size_t ih, const char* input,
                                       size_t input_stride, const float* above,
                                       const float* below) {
  const float* row = NULL;
  if (iy >= 0 && iy < (ptrdiff_t)ih) {
    row = (const float*)(input + (size_t)iy * input_stride);
  } else if (iy == -1 && above != NULL) {
    row = above;
  } else if (iy == (ptrdiff_t)ih && below != NULL) {
    row = below;
  }
  return row;
}

/* Outputs at most 8 wide from rows of at most 16 floats (14x14 -> 7x7 in MobileNets): two
 * output rows per vector, lanes 0-7 and 8-15 (fs_vsplit_row_pair), where fs_dw_s2_block gives
 * each row a vector and leaves half of its lanes or more idle. The same FMAs in the same
 * order per output. An odd last row goes to fs_dw_s2_block. */
FS_INLINE void fs_dw_s2_pairs(size_t pad_left, size_t ih, size_t iw, size_t ow, size_t pad_top,
                              const float* input, size_t input_stride, const float* above,
                              const float* below, size_t oy0, size_t oy1, const fs_vec* wv,
                              fs_vec vbias, float* output, size_t output_stride, fs_vec vlo,
                              fs_vec vhi) {
  const char* x = (const char*)input;
  char* y = (char*)output;
  const fs_tail in_lanes = fs_tail_make(iw), out_lanes = fs_tail_make(ow);
  size_t oy = oy0;
  for (; oy + 2 <= oy1; oy += 2) {
    fs_vec acc0 = fs_vzero(), acc1 = vbias, acc2 = fs_vzero();
#pragma GCC unroll 3
    for (size_t ky = 0; ky < 3; ky++) {
      const ptrdiff_t iy = 2 * (ptrdiff_t)oy - (ptrdiff_t)pad_top + (ptrdiff_t)ky;
      const float* ra = fs_dw_s2_in_row(iy, ih, x, input_stride, above, below);
      const float* rb = fs_dw_s2_in_row(iy + 2, ih, x, input_stride, above, below);
      const fs_vec a = ra != NULL ? fs_vload_tail(ra, in_lanes) : fs_vzero();
      const fs_vec b = rb != NULL ? fs_vload_tail(rb, in_lanes) : fs_vzero();
      fs_vec t[3];
      fs_vsplit_row_pair(a, b, pad_left, t);
      acc0 = fs_vfma(wv[ky * 3], t[0], acc0);
      acc1 = fs_vfma(wv[ky * 3 + 1], t[1], acc1);
      acc2 = fs_vfma(wv[ky * 3 + 2], t[2], acc2);
    }
    const fs_vec v = fs_vclamp(fs_vadd(fs_vadd(acc1, acc0), acc2), vlo, vhi);
    fs_vstore_tail((float*)(y + oy * output_stride), v, out_lanes);
    fs_vstore_tail((float*)(y + (oy + 1) * output_stride), fs_valign_lanes(v, v, 8), out_lanes);
  }
  if (oy < oy1) {
    fs_dw_s2_block(1, pad_left, ih, iw, ow, pad_top, x, input_stride, above, below, oy, wv,
                   vbias, y, output_stride, vlo, vhi);
  }
}
#endif /* FS_DW_S2_PAIRS */

FS_INLINE void fs_dw_s2_rows_pad(size_t pad_left, size_t ih, size_t iw, size_t ow,
                                 size_t pad_top, const float* input, size_t input_stride,
                                 const float* above, const float* below, size_t oy0, size_t oy1,
                                 const fs_vec* wv, fs_vec vbias, float* output,
                                 size_t output_stride, fs_vec vlo, fs_vec vhi) {
  const char* x = (const char*)input;
  char* y = (char*)output;
  size_t oy = oy0;
  for (; oy + FS_DW_S2_ROW_BLOCK <= oy1; oy += FS_DW_S2_ROW_BLOCK) {
    fs_dw_s2_block(FS_DW_S2_ROW_BLOCK, pad_left, ih, iw, ow, pad_top, x, input_stride, above,
                   below, oy, wv, vbias, y, output_stride, vlo, vhi);
  }
  if (FS_DW_S2_ROW_BLOCK > 2 && oy + 2 <= oy1) {
    fs_dw_s2_block(2, pad_left, ih, iw, ow, pad_top, x, input_stride, above, below, oy, wv,
                   vbias, y, output_stride, vlo, vhi);
    oy += 2;
  }
  for (; oy < oy1; oy++) {
    fs_dw_s2_block(1, pad_left, ih, iw, ow, pad_top, x, input_stride, above, below, oy, wv,
                   vbias, y, output_stride, vlo, vhi);
  }
}

/* Output rows [oy0, oy1); pad_left 0 or 1 (a constant inside: it picks the taps' lanes). */
FS_INLINE void fs_dw_s2_rows(size_t ih, size_t iw, size_t ow, size_t pad_top,
                             size_t pad_left, const float* input, size_t input_stride,
                             const float* above, const float* below, size_t oy0, size_t oy1,
                             const fs_vec* wv, fs_vec vbias, float* output,
                             size_t output_stride, fs_vec vlo, fs_vec vhi) {
#ifdef FS_DW_S2_PAIRS
  if (ow <= FS_VLEN / 2 && iw <= FS_VLEN) {
    if (pad_left == 1) {
      fs_dw_s2_pairs(1, ih, iw, ow, pad_top, input, input_stride, above, below, oy0, oy1, wv,
                     vbias, output, output_stride, vlo, vhi);
    } else {
      fs_dw_s2_pairs(0, ih, iw, ow, pad_top, input, input_stride, above, below, oy0, oy1, wv,
                     vbias, output, output_stride, vlo, vhi);
    }
    return;
  }
#endif
  if (pad_left == 1) {
    fs_dw_s2_rows_pad(1, ih, iw, ow, pad_top, input, input_stride, above, below, oy0, oy1, wv,
                      vbias, output, output_stride, vlo, vhi);
  } else {
    fs_dw_s2_rows_pad(0, ih, iw, ow, pad_top, input, input_stride, above, below, oy0, oy1, wv,
                      vbias, output, output_stride, vlo, vhi);
  }
}
#endif /* FS_DW_S2_DIRECT */

FS_INLINE void fs_dwconv2d_chw(size_t k, size_t s, size_t ih, size_t iw, size_t oh, size_t ow,
                               size_t pad_top, size_t pad_left, const float* input,
                               size_t input_stride, const float* above, const float* below,
                               const float* weights, float bias,
                               float* scratch, float* output, size_t output_stride,
                               size_t out_begin, size_t out_end, float lo, float hi) {
  assert(ih >= 1 && iw >= 1 && oh >= 1 && ow >= 1);
  assert(input != NULL && weights != NULL && scratch != NULL && output != NULL);
  assert(!(lo > hi));
  fs_vec wv[25];
  for (size_t i = 0; i < k * k; i++) wv[i] = fs_vset1(weights[i]);
  const fs_vec vbias = fs_vset1(bias), vlo = fs_vset1(lo), vhi = fs_vset1(hi);
  const size_t rowlen = fs_chw_row_floats(k, s, iw, ow, pad_left);
  /* A flat path's plane copy or quarter planes lie after the row ring
   * (fs_dwconv2d_scratch_floats). */
  const int flat = fs_dw_flat_kind(k, s, ih, iw, oh, ow, pad_top, pad_left);
  assert(out_begin < out_end && out_end <= oh * ow);
  if (flat == 1 && input_stride == iw * sizeof(float) && output_stride == ow * sizeof(float)) {
    assert(out_begin % 16 == 0 && (out_end % 16 == 0 || out_end == oh * ow));
    /* Halo rows come with the whole plane, or on a plane taller than a staged copy (read in
     * place by the rows path) with whole output rows. */
    assert((above == NULL && below == NULL) || (out_begin == 0 && out_end == oh * ow) ||
           (ih > FS_DW_FLAT_STAGE_ROWS && out_begin % ow == 0 && out_end % ow == 0));
    /* The ring's zero row serves the rows above and below a big plane. */
    fs_dwconv2d_flat(k, ih, iw, input, above, below, scratch + (k + 2) * rowlen, wv, vbias,
                     scratch + (k + 3) * rowlen, output, out_begin, out_end, vlo, vhi);
    return;
  }
  /* Other paths take whole output rows. */
  assert(out_begin % ow == 0 && (out_end % ow == 0 || out_end == oh * ow));
  const size_t oy0 = out_begin / ow, oy1 = (out_end + ow - 1) / ow;
#ifdef FS_DW_S2_DIRECT
  if (k == 3 && s == 2 && pad_top <= 1 && pad_left <= 1) {
    fs_dw_s2_rows(ih, iw, ow, pad_top, pad_left, input, input_stride, above, below, oy0, oy1,
                  wv, vbias, output, output_stride, vlo, vhi);
    return;
  }
#endif
  if (flat == 2 && output_stride == ow * sizeof(float)) {
    fs_dwconv2d_quarters(k, pad_top, ih, oh, ow, oy0, oy1, input, input_stride, above, below,
                         wv, vbias, scratch + (k + 3) * rowlen, output, vlo, vhi);
    return;
  }
  assert(above == NULL && below == NULL);
  const size_t half = rowlen / 2;
  ptrdiff_t tags[7] = {-1, -1, -1, -1, -1, -1, -1};
  const float* rows[5];
  for (size_t oy = oy0; oy < oy1; oy++) {
    fs_chw_ring_rows(k, s, oy, oy1, pad_top, ih, iw, pad_left, (const char*)input,
                     input_stride, scratch, rowlen, tags, rows);
    float* out = (float*)((char*)output + oy * output_stride);
    size_t ox = 0;
    for (; ox + 2 * FS_VLEN <= ow; ox += 2 * FS_VLEN) {
      const fs_vec y0 = fs_dw_vector(k, s, rows, half, ox, wv, vbias);
      const fs_vec y1 = fs_dw_vector(k, s, rows, half, ox + FS_VLEN, wv, vbias);
      fs_vstore(out + ox, fs_vclamp(y0, vlo, vhi));
      fs_vstore(out + ox + FS_VLEN, fs_vclamp(y1, vlo, vhi));
    }
    for (; ox < ow; ox += FS_VLEN) {
      const fs_vec y = fs_vclamp(fs_dw_vector(k, s, rows, half, ox, wv, vbias), vlo, vhi);
      if (ow - ox >= FS_VLEN) {
        fs_vstore(out + ox, y);
      } else {
        fs_vstore_tail(out + ox, y, fs_tail_make(ow - ox));
      }
    }
  }
}

#define FS_DWCONV_DEFINE(K, S, ISA)                                                          \
  void fs_f32_dwconv2d_chw_##K##x##K##s##S##__##ISA(FS_DWCONV_PARAMS) {                      \
    fs_dwconv2d_chw(K, S, ih, iw, oh, ow, pad_top, pad_left, input, input_stride, above,    \
                    below, weights, bias, scratch, output, output_stride, out_begin, out_end, \
                    lo, hi);                                                                 \
  }

#endif /* FS_DWCONV_IMPL_H */
