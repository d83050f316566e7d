/* SSE2 kernels (the x86-64 baseline: every x86-64 CPU runs them).
 * Every translation unit compiles with -ffp-contract=off: only the explicit FMAs of the
 * vocabulary fuse. One unit per ISA, each with its own flags (setup.py). */
#include "vec_sse2.h"

#include "spmm_impl.h"
#include "chw_impl.h"

FS_SPMM_SSE2_LIST(FS_SPMM_DEFINE)
FS_CHW_DEFINE(sse2)
