/* What one core of this machine issues per cycle, for the bounds the kernels are judged by
 * (BENCHMARKS.md, sessions 8 and 10): 512-bit FMAs alone, FMAs with two-source permutes
 * mixed in (on Zen 4 both compete for the same ports), or with in-quarter shuffles (vshufps:
 * not on Zen 4), and loads feeding FMAs, aligned or crossing a cache line. AVX-512F only;
 * nothing here is part of the package.
 *
 *   gcc -O2 tools/port_microbench.c -o /tmp/port_bench && /tmp/port_bench
 *
 * Every chain lives in a named variable: an array of chains was kept in memory by GCC, and
 * the loop then timed its stores instead of its FMAs. */
#define _POSIX_C_SOURCE 199309L
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define FMA(x) x = _mm512_fmadd_ps(x, m, b)
#define PERM(x, y) x = shuffle ? _mm512_shuffle_ps(x, y, 0x88) : _mm512_permutex2var_ps(x, idx, y)

/* ns per iteration of 10 independent FMAs plus `perms` independent two-source permutes
 * (vpermt2ps), or in-quarter shuffles (vshufps) if `shuffle`. */
__attribute__((target("avx512f"))) static double fma_perm_ns(long n, int perms, int shuffle) {
  const __m512 m = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  __m512 a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b, a8 = b, a9 = b;
  __m512 p0 = m, p1 = m, p2 = m, p3 = m, p4 = m, p5 = m;
  const double t0 = now();
  for (long i = 0; i < n; i++) {
    FMA(a0); FMA(a1); FMA(a2); FMA(a3); FMA(a4); FMA(a5); FMA(a6); FMA(a7); FMA(a8); FMA(a9);
    if (perms >= 3) { PERM(p0, p3); PERM(p1, p4); PERM(p2, p5); }
    if (perms >= 6) { PERM(p3, p0); PERM(p4, p1); PERM(p5, p2); }
    if (perms >= 12) {
      PERM(p0, p3); PERM(p1, p4); PERM(p2, p5); PERM(p3, p0); PERM(p4, p1); PERM(p5, p2);
    }
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),
                     "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9));
    __asm__ volatile("" : "+v"(p0), "+v"(p1), "+v"(p2), "+v"(p3), "+v"(p4), "+v"(p5));
  }
  return (now() - t0) / (double)n * 1e9;
}

/* ns per iteration of 8 loads, each feeding its own FMA chain, `offset` floats past 64-byte
 * boundaries in an L1-resident buffer. */
__attribute__((target("avx512f"))) static double load_fma_ns(const float* buf, long n, int offset) {
  const __m512 w = _mm512_set1_ps(0.5f);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const double t0 = now();
  for (long i = 0; i < n; i++) {
    const float* p = buf + offset + (i & 63) * 128;
    a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p), a0);
    a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16), a1);
    a2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 32), a2);
    a3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 48), a3);
    a4 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 64), a4);
    a5 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 80), a5);
    a6 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 96), a6);
    a7 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 112), a7);
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),
                     "+v"(a6), "+v"(a7));
  }
  return (now() - t0) / (double)n * 1e9;
}

int main(void) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) {
    fprintf(stderr, "needs AVX-512F\n");
    return 2;
  }
  const long n = 50000000;
  const int perms[4] = {0, 3, 6, 12};
  for (int shuffle = 0; shuffle < 2; shuffle++) {
    for (int i = shuffle; i < 4; i++) {
      const double t = fma_perm_ns(n, perms[i], shuffle);
      printf("10 FMAs + %2d %s: %.3f ns per iteration (%.2f 512-bit FMAs per ns)\n", perms[i],
             shuffle ? "vshufps " : "vpermt2ps", t, 10.0 / t);
    }
  }
  float* buf = aligned_alloc(64, (64 * 128 + 64) * sizeof(float));
  if (buf == NULL) return 1;
  for (int i = 0; i < 64 * 128 + 64; i++) buf[i] = 1e-3f * (float)(i % 7);
  const int offsets[3] = {0, 1, 8};
  for (int i = 0; i < 3; i++) {
    printf("8 loads + 8 FMAs, loads %d floats past a line boundary: %.3f ns\n", offsets[i],
           load_fma_ns(buf, n, offsets[i]));
  }
  free(buf);
  return 0;
}
