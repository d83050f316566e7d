/* AVX-512F kernels. Compiled on their own with -mavx512f; only dispatch decides to call them.
 * Every translation unit compiles with -ffp-contract=off: only the explicit FMAs of the
 * vocabulary fuse. One unit per ISA, each with its own flags (setup.py). */
#include "vec_avx512.h"

#include "spmm_impl.h"
#include "chw_impl.h"

FS_SPMM_AVX512_LIST(FS_SPMM_DEFINE)
FS_CHW_DEFINE(avx512)
