"""Where a network loses on several threads at batch 1: each step's time on 1 and on T
threads, each thread's share of it (StepList.run's thread_times) and the imbalance, back to
back ("warm") and right after another call that evicts the caches ("cold": an ONNX Runtime
call on as many threads when onnxruntime is installed, else a 64 MB sweep).

    PYTHONPATH=src python tools/thread_steps.py [mobilenet_v2|mobilenet_v1] [T] [rounds]

Per step (by the index of its first layer): the 1-thread time, the T-thread time and the
ratio, the slowest thread's share minus half the 1-thread time ("excess": what the step
loses to perfect scaling before its barrier), the imbalance between threads and the wait in
the barrier; and how many items of the first step each thread took (they are claimed:
a worker woken late takes fewer). Medians over `rounds` calls of each kind; the machine's
noise applies (BENCHMARKS.md). Session 14 used it to find the multi-thread arena's cold
lines.
"""
import sys

import numpy as np

import fastsparse as fs
from fastsparse import bench_e2e as be


def main(arch="mobilenet_v2", threads=2, rounds=40):
    weights = be.pruned_weights(arch, 0.9)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    y = np.empty((1, 1000), np.float32)
    junk = np.zeros(16 << 20, np.float32)
    engines = ("onnxruntime",) if "onnxruntime" in be.available_engines() else ()
    others = be._callables(arch, be.pruned_weights(arch, 0.0), None, (1, threads), engines,
                           (224, 224), 1.0)
    lists = {}
    for t in (1, threads):
        net = be.build_fastsparse(arch, weights, num_threads=t)
        net(x), net(x)  # the second call keeps its workspace (net._fast)
        _, steps, layer_of_step = net._fast[1]
        lists[t] = (steps, list(layer_of_step))
    if lists[1][1] != lists[threads][1]:
        print("the 1- and T-thread plans fuse different layers: steps compared by first layer")

    def evict(t):
        if engines:
            others[(t, engines[0])](x)
        else:
            junk.__iadd__(1.0)

    out = {}
    for t, (steps, _) in lists.items():
        n = len(steps)
        for mode in ("warm", "cold"):
            ends, done = np.zeros((rounds, n + 1)), np.full((rounds, t, n), np.nan)
            ran = np.zeros((rounds, t, n), np.int64)
            for r in range(rounds):
                if mode == "cold":
                    evict(t)
                else:
                    steps.run(x, y)
                steps.run(x, y, 0, -1, ends[r], done[r], ran[r])
            step = np.median(np.diff(ends, axis=1), axis=0) * 1e6
            share = np.median(done - ends[:, None, :-1], axis=0) * 1e6  # (t, n)
            out[(t, mode)] = step, share, np.median(ran[:, :, 0], axis=0)
    first = {t: lists[t][1] for t in lists}
    print(f"{arch}, {threads} threads, {rounds} calls per kind; "
          f"cold = after {'an ONNX Runtime call' if engines else 'a 64 MB sweep'}")
    for mode in ("warm", "cold"):
        one, _, _ = out[(1, mode)]
        many, share, first_items = out[(threads, mode)]
        one_by = dict(zip(first[1], one))
        print(f"\n{mode}: 1 thread {one.sum():.0f} us, {threads} threads {many.sum():.0f} us, "
              f"{one.sum() / many.sum():.2f}x; imbalance "
              f"{np.nansum(share.max(0) - share.min(0)):.0f} us, barriers "
              f"{np.nansum(many - share.max(0)):.0f} us; first step's items per thread "
              f"(claimed: fs_step.claims) {' / '.join(f'{v:g}' for v in first_items)}")
        print("| layer | 1 thread us | T threads us | x | excess us | imbalance us | barrier us |")
        print("|---|---|---|---|---|---|---|")
        for i, layer in enumerate(first[threads]):
            o = one_by.get(layer, float("nan"))
            hi, lo = np.nanmax(share[:, i]), np.nanmin(share[:, i])
            print(f"| {layer} | {o:.1f} | {many[i]:.1f} | {o / many[i]:.2f} | "
                  f"{hi - o / threads:.1f} | {hi - lo:.1f} | {many[i] - hi:.1f} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "mobilenet_v2", int(args[1]) if len(args) > 1 else 2,
         int(args[2]) if len(args) > 2 else 40)
