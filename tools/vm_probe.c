/* Four facts about a shared VM that decide what an interleaved benchmark measures
 * (BENCHMARKS.md, session 9):
 *
 *   1. whether data in L3 survives a pause: a 4 MB buffer (larger than L2) is read once per
 *      64-byte line right after reading it, and again after an 8 ms spin that touches no
 *      memory; other guests that evict it in between make the second read slower;
 *   2. the one-way latency of a cache line between CPU 0 and CPU 1 (a ping-pong), which on a
 *      VM changes when the host moves the vCPUs (session 9: 28-38 ns, at times 156-190 ns);
 *   3. whether CPU 0 and CPU 1 run on two cores: a chunk of independent 256-bit FMAs (bound
 *      by the FMA units, not by latency) timed on each CPU alone, then on both at once. On
 *      two free cores both keep their alone time; when the host runs the two vCPUs on the
 *      two hyperthreads of one core each takes about twice as long, and a 2-thread call can
 *      be no faster than a 1-thread one; an alone time well above the best one means another
 *      guest's thread shares that vCPU's core (session 15).
 *
 *   4. what waking a thread that sleeps on the other vCPU costs, as an OpenMP team's master
 *      does at the start of a call after an idle gap longer than the workers spin (libgomp:
 *      ~7-10 ms): after 20 ms of sleep, how long the waker spends in futex(FUTEX_WAKE) and
 *      how late the woken thread runs. In a VM the wake is an IPI to a halted vCPU; the
 *      sender leaves the guest for it (session 17: 15 us in the syscall, the thread running
 *      49 us after the wake began).
 *
 *   gcc -O2 -pthread tools/vm_probe.c -o /tmp/vm_probe && /tmp/vm_probe [rounds]
 *
 * With `rounds`, probes 2 and 3 repeat that many times, half a second apart: the state moves
 * every few seconds.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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

/* Seconds for 20000 rounds of 12 independent FMA chains (median of 15). */
__attribute__((target("avx2,fma"))) static double fma_chunk(void) {
  double best[15];
  for (int r = 0; r < 15; r++) {
    __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    const __m256 m = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
    const double t = now();
    for (int i = 0; i < 20000; i++) {
      a0 = _mm256_fmadd_ps(a0, m, c); a1 = _mm256_fmadd_ps(a1, m, c);
      a2 = _mm256_fmadd_ps(a2, m, c); a3 = _mm256_fmadd_ps(a3, m, c);
      a4 = _mm256_fmadd_ps(a4, m, c); a5 = _mm256_fmadd_ps(a5, m, c);
      a6 = _mm256_fmadd_ps(a6, m, c); a7 = _mm256_fmadd_ps(a7, m, c);
      a8 = _mm256_fmadd_ps(a8, m, c); a9 = _mm256_fmadd_ps(a9, m, c);
      a10 = _mm256_fmadd_ps(a10, m, c); a11 = _mm256_fmadd_ps(a11, m, c);
      __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                       "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    }
    best[r] = now() - t;
  }
  for (int i = 1; i < 15; i++) { /* insertion sort: 15 values */
    const double v = best[i];
    int j = i - 1;
    for (; j >= 0 && best[j] > v; j--) best[j + 1] = best[j];
    best[j + 1] = v;
  }
  return best[7];
}

static atomic_int go;
static double fma_other;

/* Both threads wait here until both have arrived: then their chunks overlap. */
static void meet(void) {
  atomic_fetch_add(&go, 1);
  while (atomic_load(&go) < 2) {
  }
}

static void* fma_on_cpu1(void* arg) {
  pin(1);
  if (arg != NULL) meet();
  fma_other = fma_chunk();
  return NULL;
}

/* Probe 3: the FMA chunk on CPU 0 alone, on CPU 1 alone, then on both at once. */
static void two_cores(void) {
  pthread_t other;
  pin(0);
  const double alone0 = fma_chunk();
  if (pthread_create(&other, NULL, fma_on_cpu1, NULL) != 0) return;
  pthread_join(other, NULL);
  const double alone1 = fma_other;
  atomic_store(&go, 0);
  if (pthread_create(&other, NULL, fma_on_cpu1, &go) != 0) return;
  meet();
  const double both0 = fma_chunk();
  pthread_join(other, NULL);
  printf("FMA chunk alone: CPU 0 %.1f us, CPU 1 %.1f us; both at once: %.1f and %.1f us\n",
         alone0 * 1e6, alone1 * 1e6, both0 * 1e6, fma_other * 1e6);
}

static int cmp(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static void ping_pong(void);

/* Probe 4: the sleeper waits on `wake_word` in futex(FUTEX_WAIT) on CPU 1. */
static _Alignas(64) atomic_int wake_word;
static double woke_at;

static void* sleeper(void* arg) {
  (void)arg;
  pin(1);
  for (;;) {
    int w;
    while ((w = atomic_load(&wake_word)) == 0) {
      syscall(SYS_futex, &wake_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    }
    if (w < 0) return NULL;
    woke_at = now();
    atomic_store(&wake_word, 0);
  }
}

static void wake_after_sleep(void) {
  enum { WAKES = 40 };
  double in_call[WAKES], late[WAKES];
  pthread_t other;
  atomic_store(&wake_word, 0);
  if (pthread_create(&other, NULL, sleeper, NULL) != 0) return;
  for (int i = 0; i < WAKES; i++) {
    const struct timespec idle = {0, 20000000};
    nanosleep(&idle, NULL);
    const double t = now();
    atomic_store(&wake_word, 1);
    syscall(SYS_futex, &wake_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    in_call[i] = now() - t;
    while (atomic_load(&wake_word) != 0) {
    }
    late[i] = woke_at - t;
  }
  atomic_store(&wake_word, -1);
  syscall(SYS_futex, &wake_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  pthread_join(other, NULL);
  qsort(in_call, WAKES, sizeof(double), cmp);
  qsort(late, WAKES, sizeof(double), cmp);
  printf("waking a thread asleep 20 ms on CPU 1: %.1f us in futex_wake, running after %.1f us "
         "(medians; p90 %.1f)\n", in_call[WAKES / 2] * 1e6, late[WAKES / 2] * 1e6,
         late[WAKES * 9 / 10] * 1e6);
}

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? atoi(argv[1]) : 1;
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

  free(buf);
  wake_after_sleep();
  for (int r = 0; r < rounds; r++) {
    if (r > 0) {
      const struct timespec half = {0, 500000000};
      nanosleep(&half, NULL);
    }
    ping_pong();
    two_cores();
  }
  return 0;
}

static void ping_pong(void) {
  pthread_t other;
  pin(0);
  atomic_store(&flag, 0);
  if (pthread_create(&other, NULL, pong, NULL) != 0) return;
  const double t = now();
  for (int i = 0; i < PINGS; i++) {
    atomic_store_explicit(&flag, 2 * i + 1, memory_order_release);
    while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + 2) {
    }
  }
  const double dt = now() - t;
  pthread_join(other, NULL);
  printf("cache line CPU 0 -> CPU 1: %.0f ns one way\n", dt / PINGS / 2 * 1e9);
}
