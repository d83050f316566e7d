/* C kernel test driver: every variant of every non-scalar ISA compiled into this binary is
 * compared with the scalar variants, op by op. Built by tools/neon_tier1.sh for AArch64
 * (scalar + NEON units, run under qemu-aarch64-static); it builds natively on x86-64 as well.
 *
 *   test_kernels [--require ISA]...   fails unless ISA was compiled in and tested
 *
 * Prints one line per variant and the number of kernel x shape cases compared; exits 1 on any
 * mismatch, and 128+signal if a kernel touches a guard page.
 *
 * Ops: spmm (test_spmm.c), and the CHW companion ops from fs_chw_ops_for(): depthwise 3x3/5x5
 * (test_dwconv.c), the first 3x3 conv (test_conv2d.c), global average pooling
 * (test_gavgpool.c) and the clamped add (test_vadd.c).
 *
 * Adding an op: write tools/neon/test_<op>.c with a `size_t fs_test_<op>(int isa)` over that
 * op's dispatch table, declare it in harness.h and add it to OPS below; tools/neon_tier1.sh
 * compiles every .c file in tools/neon/. */
#include <stdio.h>
#include <string.h>

#include "fs_kernels.h"
#include "harness.h"

static const struct {
  const char* op;
  size_t (*run)(int isa);
} OPS[] = {
    {"spmm", fs_test_spmm},
    {"dwconv", fs_test_dwconv},
    {"conv2d", fs_test_conv2d},
    {"gavgpool", fs_test_gavgpool},
    {"vadd", fs_test_vadd},
};

int main(int argc, char** argv) {
  fs_install_fault_handler();
  int required[FS_ISA_COUNT] = {0};
  for (int i = 1; i < argc; i++) {
    int found = 0;
    if (strcmp(argv[i], "--require") == 0 && i + 1 < argc) {
      i++;
      for (int isa = 0; isa < FS_ISA_COUNT; isa++) {
        if (strcmp(argv[i], fs_isa_name(isa)) == 0) required[isa] = found = 1;
      }
    }
    if (!found) {
      fprintf(stderr, "usage: %s [--require ISA]...\n", argv[0]);
      return 2;
    }
  }
  size_t total = 0;
  for (int isa = 0; isa < FS_ISA_COUNT; isa++) {
    if (isa == FS_ISA_SCALAR) continue;
    if (!fs_isa_supported(isa)) {
      if (required[isa]) {
        fprintf(stderr, "FAIL: ISA %s is required but not compiled in or not supported here\n",
                fs_isa_name(isa));
        return 1;
      }
      continue;
    }
    for (size_t o = 0; o < sizeof OPS / sizeof OPS[0]; o++) {
      printf("%s %s:\n", fs_isa_name(isa), OPS[o].op);
      fflush(stdout);
      const size_t before = fs_failures();
      const size_t cases = OPS[o].run(isa);
      printf("%s %s: %zu kernel x shape cases compared, %zu failed\n", fs_isa_name(isa),
             OPS[o].op, cases, fs_failures() - before);
      fflush(stdout);
      if (cases == 0 && required[isa]) {
        fprintf(stderr, "FAIL: no %s %s case ran\n", fs_isa_name(isa), OPS[o].op);
        return 1;
      }
      total += cases;
    }
  }
  printf("total: %zu kernel x shape cases compared, %zu failed\n", total, fs_failures());
  return fs_failures() == 0 && total > 0 ? 0 : 1;
}
