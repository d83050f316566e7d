/* What the C benchmarks in tools/ share: a monotonic clock and the comparison qsort needs to
 * take medians. Include after defining _POSIX_C_SOURCE (clock_gettime). */
#ifndef FS_TOOLS_BENCH_CLOCK_H
#define FS_TOOLS_BENCH_CLOCK_H

#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

#endif /* FS_TOOLS_BENCH_CLOCK_H */
