/* NEON kernels (AArch64; NEON and FMA are part of the base ISA, so no runtime check).
 * Every translation unit compiles with -ffp-contract=off: only the explicit FMAs of the
 * vocabulary fuse. One unit per ISA, each with its own flags (setup.py). */
#include "vec_neon.h"

#include "spmm_impl.h"
#include "chw_impl.h"

FS_SPMM_NEON_LIST(FS_SPMM_DEFINE)
FS_CHW_DEFINE(neon)
