/* Two threads, one step over C planes of HW floats (y = 2 x), after a step that wrote x the
 * same way: how the threads split the planes decides what the step costs on this machine.
 *
 *   gcc -O3 -mavx2 -fopenmp tools/xcore_bench.c -o /tmp/xcore_bench && /tmp/xcore_bench [C HW]
 *
 *   one thread     all of every plane
 *   positions      thread t: positions [t HW / 2, (t + 1) HW / 2) of every plane (each cut on
 *                  a 64-byte line: no line is written by both threads)
 *   channels       thread t: planes [t C / 2, (t + 1) C / 2)
 *   row pieces     the positions split, but each half of every plane stored in its thread's
 *                  own block (C half planes after one another): fastsparse's row pieces
 *
 * Prints the median time of the step. On the 2-vCPU Xeon of BENCHMARKS.md, C = 192:
 *   HW = 784 (28x28):  one thread 11.7 us, positions 23.5 us, channels 6.2 us, row pieces 6.3 us
 *   HW = 3136 (56x56): one thread 153 us,  positions 77 us,   channels 40 us,  row pieces 40 us
 * Cut by positions, two threads are slower than one at 28x28: each thread's hardware
 * prefetchers run on into the other's half of every plane, whose lines the other core then
 * writes; in row pieces each thread's data is one block. */
#define _POSIX_C_SOURCE 199309L
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bench_clock.h"

enum { ONE, POSITIONS, CHANNELS, PIECES, MODES };
static const char* names[MODES] = {"one thread", "positions", "channels", "row pieces"};

/* Channel c's floats from position m0 on, in mode `mode`: planes of hw floats, or for row
 * pieces two blocks of `channels` planes of `half` floats (m0 is 0 or half there). */
static float* plane_at(float* base, int mode, size_t channels, size_t hw, size_t half, size_t c,
                       size_t m0) {
  if (mode != PIECES) return base + c * hw + m0;
  return base + (m0 ? channels * half : 0) + c * half;
}

int main(int argc, char** argv) {
  if (argc != 1 && argc != 3) {
    fprintf(stderr, "usage: %s [C HW]\n", argv[0]);
    return 2;
  }
  const size_t channels = argc == 3 ? (size_t)atol(argv[1]) : 192;
  const size_t hw = argc == 3 ? (size_t)atol(argv[2]) : 784;
  if (channels < 2 || hw < 32) {
    fprintf(stderr, "C must be >= 2 and HW >= 32\n");
    return 2;
  }
  const size_t half = (hw / 2 + 15) / 16 * 16; /* the cut, on a line */
  const size_t floats = 2 * channels * half; /* >= channels * hw */
  float* x = aligned_alloc(64, floats * sizeof(float));
  float* y = aligned_alloc(64, floats * sizeof(float));
  enum { REPS = 301 };
  static double t[REPS];
  for (int mode = 0; mode < MODES; mode++) {
    for (size_t i = 0; i < floats; i++) x[i] = y[i] = 1.0f;
#pragma omp parallel num_threads(mode == ONE ? 1 : 2)
    {
      const size_t me = (size_t)omp_get_thread_num();
      size_t c0 = 0, c1 = channels, m0 = 0, m1 = hw;
      if (mode == CHANNELS) {
        c0 = me * channels / 2, c1 = (me + 1) * channels / 2;
      } else if (mode != ONE) {
        m0 = me ? half : 0, m1 = me ? hw : half;
      }
      for (int r = 0; r < REPS; r++) {
        for (size_t c = c0; c < c1; c++) { /* the step before writes x */
          float* xc = plane_at(x, mode, channels, hw, half, c, m0);
          for (size_t m = 0; m < m1 - m0; m++) xc[m] = (float)r;
        }
#pragma omp barrier
        const double t0 = now();
        for (size_t c = c0; c < c1; c++) {
          const float* xc = plane_at(x, mode, channels, hw, half, c, m0);
          float* yc = plane_at(y, mode, channels, hw, half, c, m0);
          for (size_t m = 0; m < m1 - m0; m++) yc[m] = 2.0f * xc[m];
        }
#pragma omp barrier
        if (me == 0) t[r] = now() - t0;
      }
    }
    qsort(t, REPS, sizeof(double), cmp_double);
    printf("%-11s %7.2f us\n", names[mode], t[REPS / 2] * 1e6);
  }
  free(x);
  free(y);
  return 0;
}
