/* Microbenchmark of the depthwise kernels without Python: C planes of H x H, one kernel per
 * ISA compiled in, each plane's input and output in L2 (the planes of a fused step or of a
 * small layer), and the FMA rate of one core for 256- and 512-bit vectors, the bound the
 * depthwise kernels run against (9 FMAs per output vector for 3x3).
 *
 *   python setup.py build_ext --inplace
 *   O=build/temp.linux-x86_64-cpython-311/src/fastsparse/csrc
 *   gcc -O2 -Isrc/fastsparse/csrc -DFS_HAVE_SSE2 -DFS_HAVE_AVX2 -DFS_HAVE_AVX512 \
 *       tools/dw_microbench.c $O/kernels_*.o -o /tmp/dw_bench -lm
 *   /tmp/dw_bench H C STRIDE        e.g. 112 4 1, 56 16 1, 28 64 1, 112 4 2
 *
 * Prints per ISA the median time per plane (31 samples) of the 3x3 kernel ("same" padding),
 * then, with -mavx512f available at run time, the FMA rates. */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_clock.h"

#include "fs_kernels.h"

typedef void (*dw_fn)(FS_DWCONV_PARAMS);

static void bench(const char* name, dw_fn fn, size_t h, size_t c, size_t s) {
  const size_t oh = (h + 2 - 3) / s + 1, ps = (h * h + 15) / 16 * 16, pso = (oh * oh + 15) / 16 * 16;
  float* x = aligned_alloc(64, ps * c * 4);
  float* y = aligned_alloc(64, pso * c * 4);
  float w[9];
  for (size_t i = 0; i < ps * c; i++) x[i] = (float)rand() / RAND_MAX;
  for (size_t i = 0; i < 9; i++) w[i] = (float)rand() / RAND_MAX - 0.5f;
  const size_t sf = fs_dwconv2d_scratch_floats(3, s, h, h, oh, oh, 1, 1);
  float* scratch = aligned_alloc(64, (sf * 4 + 63) / 64 * 64);
  memset(scratch, 0, sf * 4);
  double t[31];
  const int reps = 200;
  for (int r = 0; r < 31; r++) {
    const double t0 = now();
    for (int q = 0; q < reps; q++) {
      for (size_t ch = 0; ch < c; ch++) {
        fn(h, h, oh, oh, 1, 1, x + ch * ps, h * 4, NULL, NULL, w, 0.1f, scratch, y + ch * pso,
           oh * 4, 0, oh * oh, 0.0f, 6.0f);
      }
    }
    t[r] = (now() - t0) / reps;
  }
  qsort(t, 31, sizeof(double), cmp_double);
  printf("%-8s 3x3 s%zu %zux%zu x %zu: %.3f us per plane\n", name, s, h, h, c, t[15] * 1e6 / c);
  free(x);
  free(y);
  free(scratch);
}

/* 12 independent FMA chains, long enough that latency never binds. Named variables, not an
 * array: GCC kept an array's chains in memory, storing all 12 every iteration, and the loop
 * then measured 512-bit stores (2.66-2.87 per ns here, the figure sessions 6 and 7 took for
 * the FMA rate) instead of FMAs (7.6 per ns: two per cycle). */
#define FS_FMA12(FMA)                                                                        \
  do {                                                                                       \
    a0 = FMA(a0, m, b); a1 = FMA(a1, m, b); a2 = FMA(a2, m, b); a3 = FMA(a3, m, b);           \
    a4 = FMA(a4, m, b); a5 = FMA(a5, m, b); a6 = FMA(a6, m, b); a7 = FMA(a7, m, b);           \
    a8 = FMA(a8, m, b); a9 = FMA(a9, m, b); a10 = FMA(a10, m, b); a11 = FMA(a11, m, b);       \
  } while (0)
#define FS_FMA12_KEEP(C)                                                                      \
  __asm__ volatile("" : C(a0), C(a1), C(a2), C(a3), C(a4), C(a5), C(a6), C(a7), C(a8), C(a9), \
                   C(a10), C(a11))

__attribute__((target("avx2,fma"))) static double fma256_per_ns(long n) {
  const __m256 m = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  __m256 a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b, a8 = b, a9 = b,
         a10 = b, a11 = b;
  const double t0 = now();
  for (long i = 0; i < n; i++) {
    FS_FMA12(_mm256_fmadd_ps);
    FS_FMA12_KEEP("+x");
  }
  const double t = now() - t0;
  FS_FMA12_KEEP("+x");
  return 12.0 * n / (t * 1e9);
}

__attribute__((target("avx512f"))) static double fma512_per_ns(long n) {
  const __m512 m = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  __m512 a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b, a8 = b, a9 = b,
         a10 = b, a11 = b;
  const double t0 = now();
  for (long i = 0; i < n; i++) {
    FS_FMA12(_mm512_fmadd_ps);
    FS_FMA12_KEEP("+v");
  }
  const double t = now() - t0;
  FS_FMA12_KEEP("+v");
  return 12.0 * n / (t * 1e9);
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s H C STRIDE\n", argv[0]);
    return 2;
  }
  const size_t h = (size_t)atol(argv[1]), c = (size_t)atol(argv[2]), s = (size_t)atol(argv[3]);
  if (h < 2 || c < 1 || (s != 1 && s != 2)) {
    fprintf(stderr, "H >= 2, C >= 1, STRIDE 1 or 2\n");
    return 2;
  }
  srand(1);
  __builtin_cpu_init();
  bench("scalar", s == 1 ? fs_f32_dwconv2d_chw_3x3s1__scalar : fs_f32_dwconv2d_chw_3x3s2__scalar,
        h, c, s);
  bench("sse2", s == 1 ? fs_f32_dwconv2d_chw_3x3s1__sse2 : fs_f32_dwconv2d_chw_3x3s2__sse2, h, c,
        s);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    bench("avx2", s == 1 ? fs_f32_dwconv2d_chw_3x3s1__avx2 : fs_f32_dwconv2d_chw_3x3s2__avx2, h,
          c, s);
    printf("FMA rate: %.2f 256-bit FMAs per ns\n", fma256_per_ns(100000000));
  }
  if (__builtin_cpu_supports("avx512f")) {
    bench("avx512", s == 1 ? fs_f32_dwconv2d_chw_3x3s1__avx512 : fs_f32_dwconv2d_chw_3x3s2__avx512,
          h, c, s);
    printf("FMA rate: %.2f 512-bit FMAs per ns\n", fma512_per_ns(100000000));
  }
  return 0;
}
