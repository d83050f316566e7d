/* Microbenchmark of the spmm kernels without Python: one layer shape, synthetic pattern.
 *
 *   gcc -O2 -Isrc/fastsparse/csrc -DFS_HAVE_SSE2 -DFS_HAVE_AVX2 -DFS_HAVE_AVX512 \
 *       tools/spmm_microbench.c build/kernels_*.o build/dispatch.o -o /tmp/spmm_bench
 *   /tmp/spmm_bench HW COUT CIN DENSITY [uniform | block=B]
 *
 * `uniform` gives every row the same number of non-zeros (isolates loop-exit mispredicts
 * caused by varying trip counts); `block=B` keeps or drops whole B-row blocks. Prints
 * GFLOP/s (2 * nnz * HW per second) per variant. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_clock.h"

#include "fs_kernels.h"

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s HW COUT CIN DENSITY [uniform]\n", argv[0]);
    return 2;
  }
  const size_t hw = (size_t)atol(argv[1]), cout = (size_t)atol(argv[2]), cin = (size_t)atol(argv[3]);
  const double density = atof(argv[4]);
  const int uniform = argc > 5 && strcmp(argv[5], "uniform") == 0;
  const size_t block = argc > 5 && strncmp(argv[5], "block=", 6) == 0 ? (size_t)atol(argv[5] + 6) : 1;
  srand(1);
  float* x = malloc(sizeof(float) * cin * hw);
  float* y = malloc(sizeof(float) * cout * hw);
  for (size_t i = 0; i < cin * hw; i++) x[i] = (float)rand() / RAND_MAX;
  unsigned char* mask = calloc(cout * cin, 1);
  const size_t per_row = (size_t)(density * cin + 0.5);
  for (size_t o = 0; o < cout; o++) {
    if (uniform) {
      for (size_t k = 0; k < per_row;) {
        size_t c = (size_t)rand() % cin;
        if (!mask[o * cin + c]) { mask[o * cin + c] = 1; k++; }
      }
    } else if (o % block == 0) {
      for (size_t c = 0; c < cin; c++) mask[o * cin + c] = (double)rand() / RAND_MAX < density;
    } else {
      memcpy(mask + o * cin, mask + (o - 1) * cin, cin); /* same pattern as the block's first row */
    }
  }
  for (int isa = 0; isa < FS_ISA_COUNT; isa++) {
    if (!fs_isa_supported(isa)) continue;
    for (size_t v = 0; v < fs_spmm_kernel_count(isa); v++) {
      const fs_spmm_kernel* k = fs_spmm_kernel_at(isa, v);
      const size_t nr = k->nr, nfull = cout / nr, nblocks = nfull + cout % nr;
      uint32_t* nnz = calloc(nblocks, sizeof(uint32_t));
      float* w = malloc(sizeof(float) * cout * cin + 64);
      int32_t* off = malloc(sizeof(int32_t) * cout * cin + 64);
      size_t nw = 0, no = 0, useful = 0;
      for (size_t b = 0; b < nblocks; b++) {
        const size_t r0 = b < nfull ? b * nr : nfull * nr + (b - nfull), rows = b < nfull ? nr : 1;
        for (size_t c = 0; c < cin; c++) {
          int any = 0;
          for (size_t r = 0; r < rows; r++) any |= mask[(r0 + r) * cin + c];
          if (!any) continue;
          for (size_t r = 0; r < rows; r++) {
            w[nw++] = mask[(r0 + r) * cin + c] ? 0.5f : 0.0f;
            useful += mask[(r0 + r) * cin + c];
          }
          off[no++] = (int32_t)(c * hw * sizeof(float));
          nnz[b]++;
        }
      }
      enum { REPS = 15 };
      double t[REPS];
      size_t calls = 1;
      for (;;) {
        double t0 = now();
        for (size_t i = 0; i < calls; i++)
          k->fn(hw, cout, x, w, nnz, off, NULL, NULL, 0, y, hw * sizeof(float), -1e30f, 1e30f);
        if (now() - t0 > 2e-3) break;
        calls *= 2;
      }
      for (int r = 0; r < REPS; r++) {
        double t0 = now();
        for (size_t i = 0; i < calls; i++)
          k->fn(hw, cout, x, w, nnz, off, NULL, NULL, 0, y, hw * sizeof(float), -1e30f, 1e30f);
        t[r] = (now() - t0) / calls;
      }
      qsort(t, REPS, sizeof(double), cmp_double);
      printf("%-42s %7.1f GF/s  (%.1f us, stored %zu of useful %zu)\n", k->name,
             2.0 * useful * hw / t[REPS / 2] / 1e9, t[REPS / 2] * 1e6, nw, useful);
      free(nnz); free(w); free(off);
    }
  }
  free(x); free(y); free(mask);
  return 0;
}
