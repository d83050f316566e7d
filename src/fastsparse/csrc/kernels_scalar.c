/* Scalar kernels. Compiled with -fno-tree-vectorize so that they stay scalar.
 * Every translation unit compiles with -ffp-contract=off: only the explicit FMAs of the
 * vocabulary fuse. One unit per ISA, each with its own flags (setup.py). */
#include "vec_scalar.h"

#include "spmm_impl.h"
#include "chw_impl.h"

FS_SPMM_SCALAR_LIST(FS_SPMM_DEFINE)
FS_CHW_DEFINE(scalar)
