"""End-to-end benchmark of issue 7: whole MobileNets, fastsparse against ONNX Runtime and PyTorch
eager on the same weights, in the same run; the issue's targets checked next to the numbers.

    python -m fastsparse bench e2e          (pip install "fastsparse[bench]" for the engines)

Every engine that is installed runs on the same pruned weights: fastsparse from the source
weights, ONNX Runtime from an ONNX graph built here with the `onnx` helper API (BatchNorm as
its own node, which ORT folds at ORT_ENABLE_ALL), PyTorch eager from plain torch modules. The
logits are compared (max |y - y_fastsparse| / max |y_fastsparse|). Timing: for one model and
batch size, every (threads, sparsity, engine) combination forms one round; rounds repeat
`repeat` times in a shuffled order each time, so drift and neighbours on a shared machine hit
all of them alike; tables give the median and min-max of single calls.

Speed is measured, never asserted: the targets are printed as met / not met. onnx, onnxruntime,
torch and matplotlib are optional; `import fastsparse` and the tests never need them.
"""
import contextlib
import os
import platform
import random
import time

import numpy as np

from . import _dispatch
from ._reference_nets import KERAS_BN_EPS, TORCH_BN_EPS, V1_STRIDE2_BLOCKS, V2_STRIDE2_BLOCKS, \
    same_padding
from .bench import machine_description
from .prune import magnitude

ARCHS = ("mobilenet_v2", "mobilenet_v1")
# (sparsity, block size) of the pruned 1x1 and classifier weights; (0.0, 1) is the dense model.
CONFIGS = ((0.0, 1), (0.7, 1), (0.8, 1), (0.9, 1), (0.95, 1), (0.9, 4))

# Issue 7's targets (1 thread, batch 1 unless said otherwise). Never lower them here: a target
# that is out of reach is reported as not met.
TARGET_SPEEDUP_90 = {"mobilenet_v2": 3.0, "mobilenet_v1": 3.5}  # ORT dense / fastsparse at 90 %
TARGET_SPEEDUP_70 = 1.0          # faster than ORT dense at 70 %
TARGET_DENSE_SLOWDOWN = 2.0      # at 0 %: fastsparse no more than 2x slower than ORT dense
TARGET_THREAD_SCALING = 1.7      # 2 threads over 1 thread at 90 %
TARGET_PYTHON_OVERHEAD = 0.03    # time outside the kernels, fraction of a batch-1 call
TARGET_PACKED_FRACTION = 0.25    # packed weight bytes / dense float32 bytes at 90 %

FS, ORT, TORCH = "fastsparse", "onnxruntime", "torch"
ENGINES = (FS, ORT, TORCH)


# -- weights ----------------------------------------------------------------------------------

def _is_pruned_v2(key, v):
    return (v.ndim == 4 and v.shape[2:] == (1, 1)) or key == "classifier.1.weight"


def pruned_weights(arch, sparsity, block_size=1, width=1.0, num_classes=1000, seed=0):
    """Seeded random source weights (torchvision layout for v2, Keras for v1) with every 1x1
    conv and the classifier pruned by magnitude; blocks of `block_size` output channels."""
    from .models import random_mobilenet_v1_weights, random_mobilenet_v2_weights
    if arch == "mobilenet_v2":
        sd = random_mobilenet_v2_weights(width, num_classes, seed)
        if sparsity:
            sd = {k: magnitude(v, sparsity, block_size=block_size) if _is_pruned_v2(k, v) else v
                  for k, v in sd.items()}
        return sd
    if arch != "mobilenet_v1":
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    wt = random_mobilenet_v1_weights(width, num_classes, seed)
    if sparsity:
        for k, v in wt.items():
            if k.endswith("/kernel") and (k.startswith("conv_pw_") or k == "conv_preds/kernel"):
                # HWIO (1, 1, Cin, Cout): prune with output channels first, so that blocks
                # group output channels as the packed format does.
                w2 = magnitude(np.ascontiguousarray(v[0, 0].T), sparsity, block_size=block_size)
                wt[k] = np.ascontiguousarray(w2.T).reshape(v.shape)
    return wt


def build_fastsparse(arch, weights, block_size=None, num_threads=None):
    from .models import MobileNetV1, MobileNetV2
    cls = MobileNetV2 if arch == "mobilenet_v2" else MobileNetV1
    return cls.from_dense(weights, block_size=block_size, num_threads=num_threads)


# -- ONNX graphs from the same weights --------------------------------------------------------

class _OnnxGraph:
    """Collects nodes and initializers; names tensors t0, t1, ..."""

    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.count = [], [], 0
        self._clip = None  # the (min, max) initializers of ReLU6, shared by every Clip

    def const(self, array, name=None):
        name = name or f"c{len(self.inits)}"
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array, np.float32),
                                                       name))
        return name

    def node(self, op, inputs, **attrs):
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x, w, stride=1, pads=(0, 0, 0, 0), groups=1):
        """w OIHW; pads (top, left, bottom, right), which is ONNX's order for 2-D too."""
        return self.node("Conv", [x, self.const(w)], kernel_shape=list(w.shape[2:]),
                         strides=[stride, stride], pads=list(pads), group=groups)

    def batch_norm(self, x, gamma, beta, mean, var, eps):
        return self.node("BatchNormalization", [x] + [self.const(a) for a in (gamma, beta, mean, var)],
                         epsilon=float(eps))

    def relu6(self, x):
        if self._clip is None:
            self._clip = (self.const(np.float32(0.0), "relu6_min"),
                          self.const(np.float32(6.0), "relu6_max"))
        return self.node("Clip", [x, *self._clip])

    def model(self, x, name, input_size, out, num_classes, opset=17):
        from onnx import TensorProto
        h = self.helper
        graph = h.make_graph(
            self.nodes, name,
            [h.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, *input_size])],
            [h.make_tensor_value_info(out, TensorProto.FLOAT, ["N", num_classes])],
            self.inits)
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)],
                         producer_name="fastsparse.bench_e2e")
        m.ir_version = min(m.ir_version, 8)  # readable by older onnxruntime releases too
        return m


def onnx_mobilenet_v2(state_dict, input_size=(224, 224), bn_eps=TORCH_BN_EPS):
    """An onnx.ModelProto of torchvision's mobilenet_v2 (eval) from its state dict: input
    "images" (N, 3, H, W) float32, output (N, classes) logits."""
    sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked")}
    g = _OnnxGraph()

    def cbn(x, w, bn, stride=1, pads=(0, 0, 0, 0), groups=1, act=True):
        y = g.conv(x, w, stride, pads, groups)
        y = g.batch_norm(y, *(sd[f"{bn}.{k}"] for k in ("weight", "bias", "running_mean",
                                                        "running_var")), bn_eps)
        return g.relu6(y) if act else y

    y = cbn("images", sd["features.0.0.weight"], "features.0.1", 2, (1, 1, 1, 1))
    last = max(int(k.split(".")[1]) for k in sd if k.startswith("features."))
    for i in range(1, last):
        p = f"features.{i}.conv"
        stride = 2 if i in V2_STRIDE2_BLOCKS else 1
        inp, cin = y, None
        if f"{p}.3.weight" in sd:  # expand, depthwise, project
            cin = sd[f"{p}.0.0.weight"].shape[1]
            y = cbn(y, sd[f"{p}.0.0.weight"], f"{p}.0.1")
            dw, proj, pbn = f"{p}.1", f"{p}.2.weight", f"{p}.3"
        else:
            dw, proj, pbn = f"{p}.0", f"{p}.1.weight", f"{p}.2"
        wd = sd[f"{dw}.0.weight"]
        cin = cin or wd.shape[0]
        y = cbn(y, wd, f"{dw}.1", stride, (1, 1, 1, 1), groups=wd.shape[0])
        y = cbn(y, sd[proj], pbn, act=False)
        if stride == 1 and sd[proj].shape[0] == cin:
            y = g.node("Add", [inp, y])
    y = cbn(y, sd[f"features.{last}.0.weight"], f"features.{last}.1")
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    wc = sd["classifier.1.weight"]
    y = g.node("Gemm", [y, g.const(wc), g.const(sd["classifier.1.bias"])], transB=1)
    return g.model("images", "mobilenet_v2", input_size, y, wc.shape[0])


def onnx_mobilenet_v1(weights, input_size=(224, 224), bn_eps=KERAS_BN_EPS):
    """An onnx.ModelProto of Keras' applications.MobileNet (classifier_activation=None) from its
    weights ({variable path: array}, HWIO): input "images" (N, 3, H, W) NCHW, output logits.
    Keras's bottom/right padding of stride-2 convolutions becomes asymmetric ONNX pads."""
    wt = {k.split(":")[0]: np.asarray(v, np.float32) for k, v in weights.items()}
    g = _OnnxGraph()

    def cbn(x, w_oihw, bn, stride=1, pads=(0, 0, 0, 0), groups=1):
        y = g.conv(x, w_oihw, stride, pads, groups)
        y = g.batch_norm(y, *(wt[f"{bn}/{k}"] for k in ("gamma", "beta", "moving_mean",
                                                        "moving_variance")), bn_eps)
        return g.relu6(y)

    (t, b), (l, r) = same_padding(input_size[0], 3, 2), same_padding(input_size[1], 3, 2)
    y = cbn("images", wt["conv1/kernel"].transpose(3, 2, 0, 1), "conv1_bn", 2, (t, l, b, r))
    for i in range(1, 14):
        kd = wt.get(f"conv_dw_{i}/depthwise_kernel", wt.get(f"conv_dw_{i}/kernel"))
        kd = kd.transpose(2, 3, 0, 1)  # (3, 3, C, 1) -> (C, 1, 3, 3)
        if i in V1_STRIDE2_BLOCKS:  # ZeroPadding2D(((0, 1), (0, 1))) + "valid"
            y = cbn(y, kd, f"conv_dw_{i}_bn", 2, (0, 0, 1, 1), groups=kd.shape[0])
        else:
            y = cbn(y, kd, f"conv_dw_{i}_bn", 1, (1, 1, 1, 1), groups=kd.shape[0])
        y = cbn(y, wt[f"conv_pw_{i}/kernel"].transpose(3, 2, 0, 1), f"conv_pw_{i}_bn")
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    kc = wt["conv_preds/kernel"]
    kc = kc.reshape(kc.shape[2], kc.shape[3])  # (C, classes)
    y = g.node("Gemm", [y, g.const(kc), g.const(wt["conv_preds/bias"])])
    return g.model("images", "mobilenet_v1", input_size, y, kc.shape[1])


def onnx_model(arch, weights, input_size=(224, 224)):
    return (onnx_mobilenet_v2 if arch == "mobilenet_v2" else onnx_mobilenet_v1)(weights, input_size)


def ort_session(model, num_threads):
    """An ONNX Runtime CPU session: intra-op threads = num_threads, one inter-op thread,
    every graph optimization (BatchNorm folding, Conv+Clip fusion, NCHWc layout).

    With several threads, its idle workers block instead of spinning: the engines take
    turns, and on a 2-CPU machine a spinning ORT worker holds the core the next call's second
    thread needs (BENCHMARKS.md, session 9: MobileNet v2 at 90 % on 2 threads, fastsparse
    1.79 ms median, max 48 ms, beside spinning sessions; 1.71 ms, max 2.8 ms, beside blocking
    ones; ORT's own 2-thread median 5.27 -> 5.76 ms)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = num_threads
    if num_threads > 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def torch_module(arch, weights, width=1.0):
    """An eval-mode torch module on the same weights (v2 needs the width multiplier that made
    them: torchvision's channel rounding cannot be inverted from the shapes)."""
    from ._torch_models import mobilenet_v1_module, mobilenet_v2_module
    if arch == "mobilenet_v1":
        return mobilenet_v1_module(weights)
    return mobilenet_v2_module(width, weights["classifier.1.weight"].shape[0], weights)


# -- engines ----------------------------------------------------------------------------------

def available_engines():
    """The engines importable here (fastsparse always)."""
    found = [FS]
    for name, module in ((ORT, "onnxruntime"), (TORCH, "torch")):
        try:
            __import__(module)
            if name == ORT:
                __import__("onnx")
            found.append(name)
        except ImportError:
            pass
    return found


def _callables(arch, weights, block, threads, engines, input_size, width):
    """{engine: callable(x) -> logits} on one set of weights, for each thread count."""
    out = {}
    for t in threads:
        out[(t, FS)] = build_fastsparse(arch, weights, block_size=block, num_threads=t)
    if ORT in engines:
        model = onnx_model(arch, weights, input_size)
        for t in threads:
            sess = ort_session(model, t)
            out[(t, ORT)] = (lambda x, s=sess: s.run(None, {"images": x})[0])
    if TORCH in engines:
        import torch
        module = torch_module(arch, weights, width)

        def run(x, t, m=module):
            torch.set_num_threads(t)  # global in torch: set before every call
            with torch.inference_mode():
                return m(torch.from_numpy(x)).numpy()
        for t in threads:
            out[(t, TORCH)] = (lambda x, t=t: run(x, t))
    return out


def time_rounds(fns, repeat, warmup=3, seed=0, consecutive=1):
    """{key: array of `repeat` single-call times}. Each round calls every fn `consecutive`
    times back to back, in a fresh random order (no engine always follows the same
    neighbour), and times the last of those calls: with 1, each timed call follows another
    engine's (caches hold its data); with 2, it follows a call of its own engine, as in a
    loop serving one model. Warm-up calls come first."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    keys = list(fns)
    order = random.Random(seed)
    out = {k: np.empty(repeat) for k in keys}
    clock = time.perf_counter
    for r in range(repeat):
        order.shuffle(keys)
        for k in keys:
            f = fns[k]
            for _ in range(consecutive - 1):
                f()
            t0 = clock()
            f()
            out[k][r] = clock() - t0
    return out


def _rel_err(y, ref):
    return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


# -- Python overhead, packed bytes, per-layer profile ---------------------------------------

def python_overhead(net, x, repeat=50):
    """Time per call spent outside the compiled step loops (the executor's Python and the
    entry into C): each timed call also reads the clock when its C loop starts and ends, so
    overhead = call time - that call's time inside C, per call; medians over `repeat` calls.

    Returns dict(total_ms, inside_ms, overhead_ms, fraction)."""
    clock = time.perf_counter
    tot, inside, acc = np.empty(repeat), np.empty(repeat), np.zeros(1)
    for _ in range(3):
        net(x)
    for r in range(repeat):
        acc[0] = 0.0
        t0 = clock()
        net._run(x, "NCHW", None, acc)
        tot[r] = clock() - t0
        inside[r] = acc[0]
    over = tot - inside
    return dict(total_ms=float(np.median(tot)) * 1e3, inside_ms=float(np.median(inside)) * 1e3,
                overhead_ms=float(np.median(over)) * 1e3, fraction=float(np.median(over / tot)))


def weight_bytes(net):
    """(packed bytes, dense float32 bytes) of the 1x1 + classifier weights, and of every weight
    and bias of the network (first and depthwise convs are dense on both sides)."""
    from .models import _Pointwise
    pw_packed = pw_dense = other = 0
    for layer in net.layers:
        if isinstance(layer, _Pointwise):
            cout, cin = layer.W.shape
            pw_packed += layer.W.nbytes
            pw_dense += cout * cin * 4
        elif hasattr(layer, "w"):
            other += layer.w.nbytes
        b = getattr(layer, "b", None)
        if b is not None:
            other += b.nbytes
    return dict(pw_packed=pw_packed, pw_dense=pw_dense,
                all_packed=pw_packed + other, all_dense=pw_dense + other)


def top_layers(net, x, k=10, repeat=30):
    """[(index, op, input -> output shape, kernel, ms, share)] of the k slowest layers, and
    (sum of layers ms, total call ms), from net.profile()."""
    per, total = net.profile(x, repeat=repeat)
    shapes = net._shapes(x.shape)
    fused = net._fused_pairs(shapes)
    rows = []
    for i, (layer, ms) in enumerate(zip(net.layers, per)):
        src, dst = shapes[layer.src], shapes[layer.dst]
        io = f"{'x'.join(map(str, src[1:]))} -> {'x'.join(map(str, dst[1:]))}"
        sp, blk, kern, _ = net._describe(i, shapes, fused)
        op = layer.op + ("+res" if layer.res is not None else "")
        rows.append((i, op, io, f"{kern} sp={sp}" if sp else kern, ms))
    rows.sort(key=lambda r: -r[4])
    return [(*r, r[4] / total) for r in rows[:k]], float(sum(per)), total


# -- the benchmark ----------------------------------------------------------------------------

def _ms(a):
    return float(np.median(a)) * 1e3


def _range(a):
    return f"{_ms(a):.2f} ({a.min() * 1e3:.2f}-{a.max() * 1e3:.2f})"


def _lscpu():
    info = {}
    with contextlib.suppress(OSError, ValueError):
        import subprocess
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    return info


def machine(out=print):
    info = _lscpu()
    flags = set(info.get("Flags", "").split())
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                        "amx_tile") if f in flags]
    out(machine_description())
    out(f"lscpu: {info.get('Model name', platform.processor())}; SIMD flags {' '.join(simd)}; "
        f"L1d {info.get('L1d cache', '?')}, L2 {info.get('L2 cache', '?')}, "
        f"L3 {info.get('L3 cache', '?')}; hypervisor {info.get('Hypervisor vendor', 'none')}")
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for mod in ("onnxruntime", "onnx", "torch"):
        with contextlib.suppress(ImportError):
            versions.append(f"{mod} {__import__(mod).__version__}")
    out("; ".join(versions))


def run_e2e(archs=ARCHS, configs=CONFIGS, batches=(1, 8), threads=(1, 2), repeat=30,
            width=1.0, input_size=(224, 224), engines=None, plot="bench_e2e.png", seed=0,
            out=print, consecutive=1):
    """The whole benchmark; returns the results as a dict (also used by the tests)."""
    previous_threads = _dispatch.get_num_threads()
    try:
        return _run_e2e(archs, configs, batches, threads, repeat, width, input_size, engines,
                        plot, seed, out, consecutive)
    finally:
        _dispatch.set_num_threads(previous_threads)


def _run_e2e(archs, configs, batches, threads, repeat, width, input_size, engines, plot, seed,
             out, consecutive):
    engines = [e for e in (engines or ENGINES) if e in available_engines()]
    if FS not in engines:
        engines.insert(0, FS)
    out("# End-to-end: fastsparse vs ONNX Runtime vs PyTorch eager, same weights\n")
    machine(out)
    out(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    out(f"engines: {', '.join(engines)}; width {width}, input {input_size[0]}x{input_size[1]}, "
        f"batches {batches}, threads {threads}, {repeat} interleaved rounds after 3 warm-up "
        f"calls; single-call times, median (min-max), ms; each timed call follows "
        + ("another engine's call" if consecutive == 1 else
           f"{consecutive - 1} call(s) of the same engine (warm, as when serving one model)")
        + "; ONNX Runtime's idle workers block instead of spinning (see ort_session)")
    missing = [e for e in ENGINES if e not in engines]
    if missing:
        out(f"not installed (or not requested), skipped: {', '.join(missing)}")
    results = {"times": {}, "errors": {}, "engines": engines, "configs": tuple(configs),
               "threads": tuple(threads), "batches": tuple(batches)}
    rng = np.random.default_rng(seed + 1)
    t_start = time.perf_counter()
    for arch in archs:
        fns = {}
        for s, b in configs:
            w = pruned_weights(arch, s, b, width, 1000, seed)
            for (t, e), f in _callables(arch, w, b, threads, engines, input_size,
                                              width).items():
                fns[(s, b, t, e)] = f
        for n in batches:
            x = rng.uniform(-1, 1, (n, 3, *input_size)).astype(np.float32)
            # Same weights, same input: each engine's logits against fastsparse's, per config.
            for (s, b, t, e), f in fns.items():
                ref = fns[(s, b, threads[0], FS)](x)
                results["errors"][(arch, n, s, b, t, e)] = _rel_err(f(x), ref)
            times = time_rounds({k: (lambda f=f: f(x)) for k, f in fns.items()}, repeat,
                                seed=seed + n, consecutive=consecutive)
            for k, v in times.items():
                results["times"][(arch, n) + k] = v
            _table(out, arch, n, results, configs, threads, engines)
        del fns
    out(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"timing took {time.perf_counter() - t_start:.0f} s")
    results["detail"] = {}
    for arch in archs:
        results["detail"][arch] = _detail(out, arch, width, input_size, threads[0], seed)
    results["targets"] = _targets(out, results, archs)
    if plot:
        _plot(plot, results, archs, out)
    return results


def _table(out, arch, n, res, configs, threads, engines):
    T, E = res["times"], res["errors"]
    out(f"\n## {arch}, batch {n}\n")
    head = "| threads | sparsity | block | fastsparse ms |"
    sep = "|---|---|---|---|"
    if ORT in engines:
        head += " ORT ms | ORT dense / fs | ORT / fs | ORT err |"
        sep += "---|---|---|---|"
    if TORCH in engines:
        head += " torch ms | torch / fs | torch err |"
        sep += "---|---|---|"
    out(head)
    out(sep)
    for t in threads:
        for s, b in configs:
            fs_t = T[(arch, n, s, b, t, FS)]
            row = f"| {t} | {s:.2f} | {b} | {_range(fs_t)} |"
            if ORT in engines:
                o = T[(arch, n, s, b, t, ORT)]
                dense = T.get((arch, n, 0.0, 1, t, ORT))
                vs_dense = f"{_ms(dense) / _ms(fs_t):.2f}x" if dense is not None else "-"
                row += (f" {_range(o)} | {vs_dense} | {_ms(o) / _ms(fs_t):.2f}x |"
                        f" {E[(arch, n, s, b, t, ORT)]:.1e} |")
            if TORCH in engines:
                p = T[(arch, n, s, b, t, TORCH)]
                row += f" {_range(p)} | {_ms(p) / _ms(fs_t):.2f}x | {E[(arch, n, s, b, t, TORCH)]:.1e} |"
            out(row)
    out("\n(x / fs = that engine's median over fastsparse's: > 1 means fastsparse is faster. "
        "err = max |y - y_fastsparse| / max |y_fastsparse| on the same input and weights. "
        "Above the sparse break-even (sparsity 0) fastsparse runs a 1x1 layer's whole weight "
        "in 4x1 blocks in its spmm kernels.)")


def _detail(out, arch, width, input_size, threads, seed):
    """Per model at 90 %, batch 1: Python overhead, packed bytes, top layers."""
    w = pruned_weights(arch, 0.9, 1, width, 1000, seed)
    net = build_fastsparse(arch, w, block_size=1, num_threads=threads)
    _dispatch.set_num_threads(threads)
    x = np.random.default_rng(seed + 7).uniform(-1, 1, (1, 3, *input_size)).astype(np.float32)
    ov = python_overhead(net, x)
    # Cross-check: on a 32x32 image (the smallest v1 takes) the kernels do 2 % of the work, so
    # what remains outside them is the per-call Python cost alone (without the cache misses
    # that large activations inflict on the interpreter between kernels).
    # A second network over the same layers: the first keeps its 224x224 workspace for its
    # fast batch-1 path, and a call of another size would take the checked one.
    ov8 = python_overhead(type(net)(net.arch, net.layers, net.num_threads),
                          x[:, :, :32, :32].copy())
    wb = weight_bytes(net)
    top, layers_sum, total = top_layers(net, x)
    out(f"\n## {arch} at 90 % (block 1), batch 1, {threads} thread(s): where the time goes\n")
    out(f"Python overhead per call: {ov['overhead_ms'] * 1e3:.0f} us of {ov['total_ms']:.2f} ms "
        f"= {ov['fraction']:.1%} (target < {TARGET_PYTHON_OVERHEAD:.0%}): call time minus the same "
        f"call's time inside its C step loop, median of 50 calls. The same on a 32x32 input "
        f"(kernels nearly idle): {ov8['overhead_ms'] * 1e3:.0f} us outside C, "
        f"{ov8['total_ms'] * 1e3:.0f} us per call.")
    out(f"Weights: 1x1 + classifier packed {wb['pw_packed'] / 1e6:.2f} MB vs dense float32 "
        f"{wb['pw_dense'] / 1e6:.2f} MB = {wb['pw_packed'] / wb['pw_dense']:.1%}; whole network "
        f"(first conv, depthwise, biases dense on both sides) {wb['all_packed'] / 1e6:.2f} MB vs "
        f"{wb['all_dense'] / 1e6:.2f} MB = {wb['all_packed'] / wb['all_dense']:.1%} "
        f"(target <= {TARGET_PACKED_FRACTION:.0%})")
    out(f"\nTop {len(top)} layers by time (net.profile, median of 30; whole call {total:.2f} ms):\n")
    out("| # | op | input -> output | kernel | ms | share of call |")
    out("|---|---|---|---|---|---|")
    for i, op, io, kern, ms, share in top:
        out(f"| {i} | {op} | {io} | {kern} | {ms:.3f} | {share:.1%} |")
    by_op = {}
    per, _ = net.profile(x, repeat=30)
    for layer, ms in zip(net.layers, per):
        by_op[layer.op] = by_op.get(layer.op, 0.0) + ms
    out("\nBy op: " + ", ".join(f"{op} {ms:.2f} ms ({ms / total:.0%})"
                                for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])))
    return dict(overhead=ov, overhead_8x8=ov8, bytes=wb, top=top, total_ms=total, by_op=by_op)


def _targets(out, res, archs):
    """Issue 7's targets next to the measured values."""
    T, th = res["times"], res["threads"]
    rows = []

    def med(*key):
        v = T.get(key)
        return None if v is None else _ms(v)

    def add(name, measured, target, met):
        rows.append((name, measured, target, "met" if met else "NOT met"))

    t1 = th[0]
    for arch in archs:
        short = "v2" if arch == "mobilenet_v2" else "v1"
        dense = med(arch, 1, 0.0, 1, t1, ORT)
        for (s, b), goal in (((0.9, 1), TARGET_SPEEDUP_90[arch]), ((0.9, 4), TARGET_SPEEDUP_90[arch]),
                             ((0.7, 1), TARGET_SPEEDUP_70)):
            fs_ms = med(arch, 1, s, b, t1, FS)
            if dense is None or fs_ms is None:
                continue
            ratio = dense / fs_ms
            label = f"{short} {s:.0%}{' block 4' if b != 1 else ''}: ORT dense / fastsparse"
            goal_txt = f">= {goal:g}x" if goal > 1 else "> 1x (faster)"
            add(label, f"{dense:.2f} / {fs_ms:.2f} ms = {ratio:.2f}x", goal_txt,
                ratio >= goal if goal > 1 else ratio > 1)
        fs0 = med(arch, 1, 0.0, 1, t1, FS)
        if dense is not None and fs0 is not None:
            add(f"{short} 0 %: fastsparse / ORT dense", f"{fs0:.2f} / {dense:.2f} ms = "
                f"{fs0 / dense:.2f}x", f"<= {TARGET_DENSE_SLOWDOWN:g}x", fs0 / dense <= TARGET_DENSE_SLOWDOWN)
        if len(th) > 1:
            for n in res["batches"]:
                a, b2 = med(arch, n, 0.9, 1, th[0], FS), med(arch, n, 0.9, 1, th[1], FS)
                if a and b2:
                    add(f"{short} 90 % batch {n}: {th[1]} threads over {th[0]}",
                        f"{a:.2f} / {b2:.2f} ms = {a / b2:.2f}x", f">= {TARGET_THREAD_SCALING:g}x",
                        a / b2 >= TARGET_THREAD_SCALING)
        bs = [n for n in res["batches"] if n > 1]
        if 1 in res["batches"] and bs:
            for t in th:
                one, many = med(arch, 1, 0.9, 1, t, FS), med(arch, bs[-1], 0.9, 1, t, FS)
                if one and many:
                    per = many / bs[-1]
                    add(f"{short} 90 % {t} thread(s): per image at batch {bs[-1]} vs batch 1",
                        f"{per:.2f} vs {one:.2f} ms", "<= batch 1's", per <= one)
        d = res.get("detail", {}).get(arch)
        if d:
            f = d["overhead"]["fraction"]
            add(f"{short} 90 %: Python overhead per batch-1 call", f"{f:.1%}",
                f"< {TARGET_PYTHON_OVERHEAD:.0%}", f < TARGET_PYTHON_OVERHEAD)
            wb = d["bytes"]
            frac = wb["all_packed"] / wb["all_dense"]
            add(f"{short} 90 %: packed / dense float32 weight bytes (whole network)",
                f"{frac:.1%} (1x1 + classifier alone {wb['pw_packed'] / wb['pw_dense']:.1%})",
                f"<= {TARGET_PACKED_FRACTION:.0%}", frac <= TARGET_PACKED_FRACTION)
    out(f"\n## Issue 7 targets ({t1} thread, batch 1 unless stated; medians from this run)\n")
    out("| target | measured | goal | status |")
    out("|---|---|---|---|")
    for r in rows:
        out("| " + " | ".join(r) + " |")
    if ORT not in res["engines"]:
        out("(ONNX Runtime not installed: the speed targets against it cannot be checked)")
    return rows


def _plot(path, res, archs, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out("\n(matplotlib not installed: no plot; pip install 'fastsparse[plot]')")
        return
    if ORT not in res["engines"]:
        out("\n(no plot: the speedup is measured against ONNX Runtime, which is not installed)")
        return
    T = res["times"]
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for n in res["batches"]:
            for t in res["threads"]:
                dense = T.get((arch, n, 0.0, 1, t, ORT))
                xs, ys = [], []
                for s, b in res["configs"]:
                    if b == 1:
                        xs.append(s)
                        ys.append(_ms(dense) / _ms(T[(arch, n, s, b, t, FS)]))
                line, = ax.plot(xs, ys, "o-", label=f"batch {n}, {t} thread(s)")
                for s, b in res["configs"]:
                    if b != 1:
                        ax.plot([s], [_ms(dense) / _ms(T[(arch, n, s, b, t, FS)])], "^",
                                color=line.get_color(), markersize=9)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.axhline(TARGET_SPEEDUP_90[arch], color="red", ls="--", lw=0.8,
                   label=f"target at 90 %: {TARGET_SPEEDUP_90[arch]:g}x")
        ax.set_title(f"{arch}: ONNX Runtime dense / fastsparse (triangle: block 4)")
        ax.set_xlabel("sparsity of the 1x1 and classifier weights")
        ax.set_ylabel("speedup (same threads and batch)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out(f"\nplot: {path}")
