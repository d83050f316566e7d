/* Implementation of harness.h: RNG, guarded buffers, failure reporting. */
#define _DEFAULT_SOURCE
#include "harness.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* --- RNG ---------------------------------------------------------------------------------- */
void fs_rng_seed(fs_rng* r, uint64_t seed) {
  r->s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  if (r->s == 0) r->s = 1;
  for (int i = 0; i < 4; i++) fs_rng_next(r);
}
uint64_t fs_rng_next(fs_rng* r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 0x2545F4914F6CDD1Dull;
}
size_t fs_rng_below(fs_rng* r, size_t n) { return (size_t)(fs_rng_next(r) % n); }
float fs_rng_sym(fs_rng* r) {
  return (float)((double)(fs_rng_next(r) >> 40) / (double)(1ull << 23) - 1.0);
}

/* --- guarded buffers ----------------------------------------------------------------------- */
static const uint32_t CANARY_BITS = 0x7FA5A5A5u; /* a NaN no kernel produces */

void fs_guarded_alloc(fs_guarded* g, size_t rows) {
  const size_t guard = (size_t)sysconf(_SC_PAGESIZE);
  /* Whole pages that hold the widest row. */
  size_t data = guard;
  while (data < FS_ROW_CAPACITY * sizeof(float)) data += guard;
  g->data = data;
  g->rows = rows;
  const size_t stride = data + guard;
  /* One more PROT_NONE page in front of row 0: every row page is preceded by a guard too. */
  void* p = mmap(NULL, guard + rows * stride, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED || mprotect(p, guard, PROT_NONE) != 0) {
    perror("mmap");
    exit(2);
  }
  g->base = (char*)p + guard;
  for (size_t r = 0; r < rows; r++) {
    if (mprotect(g->base + r * stride + data, guard, PROT_NONE) != 0) {
      perror("mprotect");
      exit(2);
    }
  }
}

void fs_guarded_free(fs_guarded* g) {
  const size_t guard = (size_t)sysconf(_SC_PAGESIZE);
  munmap(g->base - guard, guard + g->rows * fs_guarded_stride(g));
  g->base = NULL;
}

size_t fs_guarded_stride(const fs_guarded* g) {
  return g->data + (size_t)sysconf(_SC_PAGESIZE);
}

float* fs_guarded_row(const fs_guarded* g, size_t r, size_t len) {
  if (r >= g->rows || len > FS_ROW_CAPACITY) {
    fprintf(stderr, "test bug: row %zu of %zu, len %zu\n", r, g->rows, len);
    exit(2);
  }
  return (float*)(g->base + r * fs_guarded_stride(g) + g->data) - len;
}

float* fs_guarded_row_at(const fs_guarded* g, size_t r, size_t len, int front) {
  float* row = fs_guarded_row(g, r, len);
  return front ? (float*)(g->base + r * fs_guarded_stride(g)) : row;
}

void fs_guarded_fill_canary(fs_guarded* g) { fs_guarded_fill_canary_rows(g, g->rows); }

void fs_guarded_fill_canary_rows(fs_guarded* g, size_t rows) {
  if (rows > g->rows) rows = g->rows;
  for (size_t r = 0; r < rows; r++) {
    uint32_t* p = (uint32_t*)(g->base + r * fs_guarded_stride(g));
    for (size_t i = 0; i < g->data / sizeof(uint32_t); i++) p[i] = CANARY_BITS;
  }
}

static int is_canary(const float* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t bits;
    memcpy(&bits, p + i, sizeof bits);
    if (bits != CANARY_BITS) return 0;
  }
  return 1;
}

int fs_guarded_canary_before(const fs_guarded* g, size_t r, size_t len, size_t n) {
  const float* row = fs_guarded_row(g, r, len);
  const float* page = (const float*)(g->base + r * fs_guarded_stride(g));
  if ((size_t)(row - page) < n) n = (size_t)(row - page);
  return is_canary(row - n, n);
}

int fs_guarded_canary_row(const fs_guarded* g, size_t r, size_t len) {
  return is_canary(fs_guarded_row(g, r, len), len);
}

int fs_guarded_canary_outside(const fs_guarded* g, size_t r, size_t len, int front) {
  const float* page = (const float*)(g->base + r * fs_guarded_stride(g));
  const size_t n = g->data / sizeof(float);
  const float* row = fs_guarded_row_at(g, r, len, front);
  const size_t at = (size_t)(row - page);
  return is_canary(page, at) && is_canary(row + len, n - at - len);
}

/* --- guarded blocks -------------------------------------------------------------------------- */
void fs_block_alloc(fs_block* b, size_t floats) {
  const size_t guard = (size_t)sysconf(_SC_PAGESIZE);
  size_t data = guard;
  while (data < floats * sizeof(float)) data += guard;
  char* p = mmap(NULL, data + 2 * guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED || mprotect(p, guard, PROT_NONE) != 0 ||
      mprotect(p + guard + data, guard, PROT_NONE) != 0) {
    perror("mmap");
    exit(2);
  }
  b->map = p;
  b->page = (float*)(p + guard);
  b->capacity = data / sizeof(float);
}

void fs_block_free(fs_block* b) {
  const size_t guard = (size_t)sysconf(_SC_PAGESIZE);
  munmap(b->map, b->capacity * sizeof(float) + 2 * guard);
  b->map = NULL;
}

float* fs_block_at(const fs_block* b, size_t n, int front) {
  if (n > b->capacity) {
    fprintf(stderr, "test bug: block of %zu floats, %zu asked\n", b->capacity, n);
    exit(2);
  }
  return front ? b->page : b->page + b->capacity - n;
}

void fs_block_fill_canary(fs_block* b) {
  uint32_t* p = (uint32_t*)b->page;
  for (size_t i = 0; i < b->capacity; i++) p[i] = CANARY_BITS;
}

int fs_block_canary_outside(const fs_block* b, size_t n, int front) {
  const float* at = fs_block_at(b, n, front);
  const size_t before = (size_t)(at - b->page);
  return is_canary(b->page, before) && is_canary(at + n, b->capacity - before - n);
}

int fs_is_canary(float x) { return is_canary(&x, 1); }

/* --- clamps ------------------------------------------------------------------------------- */
const char* const fs_clamp_names[FS_CLAMP_COUNT] = {"none", "relu6", "tight", "lo=hi"};

void fs_clamp_bounds(int clamp, float scale, float* lo, float* hi) {
  switch (clamp) {
    case FS_CLAMP_RELU6: *lo = 0.0f; *hi = 6.0f * scale; break;
    case FS_CLAMP_TIGHT: *lo = -0.5f * scale; *hi = 0.25f * scale; break;
    case FS_CLAMP_POINT: *lo = *hi = 0.125f * scale; break;
    default: *lo = -INFINITY; *hi = INFINITY;
  }
}

float fs_rng_scale(fs_rng* r) {
  static const float scales[] = {1.0f, 1.0f, 1e-3f, 1e3f};
  return scales[fs_rng_below(r, 4)];
}

/* --- reporting ----------------------------------------------------------------------------- */
static char current_case[512];
static size_t failures;
#define FS_MAX_PRINTED 20

void fs_set_case(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(current_case, sizeof current_case, fmt, ap);
  va_end(ap);
}

const char* fs_current_case(void) { return current_case; }

int fs_fail(const char* fmt, ...) {
  if (failures++ < FS_MAX_PRINTED) {
    va_list ap;
    fprintf(stderr, "FAIL [%s]: ", current_case);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
  } else if (failures == FS_MAX_PRINTED + 1) {
    fprintf(stderr, "(further failures not printed)\n");
  }
  return 1;
}

size_t fs_failures(void) { return failures; }

static void on_fault(int sig) {
  static const char head[] = "\nFATAL: a kernel touched memory outside its rows (guard page) in [";
  ssize_t ignored = write(2, head, sizeof head - 1);
  ignored = write(2, current_case, strlen(current_case));
  ignored = write(2, "]\n", 2);
  (void)ignored;
  _exit(128 + sig);
}

void fs_install_fault_handler(void) {
  signal(SIGSEGV, on_fault);
  signal(SIGBUS, on_fault);
}
