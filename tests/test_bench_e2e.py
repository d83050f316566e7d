"""The end-to-end benchmark compares like with like: the ONNX graphs and the torch v1 module it
builds compute the same network as the NumPy reference; a tiny run of the harness works.
onnx/onnxruntime and torch are optional: their tests skip when they are missing."""
import numpy as np
import pytest

import fastsparse as fs
from fastsparse import _kernels, bench_e2e

# As in test_models.py: float32 through ~50 layers stays near 1e-5 of the largest logit; a
# wrong pad, stride, fold or residual shows up at >= 1e-2.
RTOL = 1e-4


def _rel_err(out, ref):
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


def _images(n, h, w, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, h, w)).astype(np.float32)


# (arch, width, sparsity, block, batch, H, W): odd sizes exercise TF "same" padding of v1's
# first conv (1 pixel each side instead of bottom/right only).
CASES = [
    ("mobilenet_v2", 0.35, 0.9, 1, 2, 64, 64),
    ("mobilenet_v2", 0.5, 0.9, 4, 1, 45, 37),
    ("mobilenet_v1", 0.25, 0.9, 1, 2, 64, 64),
    ("mobilenet_v1", 0.25, 0.7, 4, 1, 67, 51),
]


def _reference(arch, weights, x):
    return (fs.reference.mobilenet_v2 if arch == "mobilenet_v2" else fs.reference.mobilenet_v1)(
        weights, x)


@pytest.mark.parametrize("arch,width,sparsity,block,n,h,w", CASES)
def test_onnx_graph_matches_reference(arch, width, sparsity, block, n, h, w):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    weights = bench_e2e.pruned_weights(arch, sparsity, block, width, num_classes=10, seed=3)
    x = _images(n, h, w)
    ref = _reference(arch, weights, x)
    model = bench_e2e.onnx_model(arch, weights, (h, w))
    for threads in (1, 2):
        out = bench_e2e.ort_session(model, threads).run(None, {"images": x})[0]
        assert out.shape == (n, 10)
        assert _rel_err(out, ref) < RTOL, (arch, width, sparsity, block, threads)


@pytest.mark.parametrize("arch,width,sparsity,block,n,h,w", CASES)
def test_torch_modules_match_reference(arch, width, sparsity, block, n, h, w):
    torch = pytest.importorskip("torch")
    weights = bench_e2e.pruned_weights(arch, sparsity, block, width, num_classes=10, seed=3)
    x = _images(n, h, w)
    with torch.inference_mode():
        out = bench_e2e.torch_module(arch, weights, width)(torch.from_numpy(x)).numpy()
    assert _rel_err(out, _reference(arch, weights, x)) < RTOL, (arch, width, sparsity, block)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v1"])
def test_pruned_weights_are_block_sparse(arch):
    """Block 4 prunes groups of 4 output channels: fastsparse picks block 4 by itself, and the
    1x1 layers reach the requested sparsity."""
    weights = bench_e2e.pruned_weights(arch, 0.9, 4, 0.5, num_classes=16, seed=0)
    net = bench_e2e.build_fastsparse(arch, weights)
    pointwise = [l for l in net.layers if getattr(l, "sparse", False)]
    assert pointwise and all(l.W.block_size == 4 for l in pointwise)
    assert all(abs(l.W.sparsity - 0.9) < 0.02 for l in pointwise)


def test_harness_runs_small():
    """The whole bench on a tiny configuration, every installed engine, no plot: the results
    are complete and the engines agree with fastsparse."""
    lines = []
    res = bench_e2e.run_e2e(archs=("mobilenet_v2", "mobilenet_v1"),
                            configs=((0.0, 1), (0.9, 1), (0.9, 4)), batches=(1, 2),
                            threads=(1,), repeat=2, width=0.25, input_size=(32, 32),
                            plot=None, out=lines.append)
    text = "\n".join(lines)
    assert "Issue 7 targets" in text and "Python overhead per call" in text
    for (arch, n, s, b, t, e), err in res["errors"].items():
        assert err < RTOL, (arch, n, s, b, t, e)
    assert len(res["times"]) == 2 * 2 * 3 * len(res["engines"])
    for d in res["detail"].values():
        assert abs(d["overhead"]["fraction"]) < 1  # a difference of medians: may dip below 0
        assert d["bytes"]["pw_packed"] < d["bytes"]["pw_dense"]


def test_python_overhead_fields():
    net = bench_e2e.build_fastsparse(
        "mobilenet_v2", bench_e2e.pruned_weights("mobilenet_v2", 0.9, 1, 0.25, 10), num_threads=1)
    for n in (1, 2):
        ov = bench_e2e.python_overhead(net, _images(n, 32, 32), repeat=3)
        assert 0 < ov["inside_ms"] <= ov["total_ms"] and ov["fraction"] < 1


def test_network_num_threads_reaches_the_step_list():
    if not _kernels.OPENMP:
        pytest.skip("built without OpenMP: every call runs on one thread")
    previous = fs.get_num_threads()
    fs.set_num_threads(2)
    try:
        net = bench_e2e.build_fastsparse(
            "mobilenet_v2", bench_e2e.pruned_weights("mobilenet_v2", 0.9, 1, 0.25, 10),
            num_threads=1)
        net(_images(1, 32, 32))
    finally:
        fs.set_num_threads(previous)
    made = [ws for stack in net._free.values() for ws in stack] + [net._fast[1]]
    assert all(steps.num_threads == 1 for _, steps, _ in made)
