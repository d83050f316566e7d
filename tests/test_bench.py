"""The spmm benchmark harness (python -m fastsparse bench spmm): what it times is correct."""
import numpy as np
import pytest

import fastsparse as fs
from fastsparse import __main__ as cli
from fastsparse import bench


def test_layer_in_network_layout_computes_the_layer(isa):
    rng = np.random.default_rng(0)
    # 784 and 3136 positions on 2 threads: two row pieces, as in a network
    for hw, cout, cin in [(49, 40, 96), (196, 24, 16), (30, 8, 5), (784, 24, 16), (3136, 9, 5)]:
        w = fs.prune.magnitude(rng.standard_normal((cout, cin)).astype(np.float32), 0.8)
        W = fs.SparseMatrix.from_dense(w, block_size=1)
        x = rng.standard_normal((1, cin, 1, hw)).astype(np.float32)
        ref = fs.reference.sparse_conv1x1(x, W)
        for threads in (1, 2):
            run = bench._layer_in_network_layout(W, x, hw, threads, None)
            run()
            np.testing.assert_allclose(run.out(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_bench_spmm_reports_every_layer():
    lines = []
    res = bench.bench_spmm(networks=("mobilenet_v1",), sparsities=(0.9,), threads=(1,),
                           repeat=1, out=lines.append)
    text = "\n".join(lines)
    assert "sum over the 13 1x1 layers" in text
    assert ">= 2 ms" in text
    assert res[0][0] == "mobilenet_v1" and res[0][2][(0.9, 1)] > 0
    targets = [l for l in lines if l.startswith("| v1 90 %")]
    assert any("useful GFLOP/s" in l for l in targets)
    assert any("slowest layer" in l for l in targets)
    assert all(l.endswith(" met |") or l.endswith("NOT met |") for l in targets)


def test_spmm_targets_judge_the_numbers_given():
    """The issue-3 table compares each measured value with its goal (made-up summaries)."""
    def summary(speed, ms, gflops, slowest):
        return {(0.9, 1): speed, (0.9, 1, "ms"): ms, (0.9, 1, "gflops"): gflops,
                (0.9, 1, "slowest"): (slowest, "49x1024x1024"), (0.9, 4): speed * 1.5,
                (0.9, 4, "ms"): ms / 1.5, (0.9, 4, "gflops"): gflops,
                (0.9, 4, "slowest"): (slowest, "49x1024x1024")}
    rows = bench._spmm_targets(lambda s: None, [
        ("mobilenet_v1", 1, summary(5.2, 2.0, 39.0, 0.9)),
        ("mobilenet_v1", 2, summary(9.0, 1.25, 60.0, 1.1))])
    got = {r[0]: r[3] for r in rows}
    assert got == {
        "v1 90 %, block 1: over sgemm": "met",
        "v1 90 %, block 1: useful GFLOP/s": "NOT met",
        "v1 90 %: 4x1 blocks over block 1": "met",
        "v1 90 %, block 1: 2 threads over 1": "NOT met",
        "v1 90 %, block 1, 1 thread(s): slowest layer vs sgemm": "NOT met",
        "v1 90 %, block 1, 2 thread(s): slowest layer vs sgemm": "met"}


def test_time_interleaved_samples_last_at_least_min_seconds():
    """A sample runs a function back to back until it lasts min_seconds (steady state), and
    reports the time per call."""
    import time
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.004)
    times = bench.time_interleaved({"fast": fast, "slow": slow}, 3, min_seconds=0.002)
    assert calls["slow"] == 2 + 3  # calibration, then one call per sample: 4 ms >= 2 ms
    assert calls["fast"] > 2 + 3 * 10
    assert all(t >= 0.004 for t in times["slow"]) and all(t < 0.004 for t in times["fast"])


@pytest.mark.parametrize("argv,words", [
    ("bench spmm --net foo", "--net: 'foo' is not one of"),
    ("bench spmm --sparsity 0.5,1.5", "--sparsity: '1.5' is not a sparsity in [0, 1)"),
    ("bench spmm --block-size 3", "--block-size: '3' is not a block size"),
    ("bench spmm --kernel nope", "--kernel 'nope' is not one of"),
    ("bench spmm --isa avx1024", "--isa 'avx1024': this CPU runs"),
    ("bench spmm --repeat 0", "--repeat: '0' is not an int >= 1"),
    ("bench spmm --threads 1,0", "--threads: '0' is not a thread count"),
    ("bench spmm --sample-ms -1", "--sample-ms must be a finite number >= 0"),
    ("bench e2e --width 0", "--width: '0' is not a width multiplier > 0"),
    ("bench e2e --size 16", "--size: '16' is not an image size >= 32"),
    ("bench e2e --batch 1,x", "--batch: 'x' is not an int >= 1"),
    ("bench e2e --consecutive 0", "--consecutive: '0' is not an int >= 1"),
    ("bench e2e --engines fastsparse,onnxrunt", "--engines: 'onnxrunt' is not one of"),
    ("bench e2e --kernel x", "e2e does not take --kernel"),
    ("bench spmm --batch 2", "spmm does not take --batch"),
    ("bench dwconv --threads 2 --net mobilenet_v1", "dwconv does not take --net, --threads"),
])
def test_cli_refuses_bad_arguments_before_running(argv, words, capsys):
    """Each bad flag ends in argparse's usage error naming it (exit status 2), before any
    benchmark output; a flag a benchmark would ignore is refused too."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv.split())
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert words in err and out == "", (words, err, out)


def test_cli_runs_a_tiny_e2e(capsys):
    assert cli.main("bench e2e --net mobilenet_v2 --width 0.25 --size 64 --batch 1 --threads 1 "
                    "--repeat 2 --sparsity 0.9 --block4 0.9 --engines fastsparse --plot".split()
                    + [""]) == 0
    out = capsys.readouterr().out
    assert "## mobilenet_v2, batch 1" in out and "Issue 7 targets" in out
