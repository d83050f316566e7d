/* First-layer dense 3x3 convolution, global average pooling and elementwise add in CHW layout,
 * written once for every ISA over the vector vocabulary of vec_<isa>.h (see spmm_impl.h; this
 * file also uses fs_vdeinterleave, fs_vhsum, fs_vmul). Needs dwconv_impl.h (row ring).
 *
 * conv2d: the input rows are staged exactly as in the depthwise kernel (padded, split into
 * even/odd columns for stride 2), one ring of 3 rows per input channel; an HWC image is
 * gathered channel by channel during that copy, so channels-last input needs no transpose.
 * Tile: 4 output channels x FS_CONV_NV vectors of output columns (2: 8 accumulators; 3 on
 * AVX-512, whose 32 registers hold 12); every input vector loaded feeds 4 FMAs with broadcast
 * weights. Leftover columns take a 2-vector tile, then single vectors, leftover channels
 * narrower tiles (3, 2, 1); the last vector of a row is a masked store.
 *
 * Out-of-bounds contract: reads only the image and writes only output rows
 * [oy_begin, oy_end) x [0, ow) of each channel; the rest happens in the caller's scratch.
 */
#ifndef FS_CHW_IMPL_H
#define FS_CHW_IMPL_H

#include "dwconv_impl.h"

/* Vectors of output columns per conv2d tile; vec_<isa>.h may set it (at most 4). */
#ifndef FS_CONV_NV
#define FS_CONV_NV 2
#endif

/* Copies input row iy of every channel into ring slot iy % 3 (scratch row slot*cin + ci). */
FS_INLINE void fs_conv_load_rows(size_t s, size_t cin, size_t iy, size_t iw, size_t pad_left,
                                 const char* input, size_t channel_stride, size_t row_stride,
                                 size_t pixel_stride, float* slot_rows, size_t rowlen) {
  const size_t half = rowlen / 2;
  for (size_t ci = 0; ci < cin; ci++) {
    const char* src = input + ci * channel_stride + iy * row_stride;
    float* dst = slot_rows + ci * rowlen;
    if (pixel_stride == sizeof(float)) {
      fs_chw_load_row(s, dst, rowlen, (const float*)src, iw, pad_left);
    } else if (s == 1) {
      for (size_t i = 0; i < iw; i++) dst[pad_left + i] = *(const float*)(src + i * pixel_stride);
    } else {
      for (size_t i = 0; i < iw; i++) {
        const size_t j = pad_left + i;
        dst[(j & 1) * half + j / 2] = *(const float*)(src + i * pixel_stride);
      }
    }
  }
}

/* nr output channels from co x nv vectors of columns from ox (the last one `tail` lanes wide
 * when partial). base[ky] + ci * cstep[ky] is channel ci's scratch row for kernel row ky. */
FS_INLINE void fs_conv_tile(size_t s, size_t nr, size_t nv, int partial, fs_tail tail,
                            size_t cin, const float* const* base, const size_t* cstep,
                            size_t half, size_t ox, size_t co, const float* weights,
                            const float* bias, float* out_row, size_t output_channel_stride,
                            fs_vec vlo, fs_vec vhi) {
  fs_vec acc[4][FS_CONV_NV];
#pragma GCC unroll 4
  for (size_t r = 0; r < nr; r++) {
    const fs_vec b = bias != NULL ? fs_vset1(bias[co + r]) : fs_vzero();
#pragma GCC unroll 4
    for (size_t v = 0; v < nv; v++) acc[r][v] = b;
  }
  const size_t wstride = cin * 9;
  for (size_t ci = 0; ci < cin; ci++) {
    const float* w = weights + co * wstride + ci * 9;
#pragma GCC unroll 3
    for (size_t ky = 0; ky < 3; ky++) {
      const float* row = base[ky] + ci * cstep[ky];
#pragma GCC unroll 3
      for (size_t kx = 0; kx < 3; kx++) {
        fs_vec xv[FS_CONV_NV];
#pragma GCC unroll 4
        for (size_t v = 0; v < nv; v++) xv[v] = fs_vload(fs_chw_tap(s, row, half, ox + v * FS_VLEN, kx));
#pragma GCC unroll 4
        for (size_t r = 0; r < nr; r++) {
          const fs_vec wr = fs_vset1(w[r * wstride + ky * 3 + kx]);
#pragma GCC unroll 4
          for (size_t v = 0; v < nv; v++) acc[r][v] = fs_vfma(wr, xv[v], acc[r][v]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (size_t r = 0; r < nr; r++) {
    float* out = (float*)((char*)out_row + (co + r) * output_channel_stride) + ox;
#pragma GCC unroll 4
    for (size_t v = 0; v < nv; v++) {
      const fs_vec y = fs_vclamp(acc[r][v], vlo, vhi);
      if (partial && v == nv - 1) {
        fs_vstore_tail(out + v * FS_VLEN, y, tail);
      } else {
        fs_vstore(out + v * FS_VLEN, y);
      }
    }
  }
}

/* One row of output columns for nr channels from co: FS_CONV_NV-vector steps, then a
 * 2-vector one, then single vectors. */
FS_INLINE void fs_conv_row(size_t s, size_t nr, size_t cin, size_t ow, const float* const* base,
                           const size_t* cstep, size_t half, size_t co, const float* weights,
                           const float* bias, float* out_row, size_t output_channel_stride,
                           fs_vec vlo, fs_vec vhi) {
  const fs_tail full = fs_tail_make(FS_VLEN);
  size_t ox = 0;
  for (; ox + FS_CONV_NV * FS_VLEN <= ow; ox += FS_CONV_NV * FS_VLEN) {
    fs_conv_tile(s, nr, FS_CONV_NV, 0, full, cin, base, cstep, half, ox, co, weights, bias, out_row,
                 output_channel_stride, vlo, vhi);
  }
  if (FS_CONV_NV > 2 && ox + 2 * FS_VLEN <= ow) {
    fs_conv_tile(s, nr, 2, 0, full, cin, base, cstep, half, ox, co, weights, bias, out_row,
                 output_channel_stride, vlo, vhi);
    ox += 2 * FS_VLEN;
  }
  for (; ox < ow; ox += FS_VLEN) {
    const int partial = ow - ox < FS_VLEN;
    fs_conv_tile(s, nr, 1, partial, partial ? fs_tail_make(ow - ox) : full, cin, base, cstep,
                 half, ox, co, weights, bias, out_row, output_channel_stride, vlo, vhi);
  }
}

FS_INLINE void fs_conv2d_chw(size_t s, size_t cin, size_t ih, size_t iw, size_t oh, size_t ow,
                             size_t pad_top, size_t pad_left, size_t oy_begin, size_t oy_end,
                             const float* input, size_t channel_stride, size_t row_stride,
                             size_t pixel_stride, size_t cout, const float* weights,
                             const float* bias, float* scratch, float* output,
                             size_t output_channel_stride, size_t output_row_stride, float lo,
                             float hi) {
  assert(cin >= 1 && cout >= 1 && ih >= 1 && iw >= 1 && ow >= 1);
  assert(oy_begin <= oy_end && oy_end <= oh);
  assert(input != NULL && weights != NULL && scratch != NULL && output != NULL);
  assert(!(lo > hi));
  const size_t rowlen = fs_chw_row_floats(3, s, iw, ow, pad_left);
  const size_t half = rowlen / 2;
  float* zero = scratch + 3 * cin * rowlen;
  ptrdiff_t tags[3] = {-1, -1, -1};
  const fs_vec vlo = fs_vset1(lo), vhi = fs_vset1(hi);
  for (size_t oy = oy_begin; oy < oy_end; oy++) {
    const float* base[3];
    size_t cstep[3];
    for (size_t ky = 0; ky < 3; ky++) {
      const ptrdiff_t iy = (ptrdiff_t)(oy * s + ky) - (ptrdiff_t)pad_top;
      if (iy < 0 || iy >= (ptrdiff_t)ih) {
        base[ky] = zero;
        cstep[ky] = 0; /* every channel reads the one zero row */
        continue;
      }
      const size_t slot = (size_t)iy % 3;
      float* rows = scratch + slot * cin * rowlen;
      if (tags[slot] != iy) {
        fs_conv_load_rows(s, cin, (size_t)iy, iw, pad_left, (const char*)input, channel_stride,
                          row_stride, pixel_stride, rows, rowlen);
        tags[slot] = iy;
      }
      base[ky] = rows;
      cstep[ky] = rowlen;
    }
    float* out_row = (float*)((char*)output + oy * output_row_stride);
    size_t co = 0;
    for (; co + 4 <= cout; co += 4) {
      fs_conv_row(s, 4, cin, ow, base, cstep, half, co, weights, bias, out_row,
                  output_channel_stride, vlo, vhi);
    }
    switch (cout - co) {
      case 3:
        fs_conv_row(s, 3, cin, ow, base, cstep, half, co, weights, bias, out_row,
                    output_channel_stride, vlo, vhi);
        break;
      case 2:
        fs_conv_row(s, 2, cin, ow, base, cstep, half, co, weights, bias, out_row,
                    output_channel_stride, vlo, vhi);
        break;
      case 1:
        fs_conv_row(s, 1, cin, ow, base, cstep, half, co, weights, bias, out_row,
                    output_channel_stride, vlo, vhi);
        break;
      default:
        break;
    }
  }
}

/* Four vector accumulators per channel (four independent add chains), then a horizontal sum. */
FS_INLINE void fs_gavgpool_chw(size_t channels, size_t hw, const float* input,
                               size_t input_stride, float scale, float* output) {
  assert(hw >= 1 && input != NULL && output != NULL);
  for (size_t c = 0; c < channels; c++) {
    const float* x = (const float*)((const char*)input + c * input_stride);
    fs_vec a0 = fs_vzero(), a1 = fs_vzero(), a2 = fs_vzero(), a3 = fs_vzero();
    size_t i = 0;
    for (; i + 4 * FS_VLEN <= hw; i += 4 * FS_VLEN) {
      a0 = fs_vadd(a0, fs_vload(x + i));
      a1 = fs_vadd(a1, fs_vload(x + i + FS_VLEN));
      a2 = fs_vadd(a2, fs_vload(x + i + 2 * FS_VLEN));
      a3 = fs_vadd(a3, fs_vload(x + i + 3 * FS_VLEN));
    }
    for (; i + FS_VLEN <= hw; i += FS_VLEN) a0 = fs_vadd(a0, fs_vload(x + i));
    if (i < hw) a1 = fs_vadd(a1, fs_vload_tail(x + i, fs_tail_make(hw - i)));
    output[c] = fs_vhsum(fs_vadd(fs_vadd(a0, a1), fs_vadd(a2, a3))) * scale;
  }
}

FS_INLINE void fs_vadd_minmax(size_t n, const float* a, const float* b, float* y, float lo,
                              float hi) {
  assert(a != NULL && b != NULL && y != NULL);
  assert(!(lo > hi));
  const fs_vec vlo = fs_vset1(lo), vhi = fs_vset1(hi);
  size_t i = 0;
  for (; i + 4 * FS_VLEN <= n; i += 4 * FS_VLEN) {
    const fs_vec y0 = fs_vadd(fs_vload(a + i), fs_vload(b + i));
    const fs_vec y1 = fs_vadd(fs_vload(a + i + FS_VLEN), fs_vload(b + i + FS_VLEN));
    const fs_vec y2 = fs_vadd(fs_vload(a + i + 2 * FS_VLEN), fs_vload(b + i + 2 * FS_VLEN));
    const fs_vec y3 = fs_vadd(fs_vload(a + i + 3 * FS_VLEN), fs_vload(b + i + 3 * FS_VLEN));
    fs_vstore(y + i, fs_vclamp(y0, vlo, vhi));
    fs_vstore(y + i + FS_VLEN, fs_vclamp(y1, vlo, vhi));
    fs_vstore(y + i + 2 * FS_VLEN, fs_vclamp(y2, vlo, vhi));
    fs_vstore(y + i + 3 * FS_VLEN, fs_vclamp(y3, vlo, vhi));
  }
  for (; i + FS_VLEN <= n; i += FS_VLEN) {
    fs_vstore(y + i, fs_vclamp(fs_vadd(fs_vload(a + i), fs_vload(b + i)), vlo, vhi));
  }
  if (i < n) {
    const fs_tail t = fs_tail_make(n - i);
    const fs_vec s = fs_vadd(fs_vload_tail(a + i, t), fs_vload_tail(b + i, t));
    fs_vstore_tail(y + i, fs_vclamp(s, vlo, vhi), t);
  }
}

/* Every CHW op of one ISA. */
#define FS_CHW_DEFINE(ISA)                                                                     \
  FS_DWCONV_DEFINE(3, 1, ISA)                                                                  \
  FS_DWCONV_DEFINE(3, 2, ISA)                                                                  \
  FS_DWCONV_DEFINE(5, 1, ISA)                                                                  \
  FS_DWCONV_DEFINE(5, 2, ISA)                                                                  \
  void fs_f32_conv2d_chw_3x3s1_4x2v__##ISA(FS_CONV2D_PARAMS) {                                 \
    fs_conv2d_chw(1, cin, ih, iw, oh, ow, pad_top, pad_left, oy_begin, oy_end, input,          \
                  channel_stride, row_stride, pixel_stride, cout, weights, bias, scratch,      \
                  output, output_channel_stride, output_row_stride, lo, hi);                   \
  }                                                                                            \
  void fs_f32_conv2d_chw_3x3s2_4x2v__##ISA(FS_CONV2D_PARAMS) {                                 \
    fs_conv2d_chw(2, cin, ih, iw, oh, ow, pad_top, pad_left, oy_begin, oy_end, input,          \
                  channel_stride, row_stride, pixel_stride, cout, weights, bias, scratch,      \
                  output, output_channel_stride, output_row_stride, lo, hi);                   \
  }                                                                                            \
  void fs_f32_gavgpool_chw_4v__##ISA(size_t channels, size_t hw, const float* input,           \
                                     size_t input_stride, float scale, float* output) {        \
    fs_gavgpool_chw(channels, hw, input, input_stride, scale, output);                         \
  }                                                                                            \
  void fs_f32_vadd_minmax_4v__##ISA(size_t n, const float* a, const float* b, float* y,        \
                                    float lo, float hi) {                                      \
    fs_vadd_minmax(n, a, b, y, lo, hi);                                                        \
  }

#endif /* FS_CHW_IMPL_H */
