"""Benchmarks: fastsparse against dense engines on the same layers, in the same run.

Speed is measured, never asserted: these functions print tables, they do not pass or fail.
Every repetition times every engine on every layer back to back, so drift of a shared,
noisy machine hits all of them alike; tables give medians and min-max over repetitions.
"""
import contextlib
import math
import os
import platform
import time

import numpy as np

from . import _dispatch
from .prune import magnitude
from .sparse import SparseMatrix

# Every 1x1 convolution of the networks at 224x224 input, in order: (H*W, Cout, Cin).
# (Each shape as often as it occurs: the per-network sums weigh them so.)
MOBILENET_V2_1X1 = [
    (12544, 16, 32), (12544, 96, 16),
    (3136, 24, 96), (3136, 144, 24), (3136, 24, 144), (3136, 144, 24),
    (784, 32, 144), *[(784, 192, 32), (784, 32, 192)] * 2, (784, 192, 32),
    (196, 64, 192), *[(196, 384, 64), (196, 64, 384)] * 3, (196, 384, 64), (196, 96, 384),
    *[(196, 576, 96), (196, 96, 576)] * 2, (196, 576, 96),
    (49, 160, 576), *[(49, 960, 160), (49, 160, 960)] * 2, (49, 960, 160), (49, 320, 960),
    (49, 1280, 320),
]
MOBILENET_V1_1X1 = [
    (12544, 64, 32), (3136, 128, 64), (3136, 128, 128), (784, 256, 128), (784, 256, 256),
    (196, 512, 256), *[(196, 512, 512)] * 5, (49, 1024, 512), (49, 1024, 1024),
]
NETWORKS = {"mobilenet_v2": MOBILENET_V2_1X1, "mobilenet_v1": MOBILENET_V1_1X1}


def machine_description():
    """CPU model and SIMD flags, numpy's BLAS, fastsparse's ISA: for BENCHMARKS.md."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    simd = " ".join(f for f in ("sse2", "avx", "avx2", "fma", "avx512f") if f in flags)
    blas = "unknown"
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            blas = f"{libs[0]['internal_api']} {libs[0].get('version')} ({libs[0].get('architecture')})"
    return (f"CPU: {model} [{simd}], {os.cpu_count()} logical CPUs; numpy {np.__version__}, "
            f"BLAS {blas}; fastsparse ISA {_dispatch.isa()}")


@contextlib.contextmanager
def blas_threads(n):
    """Limit numpy's BLAS to n threads (needs threadpoolctl; otherwise leaves it alone)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield True


def _calls_for(fn, min_seconds):
    """How many back-to-back calls make one timed sample last at least min_seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(np.ceil(min_seconds / dt)))


# Seconds between the dense and the sparse phases of a several-thread bench_spmm run.
PHASE_PAUSE_S = 0.5


def time_interleaved(fns, repeat, min_seconds=2e-4):
    """{key: array of `repeat` per-call times}; each repetition runs every fn once in turn."""
    calls = {k: _calls_for(f, min_seconds) for k, f in fns.items()}
    out = {k: np.empty(repeat) for k in fns}
    for r in range(repeat):
        for k, f in fns.items():
            n = calls[k]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            out[k][r] = (time.perf_counter() - t0) / n
    return out


def _random_layer(rng, hw, cout, cin, sparsity, block_size):
    w = rng.standard_normal((cout, cin)).astype(np.float32)
    w = magnitude(w, sparsity, block_size=block_size)  # a random pattern: the values are random
    x = rng.standard_normal((1, cin, 1, hw)).astype(np.float32)
    return w, x


def _layer_in_network_layout(W, x, hw, threads, kernel):
    """A callable running the 1x1 `W` on x (1, Cin, 1, HW) as a network call runs an unfused
    1x1: one C step over channel planes padded to whole 64-byte lines (models._planned_view),
    with the matrix and tile the executor picks for aligned planes (or `kernel`: W as
    packed). On T > 1 threads, a square image whose tensors a network holds in T row pieces
    (models.Network._row_pieces: 112x112 to 28x28 on 2 threads) is held in them here too, so
    each thread computes its own block. A network runs its largest MobileNet 1x1s fused with
    the depthwise conv after them instead, whose output groups stay in L2 (no _prefetch
    variant there). The callable's `out()` returns the output as (1, Cout, 1, HW)."""
    from . import _kernels
    from ._validate import hugepage_empty
    from .models import _pieced_size, _pieced_view, _plane, _planned_view, _Pointwise, pieceable
    if kernel is None:
        W = _Pointwise(W, None, None).matrix()
    cout, cin = W.shape
    side = math.isqrt(hw)
    pieces = threads if side * side == hw and pieceable((1, cin, side, side), threads) else 0
    if pieces:
        shape_in, shape_out = (1, cin, side, side), (1, cout, side, side)
        xin = _pieced_view(hugepage_empty(_pieced_size(shape_in, pieces)), shape_in, pieces)
        xin[...] = x.reshape(cin, pieces, side // pieces, side).transpose(1, 0, 2, 3)
        yout = _pieced_view(hugepage_empty(_pieced_size(shape_out, pieces)), shape_out, pieces)
    else:
        shape_in, shape_out = (1, cin, 1, hw), (1, cout, 1, hw)
        xin = _planned_view(hugepage_empty(cin * _plane(shape_in)), shape_in)
        xin[...] = x
        yout = _planned_view(hugepage_empty(cout * _plane(shape_out)), shape_out)
    # Tensors 0 and 3 are placeholders: the layer reads and writes planned buffers 1 and 2.
    ends = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
    steps = _kernels.StepList([ends[0], xin, yout, ends[1]], threads, [0, pieces, pieces, 0])
    kisa, index, sweep = _dispatch.spmm_step_kernel(_dispatch.isa(), W.block_size, hw, kernel,
                                                    plane=_plane(shape_in),
                                                    out_bytes=4 * cout * _plane(shape_out),
                                                    in_bytes=4 * cin * _plane(shape_in))
    steps.add_spmm(kisa, index, W._packed, 1, -1, 2, None, -np.inf, np.inf, sweep_rows=sweep)

    def run():
        steps.run(*ends)

    def out():  # for tests
        if not pieces:
            return np.array(yout)
        return np.ascontiguousarray(yout.transpose(1, 0, 2, 3)).reshape(1, cout, 1, hw)
    run.out = out
    return run


def bench_spmm(networks=("mobilenet_v2", "mobilenet_v1"), sparsities=(0.7, 0.8, 0.9, 0.95),
               threads=(1, None), block_sizes=(1,), repeat=21, kernel=None, seed=0, out=print,
               sample_ms=2.0):
    """Per-layer and per-network tables: the sparse 1x1 kernels as a network runs them (one C
    step, padded channel planes) vs numpy's dense matmul (sgemm) on contiguous arrays.

    Each timed sample runs one layer's calls back to back for at least `sample_ms`, the
    samples of all layers and engines interleaved: with 2 ms every layer is timed in its
    steady state. With 0.2 ms (the protocol before session 4) a 112x112 layer is one call
    right after another layer's, which refills its 2-5 MB of activations from memory first:
    2-4x slower, for dense sgemm and fastsparse alike (BENCHMARKS.md)."""
    rng = np.random.default_rng(seed)
    out(machine_description())
    out(f"each sample: one layer's calls back to back for >= {sample_ms:g} ms, {repeat} samples "
        "per layer and engine, interleaved; medians")
    all_threads = os.cpu_count() or 1
    results = []
    for t in threads:
        t = all_threads if t is None else t
        with blas_threads(t) as limited:
            note = "" if limited else " (numpy BLAS threads not limited: install threadpoolctl)"
            out(f"\n## {t} thread(s){note}\n")
            for net in networks:
                layers = NETWORKS[net]
                fns, meta = {}, {}
                for li, (hw, cout, cin) in enumerate(layers):
                    w_dense = rng.standard_normal((cout, cin)).astype(np.float32)
                    x2 = rng.standard_normal((cin, hw)).astype(np.float32)
                    y2 = np.empty((cout, hw), np.float32)
                    fns[(li, "dense")] = (lambda w=w_dense, x=x2, y=y2: np.matmul(w, x, out=y))
                    for s in sparsities:
                        for b in block_sizes:
                            w, x = _random_layer(rng, hw, cout, cin, s, b)
                            W = SparseMatrix.from_dense(w, block_size=b)
                            fns[(li, s, b)] = _layer_in_network_layout(W, x, hw, t, kernel)
                            meta[(li, s, b)] = W.nnz * hw * 2
                if t == 1:
                    times = time_interleaved(fns, repeat, sample_ms / 1e3)
                else:
                    # Two thread pools taking turns (numpy's BLAS threads, fastsparse's OpenMP
                    # team) spin against each other on a small machine and time that fight
                    # (BENCHMARKS.md): with several threads, all repetitions of the dense
                    # layers run first, then all of the sparse ones, each phase after a pause
                    # (OpenBLAS's workers spin on after its calls: v2's first sparse layers
                    # ran 2-3x slower for the first second after the dense phase).
                    times = {}
                    for group in (True, False):
                        time.sleep(PHASE_PAUSE_S)
                        times.update(time_interleaved(
                            {k: f for k, f in fns.items() if (k[1] == "dense") == group},
                            repeat, sample_ms / 1e3))
                results.append(_report(out, net, layers, sparsities, block_sizes, times, meta, t))
    _spmm_targets(out, results)
    return results


def _fmt_ms(a):
    return f"{np.median(a) * 1e3:8.3f}"


def _report(out, net, layers, sparsities, block_sizes, times, meta, threads):
    out(f"### {net}: per layer, median ms (speedup = dense / sparse, GFLOP/s = 2*nnz*HW / time)\n")
    head = "| HW | Cout | Cin | dense ms |" + "".join(
        f" s={s} b={b} ms | x | GF/s |" for s in sparsities for b in block_sizes)
    out(head)
    out("|" + "---|" * (4 + 3 * len(sparsities) * len(block_sizes)))
    for li, (hw, cout, cin) in enumerate(layers):
        d = np.median(times[(li, "dense")])
        row = f"| {hw} | {cout} | {cin} | {d * 1e3:.3f} |"
        for s in sparsities:
            for b in block_sizes:
                t = np.median(times[(li, s, b)])
                row += f" {t * 1e3:.3f} | {d / t:.2f} | {meta[(li, s, b)] / t / 1e9:.1f} |"
        out(row)
    dense_tot = sum(times[(li, "dense")] for li in range(len(layers)))
    out(f"\n### {net}: sum over the {len(layers)} 1x1 layers, {threads} thread(s)\n")
    out("| sparsity | block | dense ms (min-max) | fastsparse ms (min-max) | speedup | GFLOP/s useful |")
    out("|---|---|---|---|---|---|")
    summary = {}
    for s in sparsities:
        for b in block_sizes:
            tot = sum(times[(li, s, b)] for li in range(len(layers)))
            flops = sum(meta[(li, s, b)] for li in range(len(layers)))
            speed = np.median(dense_tot) / np.median(tot)
            summary[(s, b)] = speed
            summary[(s, b, "ms")] = np.median(tot)
            summary[(s, b, "gflops")] = flops / np.median(tot) / 1e9
            summary[(s, b, "slowest")] = min(
                (np.median(times[(li, "dense")]) / np.median(times[(li, s, b)]),
                 "x".join(map(str, layers[li]))) for li in range(len(layers)))
            out(f"| {s} | {b} | {_fmt_ms(dense_tot)} ({dense_tot.min() * 1e3:.3f}-{dense_tot.max() * 1e3:.3f}) "
                f"| {_fmt_ms(tot)} ({tot.min() * 1e3:.3f}-{tot.max() * 1e3:.3f}) | {speed:.2f}x "
                f"| {flops / np.median(tot) / 1e9:.1f} |")
    out("")
    return net, threads, summary


# Issue 3's targets: summed over a network's 1x1 layers, one thread unless stated.
SPMM_TARGET_SPEEDUP = {0.9: 5.0, 0.8: 3.0, 0.7: 1.8}
SPMM_TARGET_GFLOPS_90 = 40.0
SPMM_TARGET_BLOCK4 = 1.3
SPMM_TARGET_THREADS = 1.7


def _spmm_targets(out, results):
    """Issue 3's targets next to the measured values: the rows this run has data for."""
    res = {(net, t): summary for net, t, summary in results}
    rows = []

    def add(name, measured, goal, met):
        rows.append((name, measured, goal, "met" if met else "NOT met"))

    for net in dict.fromkeys(net for net, _ in res):
        short = "v2" if net == "mobilenet_v2" else "v1" if net == "mobilenet_v1" else net
        counts = sorted(t for n, t in res if n == net)
        one = res.get((net, 1))
        if one is not None:
            for s, goal in SPMM_TARGET_SPEEDUP.items():
                if (s, 1) in one:
                    add(f"{short} {s * 100:.0f} %, block 1: over sgemm", f"{one[(s, 1)]:.2f}x",
                        f">= {goal:g}x", one[(s, 1)] >= goal)
            if (0.9, 1) in one:
                g = one[(0.9, 1, "gflops")]
                add(f"{short} 90 %, block 1: useful GFLOP/s", f"{g:.1f}",
                    f">= {SPMM_TARGET_GFLOPS_90:g}", g >= SPMM_TARGET_GFLOPS_90)
            if (0.9, 1) in one and (0.9, 4) in one:
                r = one[(0.9, 1, "ms")] / one[(0.9, 4, "ms")]
                add(f"{short} 90 %: 4x1 blocks over block 1", f"{r:.2f}x",
                    f">= {SPMM_TARGET_BLOCK4:g}x", r >= SPMM_TARGET_BLOCK4)
        many = counts[-1]
        if one is not None and many > 1 and (0.9, 1) in one and (0.9, 1) in res[(net, many)]:
            r = one[(0.9, 1, "ms")] / res[(net, many)][(0.9, 1, "ms")]
            add(f"{short} 90 %, block 1: {many} threads over 1", f"{r:.2f}x",
                f">= {SPMM_TARGET_THREADS:g}x", r >= SPMM_TARGET_THREADS)
        for t in counts:
            if (0.9, 1) in res[(net, t)]:
                r, shape = res[(net, t)][(0.9, 1, "slowest")]
                add(f"{short} 90 %, block 1, {t} thread(s): slowest layer vs sgemm",
                    f"{r:.2f}x ({shape})", ">= 1x", r >= 1)
    if rows:
        out("## Issue 3 targets (medians from this run; sums over each network's 1x1 layers)\n")
        out("| target | measured | goal | status |")
        out("|---|---|---|---|")
        for r in rows:
            out("| " + " | ".join(r) + " |")
    return rows


def _prune_source(sd, sparsity):
    """Prune every 1x1 conv and the classifier of a torchvision-layout state dict."""
    return {k: (magnitude(v, sparsity) if (v.ndim == 4 and v.shape[2:] == (1, 1))
                or k == "classifier.1.weight" else v) for k, v in sd.items()}


def _engines(sd, threads):
    """name -> callable(images) for every engine on the same (pruned) weights."""
    from .models import MobileNetV2
    engines = {"fastsparse (sparse)": MobileNetV2.from_dense(sd, num_threads=threads)}
    try:
        import onnxruntime  # noqa: F401  (optional: the `bench` extra)
        from .bench_e2e import onnx_model, ort_session
        sess = ort_session(onnx_model("mobilenet_v2", sd), threads)
        engines["ONNX Runtime (dense)"] = lambda x, s=sess: s.run(None, {"images": x})[0]
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return engines, None
    from ._torch_models import mobilenet_v2_module
    model = mobilenet_v2_module(1.0, 1000, sd)

    def run_torch(x, model=model):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    engines["PyTorch eager (dense)"] = run_torch
    return engines, torch


def demo(out=print, repeat=20):
    """The README's first command: MobileNet v2 (width 1.0, 224x224) from seeded random weights
    with 90 % of the 1x1 and classifier weights pruned; summary, a check against the NumPy
    reference network, and a latency table against dense engines on the same weights."""
    from . import reference
    from .models import MobileNetV2, random_mobilenet_v2_weights
    out(machine_description())
    sd = _prune_source(random_mobilenet_v2_weights(1.0, 1000, seed=0), 0.9)
    net = MobileNetV2.from_dense(sd)
    out("")
    out(net.summary())
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    ref = reference.mobilenet_v2(sd, x)
    err = float(np.max(np.abs(net(x) - ref)) / np.max(np.abs(ref)))
    out(f"\nmax |fastsparse - reference| / max |reference| = {err:.1e} (float64 NumPy reference)")
    cpus = os.cpu_count() or 1
    out(f"\nLatency, batch 1, 224x224, median of {repeat} (min-max) interleaved runs; "
        "speedup = fastsparse (sparse) vs each engine\n")
    out("| engine | threads | ms | speedup of fastsparse sparse |")
    out("|---|---|---|---|")
    for t in sorted({1, cpus}):
        engines, torch = _engines(sd, t)
        if torch is not None:
            torch.set_num_threads(t)
        with blas_threads(t):
            times = time_interleaved({k: (lambda f=f: f(x)) for k, f in engines.items()}, repeat,
                                     min_seconds=0)
        base = np.median(times["fastsparse (sparse)"])
        for name, ts in times.items():
            out(f"| {name} | {t} | {np.median(ts) * 1e3:.2f} ({ts.min() * 1e3:.2f}-{ts.max() * 1e3:.2f})"
                f" | {np.median(ts) / base:.2f}x |")
    if cpus > 1:
        out("\nThe engines take turns, and each one's thread pool spins for a while after its call:"
            "\non a machine with few cores the all-thread rows measure that interference as much as"
            "\nthe engines (BENCHMARKS.md, 'Noise').")



# --- depthwise and first conv ---------------------------------------------------------------

# Every depthwise layer at 224x224 input, in order: (C, H=W of the input, stride, padding).
# MobileNet v2 (torchvision): symmetric padding 1. MobileNet v1 (Keras): stride 2 pads only
# bottom/right.
MOBILENET_V2_DW = [
    (32, 112, 1, 1), (96, 112, 2, 1), (144, 56, 1, 1), (144, 56, 2, 1),
    (192, 28, 1, 1), (192, 28, 1, 1), (192, 28, 2, 1),
    (384, 14, 1, 1), (384, 14, 1, 1), (384, 14, 1, 1), (384, 14, 1, 1),
    (576, 14, 1, 1), (576, 14, 1, 1), (576, 14, 2, 1),
    (960, 7, 1, 1), (960, 7, 1, 1), (960, 7, 1, 1),
]
_KERAS_S2 = (0, 0, 1, 1)
MOBILENET_V1_DW = [
    (32, 112, 1, 1), (64, 112, 2, _KERAS_S2), (128, 56, 1, 1), (128, 56, 2, _KERAS_S2),
    (256, 28, 1, 1), (256, 28, 2, _KERAS_S2), *[(512, 14, 1, 1)] * 5, (512, 14, 2, _KERAS_S2),
    (1024, 7, 1, 1),
]


def copy_bandwidth(nbytes=256 << 20, repeat=7):
    """Bytes moved per second (read + written) by np.copyto on arrays far larger than cache."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / float(np.median(times))


def bench_dwconv(repeat=15, seed=0, out=print):
    """Depthwise layers of MobileNet v1/v2 and the first conv at 224x224, one thread:
    fastsparse vs torch.nn.functional.conv2d (if installed), and vs a memory-bandwidth bound
    (bytes read + written) / (np.copyto bandwidth)."""
    from .chw import conv2d, depthwise_conv2d, output_size, padding_tuple
    try:
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(seed)
    out(machine_description())
    bw = copy_bandwidth()
    out(f"np.copyto bandwidth (read + write): {bw / 1e9:.1f} GB/s; 1 thread; "
        f"torch {torch.__version__ if torch else 'not installed'}\n")
    layers = []  # (net, label, fastsparse fn, torch fn or None, bytes)
    for net, specs in (("mobilenet_v2", MOBILENET_V2_DW), ("mobilenet_v1", MOBILENET_V1_DW)):
        for c, hw, s, pad in specs:
            x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
            w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
            b = rng.standard_normal(c).astype(np.float32)
            pt, pl, pb, pr = padding_tuple(pad)
            o = output_size(hw, 3, s, pt, pb, "H")
            nbytes = x.nbytes + c * o * o * 4 + w.nbytes + b.nbytes
            fsf = (lambda x=x, w=w, b=b, s=s, pad=pad:
                   depthwise_conv2d(x, w, b, stride=s, padding=pad, num_threads=1))
            tf = None
            if torch is not None:
                tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
                # Symmetric padding 1 gives torch the same output size without a pad copy.
                tf = (lambda tx=tx, tw=tw, tb=tb, s=s, c=c:
                      F.conv2d(tx, tw, tb, stride=s, padding=1, groups=c))
            layers.append((net, f"dw {c}x{hw}x{hw} s{s} pad {pad}", fsf, tf, nbytes))
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w = rng.standard_normal((32, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    nbytes = x.nbytes + 32 * 112 * 112 * 4 + w.nbytes + b.nbytes
    tf = None
    if torch is not None:
        tf = (lambda tx=torch.from_numpy(x), tw=torch.from_numpy(w), tb=torch.from_numpy(b):
              F.conv2d(tx, tw, tb, stride=2, padding=1))
    layers.append(("first", "conv 3->32 224x224 s2 NCHW", lambda: conv2d(x, w, b, 2, 1, num_threads=1),
                   tf, nbytes))
    layers.append(("first", "conv 3->32 224x224 s2 NHWC in", lambda: conv2d(
        xh, w, b, 2, 1, layout="NHWC", num_threads=1), None, nbytes))
    fns = {}
    for i, (_, _, fsf, tf, _) in enumerate(layers):
        fns[(i, "fs")] = fsf
        if tf is not None:
            fns[(i, "torch")] = tf
    ctx = torch.no_grad() if torch is not None else contextlib.nullcontext()
    with ctx:
        times = time_interleaved(fns, repeat)
    out("| net | layer | fastsparse ms | torch ms | torch / fs | bandwidth bound ms | fs / bound |")
    out("|---|---|---|---|---|---|---|")
    sums = {}
    for i, (net, label, _, tf, nbytes) in enumerate(layers):
        f = np.median(times[(i, "fs")])
        t = np.median(times[(i, "torch")]) if tf is not None else float("nan")
        bound = nbytes / bw
        s = sums.setdefault(net, [0.0, 0.0, 0.0, 0])
        s[0] += f
        s[1] += t
        s[2] += bound
        s[3] = max(s[3], f / bound)
        ts = f"{t * 1e3:.3f}" if tf is not None else "-"
        ratio = f"{t / f:.2f}" if tf is not None else "-"
        out(f"| {net} | {label} | {f * 1e3:.3f} | {ts} | {ratio} | {bound * 1e3:.3f} | {f / bound:.2f} |")
    out("\n| net | fastsparse ms | torch ms | torch / fs | bandwidth bound ms | fs / bound | worst layer fs / bound |")
    out("|---|---|---|---|---|---|---|")
    for net, (f, t, bound, worst) in sums.items():
        out(f"| {net} | {f * 1e3:.3f} | {t * 1e3:.3f} | {t / f:.2f} | {bound * 1e3:.3f} | "
            f"{f / bound:.2f} | {worst:.2f} |")
    return sums
