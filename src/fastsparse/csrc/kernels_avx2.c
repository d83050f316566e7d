/* AVX2+FMA kernels. Compiled on their own with -mavx2 -mfma; only dispatch decides to call them.
 * Every translation unit compiles with -ffp-contract=off: only the explicit FMAs of the
 * vocabulary fuse. One unit per ISA, each with its own flags (setup.py). */
#include "vec_avx2.h"

#include "spmm_impl.h"
#include "chw_impl.h"

FS_SPMM_AVX2_LIST(FS_SPMM_DEFINE)
FS_CHW_DEFINE(avx2)
