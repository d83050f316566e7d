/* Runtime dispatch: which kernel variants this build has and which this CPU can run.
 * Compiled with baseline flags only; the ISA-specific code lives in its own translation
 * units, and nothing here executes an instruction the CPU may lack. The choice between
 * supported ISAs (and the FASTSPARSE_ISA override) is made in Python (fastsparse/_dispatch.py),
 * from fs_isa_supported(). */
#include <stddef.h>

#include "fs_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

/* XCR0: the OS saves the XMM (bit 1) and YMM (bit 2) register state on context switches. */
static unsigned long long fs_xgetbv0(void) {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((unsigned long long)edx << 32) | eax;
}

/* AVX-512F: the CPU flag, and the OS saving opmask and all 32 zmm registers (XCR0 bits 5-7). */
static int fs_cpu_has_avx512f(void) {
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1)) return 0;
  if ((fs_xgetbv0() & 0xE6) != 0xE6) return 0;
  if (__get_cpuid_max(0, NULL) < 7) return 0;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  return (ebx >> 16) & 1;
}

static int fs_cpu_has_avx2_fma(void) {
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
  const int osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1, fma = (ecx >> 12) & 1;
  if (!(osxsave && avx && fma)) return 0;
  if ((fs_xgetbv0() & 0x6) != 0x6) return 0;
  if (__get_cpuid_max(0, NULL) < 7) return 0;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  return (ebx >> 5) & 1; /* AVX2 */
}
#endif

#define FS_ENTRY(MR, NR, UNROLL, SUFFIX, ISA)                                                 \
  {"fs_f32_spmm_minmax_" #MR "x" #NR #SUFFIX "__" #ISA, MR, NR, UNROLL,                      \
   FS_SPMM_PREFETCH(SUFFIX), FS_SPMM_NAME(MR, NR, SUFFIX, ISA)},

static const fs_spmm_kernel fs_scalar_kernels[] = {FS_SPMM_SCALAR_LIST(FS_ENTRY)};
#if defined(FS_HAVE_SSE2)
static const fs_spmm_kernel fs_sse2_kernels[] = {FS_SPMM_SSE2_LIST(FS_ENTRY)};
#endif
#if defined(FS_HAVE_AVX2)
static const fs_spmm_kernel fs_avx2_kernels[] = {FS_SPMM_AVX2_LIST(FS_ENTRY)};
#endif
#if defined(FS_HAVE_AVX512)
static const fs_spmm_kernel fs_avx512_kernels[] = {FS_SPMM_AVX512_LIST(FS_ENTRY)};
#endif
#if defined(FS_HAVE_NEON)
static const fs_spmm_kernel fs_neon_kernels[] = {FS_SPMM_NEON_LIST(FS_ENTRY)};
#endif

static const char* const fs_isa_names[FS_ISA_COUNT] = {"scalar", "sse2", "avx2", "neon", "avx512"};

const char* fs_isa_name(int isa) {
  return (isa >= 0 && isa < FS_ISA_COUNT) ? fs_isa_names[isa] : NULL;
}

static const fs_spmm_kernel* fs_table(int isa, size_t* count) {
  switch (isa) {
    case FS_ISA_SCALAR:
      *count = sizeof(fs_scalar_kernels) / sizeof(fs_scalar_kernels[0]);
      return fs_scalar_kernels;
#if defined(FS_HAVE_SSE2)
    case FS_ISA_SSE2:
      *count = sizeof(fs_sse2_kernels) / sizeof(fs_sse2_kernels[0]);
      return fs_sse2_kernels;
#endif
#if defined(FS_HAVE_AVX2)
    case FS_ISA_AVX2:
      *count = sizeof(fs_avx2_kernels) / sizeof(fs_avx2_kernels[0]);
      return fs_avx2_kernels;
#endif
#if defined(FS_HAVE_AVX512)
    case FS_ISA_AVX512:
      *count = sizeof(fs_avx512_kernels) / sizeof(fs_avx512_kernels[0]);
      return fs_avx512_kernels;
#endif
#if defined(FS_HAVE_NEON)
    case FS_ISA_NEON:
      *count = sizeof(fs_neon_kernels) / sizeof(fs_neon_kernels[0]);
      return fs_neon_kernels;
#endif
    default:
      *count = 0;
      return NULL;
  }
}

static int fs_detect(int isa) {
  size_t count;
  if (fs_table(isa, &count) == NULL || count == 0) return 0;
  switch (isa) {
    case FS_ISA_SCALAR:
      return 1;
#if defined(__x86_64__) || defined(_M_X64)
    case FS_ISA_SSE2:
      return 1; /* part of x86-64 */
    case FS_ISA_AVX2:
      return fs_cpu_has_avx2_fma();
    case FS_ISA_AVX512:
      return fs_cpu_has_avx512f();
#if defined(FS_NEON_VIA_SIMDE)
    case FS_ISA_NEON:
      return fs_cpu_has_avx2_fma(); /* test build: the NEON source through SIMDe, -mavx2 -mfma */
#endif
#endif
#if defined(__aarch64__)
    case FS_ISA_NEON:
      return 1; /* mandatory on AArch64 */
#endif
    default:
      return 0;
  }
}

/* cpuid traps to the hypervisor in a VM (tens of microseconds), so detect once. Racing first
 * calls compute the same answer; the relaxed atomics only keep the access well defined. */
int fs_isa_supported(int isa) {
  static int cache[FS_ISA_COUNT]; /* 0 = unknown, 1 = no, 2 = yes */
  if (isa < 0 || isa >= FS_ISA_COUNT) return 0;
  int state = __atomic_load_n(&cache[isa], __ATOMIC_RELAXED);
  if (state == 0) {
    state = fs_detect(isa) ? 2 : 1;
    __atomic_store_n(&cache[isa], state, __ATOMIC_RELAXED);
  }
  return state == 2;
}

size_t fs_spmm_kernel_count(int isa) {
  size_t count;
  fs_table(isa, &count);
  return count;
}

const fs_spmm_kernel* fs_spmm_kernel_at(int isa, size_t index) {
  size_t count;
  const fs_spmm_kernel* table = fs_table(isa, &count);
  return index < count ? &table[index] : NULL;
}


/* ---- CHW companion ops ---- */
#define FS_CHW_TABLE(ISA)                                                                      \
  {{{"fs_f32_dwconv2d_chw_3x3s1__" #ISA, "fs_f32_dwconv2d_chw_3x3s2__" #ISA},                  \
    {"fs_f32_dwconv2d_chw_5x5s1__" #ISA, "fs_f32_dwconv2d_chw_5x5s2__" #ISA}},                 \
   {{fs_f32_dwconv2d_chw_3x3s1__##ISA, fs_f32_dwconv2d_chw_3x3s2__##ISA},                      \
    {fs_f32_dwconv2d_chw_5x5s1__##ISA, fs_f32_dwconv2d_chw_5x5s2__##ISA}},                     \
   {"fs_f32_conv2d_chw_3x3s1_4x2v__" #ISA, "fs_f32_conv2d_chw_3x3s2_4x2v__" #ISA},             \
   {fs_f32_conv2d_chw_3x3s1_4x2v__##ISA, fs_f32_conv2d_chw_3x3s2_4x2v__##ISA},                 \
   "fs_f32_gavgpool_chw_4v__" #ISA, fs_f32_gavgpool_chw_4v__##ISA,                             \
   "fs_f32_vadd_minmax_4v__" #ISA, fs_f32_vadd_minmax_4v__##ISA}

static const fs_chw_ops fs_scalar_chw = FS_CHW_TABLE(scalar);
#if defined(FS_HAVE_SSE2)
static const fs_chw_ops fs_sse2_chw = FS_CHW_TABLE(sse2);
#endif
#if defined(FS_HAVE_AVX2)
static const fs_chw_ops fs_avx2_chw = FS_CHW_TABLE(avx2);
#endif
#if defined(FS_HAVE_AVX512)
static const fs_chw_ops fs_avx512_chw = FS_CHW_TABLE(avx512);
#endif
#if defined(FS_HAVE_NEON)
static const fs_chw_ops fs_neon_chw = FS_CHW_TABLE(neon);
#endif

const fs_chw_ops* fs_chw_ops_for(int isa) {
  switch (isa) {
    case FS_ISA_SCALAR:
      return &fs_scalar_chw;
#if defined(FS_HAVE_SSE2)
    case FS_ISA_SSE2:
      return &fs_sse2_chw;
#endif
#if defined(FS_HAVE_AVX2)
    case FS_ISA_AVX2:
      return &fs_avx2_chw;
#endif
#if defined(FS_HAVE_AVX512)
    case FS_ISA_AVX512:
      return &fs_avx512_chw;
#endif
#if defined(FS_HAVE_NEON)
    case FS_ISA_NEON:
      return &fs_neon_chw;
#endif
    default:
      return NULL;
  }
}
