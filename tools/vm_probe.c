/* Two facts about a shared VM that decide what an interleaved benchmark measures
 * (BENCHMARKS.md, session 9):
 *
 *   1. whether data in L3 survives a pause: a 4 MB buffer (larger than L2) is read once per
 *      64-byte line right after reading it, and again after an 8 ms spin that touches no
 *      memory; other guests that evict it in between make the second read slower;
 *   2. the one-way latency of a cache line between CPU 0 and CPU 1 (a ping-pong), which on a
 *      VM changes when the host moves the vCPUs.
 *
 *   gcc -O2 -pthread tools/vm_probe.c -o /tmp/vm_probe && /tmp/vm_probe
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

enum { BUF = 4 << 20, ROUNDS = 50, PINGS = 200000 };

static long read_lines(const volatile char* buf) {
  long sum = 0;
  for (size_t i = 0; i < BUF; i += 64) sum += buf[i];
  return sum;
}

static _Alignas(64) atomic_int flag;

static void* pong(void* arg) {
  (void)arg;
  pin(1);
  for (int i = 0; i < PINGS; i++) {
    while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 1) {
    }
    atomic_store_explicit(&flag, 2 * i + 2, memory_order_release);
  }
  return NULL;
}

static int cmp(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(void) {
  pin(0);
  char* buf = malloc(BUF);
  if (buf == NULL) return 1;
  memset(buf, 1, BUF);
  double warm[ROUNDS], paused[ROUNDS];
  volatile long sink = 0;
  for (int r = 0; r < ROUNDS; r++) {
    sink += read_lines(buf);
    double t = now();
    sink += read_lines(buf);
    warm[r] = now() - t;
    for (t = now(); now() - t < 0.008;) {
    }
    t = now();
    sink += read_lines(buf);
    paused[r] = now() - t;
  }
  qsort(warm, ROUNDS, sizeof(double), cmp);
  qsort(paused, ROUNDS, sizeof(double), cmp);
  printf("4 MB read, one load per line: %.1f us back to back, %.1f us after an 8 ms spin "
         "(medians)\n", warm[ROUNDS / 2] * 1e6, paused[ROUNDS / 2] * 1e6);

  pthread_t other;
  if (pthread_create(&other, NULL, pong, NULL) != 0) return 1;
  const double t = now();
  for (int i = 0; i < PINGS; i++) {
    atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
    while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {
    }
  }
  const double dt = now() - t;
  pthread_join(other, NULL);
  printf("cache line CPU 0 -> CPU 1: %.0f ns one way\n", dt / PINGS / 2 * 1e9);
  free(buf);
  return 0;
}
