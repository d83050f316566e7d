"""What writing lines the other core has read costs: MobileNet v1's 14x14 chain, isolated.

A 1x1 split by output channels reads every plane of its input on both threads, so after it
those lines sit in both cores' caches; the depthwise conv that writes that buffer next (split
by planes) must take each line back from the other core. The first depthwise conv below writes
lines its own thread wrote last; the later ones write lines both threads just read.

    PYTHONPATH=src python tools/shared_lines.py [rounds]

Session 16 (AMD EPYC Zen 4 guest, AVX-512, warm, medians of 500 calls): 1x1 512 -> 512 on
14x14 at 90 %, 1 thread 198 us, 2 threads 103-108 us; depthwise 512 x 14 x 14, 1 thread
34-35 us, 2 threads 17.8 us for the first, 32.7 us for the later ones (no gain from the
second thread). In a similar list (not this script), a 1x1 writing lines both threads had
read took 112-113 us instead of 101. Asking for the lines with PREFETCHW 2-64 planes ahead
changed nothing; summing the 1x1 in two halves of its inputs (K-split) made the depthwise
conv 21 us but the 1x1 150-157 us.
"""
import sys

import numpy as np

import fastsparse as fs
from fastsparse import _dispatch, _kernels


def main(rounds=500):
    c, hw = 512, 14
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((c, c)).astype(np.float32)
    dense[rng.random((c, c)) < 0.9] = 0
    W = fs.SparseMatrix.from_dense(dense, block_size=1)
    wd = rng.standard_normal((c, 9)).astype(np.float32)
    bd = np.zeros(c, np.float32)
    isa = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, hw * hw)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    none = np.empty((1, 1), np.float32)
    order = ["1x1 (x -> A)", "dw (A -> B)", "1x1 (B -> A)", "dw (A -> B)", "1x1 (B -> A)",
             "dw (A -> B)"]
    for threads in (1, 2):
        a, b = np.zeros((1, c, hw, hw), np.float32), np.zeros((1, c, hw, hw), np.float32)
        steps = _kernels.StepList([x, a, b, none], threads)
        steps.add_spmm(kisa, kern, W._packed, 0, -1, 1, None, 0.0, 6.0)
        for name in order[1:]:
            if name.startswith("dw"):
                steps.add_dwconv2d(isa, 1, 2, wd, bd, 3, 1, 1, 1, 0.0, 6.0)
            else:
                steps.add_spmm(kisa, kern, W._packed, 2, -1, 1, None, 0.0, 6.0)
        n = len(steps)
        times = np.empty((rounds, n))
        for r in range(rounds):
            ends = np.zeros(n + 1)
            steps.run(x, none, 0, -1, ends)
            times[r] = np.diff(ends)
        med = np.median(times, axis=0) * 1e6
        print(f"{threads} thread(s): " + ", ".join(f"{k} {v:.1f} us" for k, v in zip(order, med)))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
