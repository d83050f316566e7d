"""The C step lists (csrc/fs_steps.h, _kernels.StepList) and the network executor on them:
results vs the reference and across thread counts, buffers reused across calls, bad
arguments refused before any kernel runs."""
import os
import time

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import fastsparse as fs
from fastsparse import _dispatch, _kernels, reference
from fastsparse.models import random_mobilenet_v2_weights

RTOL = 1e-4


def _rel_err(out, ref):
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def _small_list(threads=1):
    """x (1, 8, 5, 6) -> 1x1 (16 ch, relu6) -> depthwise 3x3 s2 -> pool -> (1, 16)."""
    rng = np.random.default_rng(3)
    w = fs.prune.magnitude(rng.standard_normal((16, 8)).astype(np.float32), 0.5)
    W = fs.SparseMatrix.from_dense(w, block_size=1)
    wd = rng.standard_normal((16, 9)).astype(np.float32)
    b1, b2 = (rng.standard_normal(16).astype(np.float32) for _ in range(2))
    tensors = [np.empty((1, 8, 5, 6), np.float32), np.empty((1, 16, 5, 6), np.float32),
               np.empty((1, 16, 3, 3), np.float32), np.empty((1, 16), np.float32)]
    isa = _dispatch.isa_id(fs.isa())
    steps = _kernels.StepList(tensors, threads)
    kisa, k = _dispatch.spmm_kernel(fs.isa(), 1, 30)
    steps.add_spmm(kisa, k, W._packed, 0, -1, 1, b1, 0.0, 6.0)
    steps.add_dwconv2d(isa, 1, 2, wd, b2, 3, 2, 1, 1, -np.inf, np.inf)
    steps.add_gavgpool(isa, 2, 3)

    def ref(x):
        y = reference.sparse_conv1x1(x, W, bias=b1, activation="relu6")
        y = reference.depthwise_conv2d(y, wd.reshape(16, 1, 3, 3), bias=b2, stride=2,
                                       padding=1)
        return reference.global_avg_pool(y)
    return steps, tensors, ref


def test_step_list_matches_reference_and_thread_counts(isa):
    rng = np.random.default_rng(0)
    outs = []
    for threads in (1, 2, 3):
        steps, tensors, ref = _small_list(threads)
        assert len(steps) == 3 and steps.num_threads == threads
        for _ in range(2):  # scratch and buffers reused by a second run
            x = rng.standard_normal((1, 8, 5, 6)).astype(np.float32)
            y = np.full((1, 16), np.nan, np.float32)
            steps.run(x, y)
            assert _rel_err(y, ref(x)) < RTOL
        outs.append((x, y.copy()))
    for x, y in outs[1:]:  # same final input in each list: bit-identical
        steps, _, _ = _small_list(1)
        y1 = np.empty_like(y)
        steps.run(x, y1)
        assert y1.tobytes() == y.tobytes()


def test_step_list_runs_ranges_and_stamps_times():
    steps, tensors, ref = _small_list()
    x = np.random.default_rng(1).standard_normal((1, 8, 5, 6)).astype(np.float32)
    y = np.empty((1, 16), np.float32)
    times = np.zeros(3)
    steps.run(x, y, 0, 2, times)  # the 1x1 and the depthwise conv only
    assert times[0] <= times[1] <= times[2] and times[0] > 0
    steps.run(x, y, 2, 3)  # then the pool, on the buffer the first run left
    assert _rel_err(y, ref(x)) < RTOL
    steps.run(x, y, 1, 1)  # an empty range runs nothing
    bounds = np.zeros(2)
    steps.run(x, y, 0, 3, bounds)  # two stamps: the start and the end of the whole range
    assert 0 < bounds[0] <= bounds[1]


def test_step_list_stamps_each_threads_share_before_the_barrier():
    """thread_times[t, i]: when thread t finished its items of step i, before the barrier
    (at or before the step's end in `times`); rows past the team keep their values; the
    bytes are those of a run without stamps; a wrong shape is refused."""
    x = np.random.default_rng(2).standard_normal((1, 8, 5, 6)).astype(np.float32)
    steps, _, ref = _small_list(1)
    want = np.empty((1, 16), np.float32)
    steps.run(x, want)
    for threads in (1, 2, 3):
        steps, _, _ = _small_list(threads)
        y = np.empty((1, 16), np.float32)
        times, done = np.zeros(4), np.full((threads + 1, 3), np.nan)
        steps.run(x, y, 0, -1, times, done)
        assert y.tobytes() == want.tobytes()
        team = done[:threads]
        assert np.all(np.isnan(done[threads]))
        assert np.all(np.isfinite(team[0]))  # the calling thread is always in the team
        ran = team[np.isfinite(team)]
        assert ran.size and np.all(ran >= times[0])
        for i in range(3):
            col = team[:, i]
            assert np.all(col[np.isfinite(col)] <= times[i + 1]), (threads, i)
        part = np.full((threads, 1), np.nan)
        steps.run(x, y, 1, 2, None, part)  # a range: one column per step run
        assert np.isfinite(part[0, 0])
    with pytest.raises(ValueError, match="thread_times must have 3 columns"):
        steps.run(x, y, 0, -1, None, np.zeros((2, 2)))


def test_run_pinned_gives_run_bytes_in_a_new_array_or_refuses():
    """run_pinned: the bytes of run() into a fresh array, the input untouched; None, running
    nothing, for what its O(1) checks cannot take, before pin() and after the settings change."""
    steps, tensors, ref = _small_list()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 8, 5, 6)).astype(np.float32)
    x_before = x.copy()
    y = np.empty((1, 16), np.float32)
    steps.run(x, y)
    assert steps.run_pinned(x) is None and not steps.pinned  # not pinned yet
    steps.pin(_kernels.config_epoch())
    assert steps.pinned
    inside = np.zeros(1)
    y1 = steps.run_pinned(x, inside)
    y2 = steps.run_pinned(x)
    assert type(y1) is np.ndarray and y1.shape == (1, 16) and y1.dtype == np.float32
    assert y1.tobytes() == y2.tobytes() == y.tobytes() and y1 is not y2
    assert not np.shares_memory(y1, y2) and 0 < inside[0]
    assert x.tobytes() == x_before.tobytes() and _rel_err(y1, ref(x)) < RTOL
    # A read-only input, and one whose length-1 axis has an odd stride, are still C order.
    ro = x.copy()
    ro.flags.writeable = False
    odd = np.lib.stride_tricks.as_strided(x, x.shape, (12345 * 4,) + x.strides[1:])
    for a in (ro, odd):
        assert steps.run_pinned(a).tobytes() == y.tobytes()
    raw = np.zeros(x.nbytes + 4, np.uint8)
    misaligned = np.frombuffer(raw.data, np.float32, x.size, offset=1).reshape(x.shape)
    refused = [x.astype(np.float64), x.astype(">f4"), x.tolist(), x[..., ::-1],
               np.asfortranarray(x.reshape(8, 30)).reshape(1, 8, 5, 6, order="F"),
               x.reshape(1, 8, 30), np.zeros((1, 8, 6, 5), np.float32), misaligned,
               x.view(type("Sub", (np.ndarray,), {})), np.zeros((2, 8, 5, 6), np.float32),
               np.zeros((1, 8, 5, 6), "datetime64[s]")]  # (no buffer export at all)
    for a in refused:
        assert steps.run_pinned(a) is None
    assert steps.run_pinned(x).tobytes() == y.tobytes()  # a refusal leaves the list free
    # A list whose input template has padded planes never runs pinned: it would read the
    # caller's C-contiguous array past its end.
    other = _kernels.StepList([_padded(x.shape, 48)[1]] + tensors[1:], 1)
    other.pin(_kernels.config_epoch())
    assert other.run_pinned(x) is None
    _kernels.config_changed()
    assert not steps.pinned and steps.run_pinned(x) is None


def test_run_images_runs_each_image_through_its_own_list():
    """run_images: list l takes images [l * per, (l + 1) * per) side by side; each image's
    output is the bytes of a batch-1 run, also when the OpenMP team is smaller than the
    number of lists (each thread then takes several lists)."""
    lists = [_small_list(1) for _ in range(3)]
    ref = lists[0][2]
    x = np.random.default_rng(2).standard_normal((6, 8, 5, 6)).astype(np.float32)
    alone = np.empty((6, 16), np.float32)
    for i in range(6):
        lists[0][0].run(x[i:i + 1], alone[i:i + 1])
    for count in (1, 2, 3):
        y = np.full((6, 16), np.nan, np.float32)
        _kernels.run_images([sl for sl, _, _ in lists[:count]], x, y)
        assert y.tobytes() == alone.tobytes(), count
    assert _rel_err(alone, np.concatenate([ref(x[i:i + 1]) for i in range(6)])) < RTOL
    from test_dispatch import _run
    code = (
        "import numpy as np, sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_steps import _small_list\n"
        "from fastsparse import _kernels\n"
        "x = np.random.default_rng(2).standard_normal((6, 8, 5, 6)).astype(np.float32)\n"
        "y = np.full((6, 16), np.nan, np.float32)\n"
        "_kernels.run_images([_small_list(1)[0] for _ in range(3)], x, y)\n"
        "sys.stdout.write(y.tobytes().hex())\n")
    r = _run(code, OMP_THREAD_LIMIT="1", FASTSPARSE_ISA=fs.isa())  # the same kernels
    assert r.returncode == 0, r.stderr
    assert r.stdout == alone.tobytes().hex()


def test_run_images_refuses_bad_arguments():
    a, b = _small_list(1)[0], _small_list(1)[0]
    x = np.zeros((4, 8, 5, 6), np.float32)
    y = np.zeros((4, 16), np.float32)
    with pytest.raises(ValueError, match="at least one step list"):
        _kernels.run_images([], x, y)
    with pytest.raises(ValueError, match="share tensors"):
        _kernels.run_images([a, a], x, y)
    views = [np.empty((1, 8, 5, 6), np.float32), np.empty((1, 16, 5, 6), np.float32),
             np.empty((1, 16, 3, 3), np.float32), np.empty((1, 16), np.float32)]
    c, d = _kernels.StepList(views, 1), _kernels.StepList(views, 1)
    with pytest.raises(ValueError, match="share tensors"):
        _kernels.run_images([c, d], x, y)
    with pytest.raises(ValueError, match="built for one thread"):
        _kernels.run_images([a, _small_list(2)[0]], x, y)
    with pytest.raises(ValueError, match="a multiple of 3"):
        _kernels.run_images([a, b, _small_list(1)[0]], x, y)
    with pytest.raises(ValueError, match="same number of images"):
        _kernels.run_images([a, b], x, y[:2])
    with pytest.raises(ValueError, match="not built for images of shape"):
        _kernels.run_images([a, b], np.zeros((4, 8, 6, 5), np.float32), y)
    with pytest.raises(ValueError, match="not built for images of shape"):
        _kernels.run_images([a, b], x, np.zeros((4, 15), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        _kernels.run_images([a, b], x.astype(np.float64), y)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        _kernels.run_images([a, b], x, np.zeros((16, 4), np.float32).T)
    ro = y.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _kernels.run_images([a, b], x, ro)
    buf = np.zeros(4 * 8 * 5 * 6, np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        _kernels.run_images([a, b], buf.reshape(4, 8, 5, 6), buf[:64].reshape(4, 16))
    with pytest.raises(ValueError, match="times must have 2 entries"):
        _kernels.run_images([a, b], x, y, np.zeros(3))
    five = _kernels.StepList([np.empty((1, 8, 5, 6), np.float32), np.empty((1, 8), np.float32),
                              np.empty((1, 8), np.float32), np.empty((1, 8), np.float32),
                              np.empty((1, 16), np.float32)], 1)
    with pytest.raises(ValueError, match="same tensors"):
        _kernels.run_images([a, five], x, y)
    no_out = _kernels.StepList([np.empty((1, 8, 5, 6), np.float32), np.empty((1, 8), np.float32),
                                None], 1)
    with pytest.raises(ValueError, match="not built for images"):
        _kernels.run_images([no_out], x, y)
    times = np.zeros(2)
    _kernels.run_images([a, b], x, y, times)  # the refusals left both lists usable
    assert 0 < times[0] <= times[1]
    a.run(x[:1], y[:1])


def test_step_list_refuses_bad_arguments():
    steps, tensors, _ = _small_list()
    x = np.zeros((1, 8, 5, 6), np.float32)
    y = np.zeros((1, 16), np.float32)
    with pytest.raises(ValueError, match="tensor 0 must be an array of shape"):
        steps.run(np.zeros((1, 8, 5, 7), np.float32), y)
    with pytest.raises(ValueError, match="tensor 3 must be an array of shape"):
        steps.run(x, np.zeros((16,), np.float32))
    with pytest.raises(ValueError, match="and strides"):
        steps.run(np.zeros((1, 8, 6, 5), np.float32).transpose(0, 1, 3, 2), y)
    with pytest.raises(ValueError, match="float32 numpy arrays"):
        steps.run(np.zeros((1, 8, 5, 6), np.int32), y)
    ro = np.zeros((1, 16), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        steps.run(x, ro)
    with pytest.raises(ValueError, match="not in"):
        steps.run(x, y, 2, 4)
    with pytest.raises(ValueError, match=r"times must have 2 entries \(or 3\)"):
        steps.run(x, y, 0, 2, np.zeros(4))
    with pytest.raises(ValueError, match=r"times must have 2 entries$"):
        steps.run(x, y, 1, 1, np.zeros(1))  # no step: times[1] is still written
    # Read-only input is fine: tensor 0 is only read.
    x.flags.writeable = False
    steps.run(x, y)

    W = fs.SparseMatrix.from_dense(np.eye(16, dtype=np.float32), block_size=1)
    kisa, k = _dispatch.spmm_kernel(fs.isa(), 1, 30)
    isa = _dispatch.isa_id(fs.isa())
    with pytest.raises(ValueError, match="tensor 0 is the input"):
        steps.add_spmm(kisa, k, W._packed, 1, -1, 0, None, 0.0, 1.0)
    with pytest.raises(ValueError, match="must not overlap"):
        steps.add_spmm(kisa, k, W._packed, 1, -1, 1, None, 0.0, 1.0)
    with pytest.raises(ValueError, match="no tensor 7"):
        steps.add_spmm(kisa, k, W._packed, 1, -1, 7, None, 0.0, 1.0)
    with pytest.raises(ValueError, match="x has 8 channels"):
        steps.add_spmm(kisa, k, W._packed, 0, -1, 1, None, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"w must have shape \(16, 9\)"):
        steps.add_dwconv2d(isa, 1, 2, np.zeros((16, 4), np.float32), None, 3, 1, 1, 1, 0.0, 1.0)
    with pytest.raises(ValueError, match="lo must be <= hi"):
        steps.add_dwconv2d(isa, 1, 2, np.zeros((16, 9), np.float32), None, 3, 2, 1, 1, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"out must have shape \(N, C\)"):
        steps.add_gavgpool(isa, 0, 3)
    assert len(steps) == 3  # refused steps were not added
    shared = np.empty((1, 16, 5, 6), np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        _kernels.StepList([x.copy(), shared, shared[:, :, :3, :3].copy(), shared], 1) \
            .add_spmm(kisa, k, W._packed, 1, -1, 1, None, 0.0, 1.0)


@pytest.fixture(scope="module")
def v2_net():
    sd = random_mobilenet_v2_weights(0.5, 10, seed=4)
    for key, v in sd.items():
        if (v.ndim == 4 and v.shape[2:] == (1, 1)) or key == "classifier.1.weight":
            sd[key] = fs.prune.magnitude(v, 0.8)
    return sd, fs.MobileNetV2.from_dense(sd)


def test_network_calls_reuse_buffers_and_match_reference(isa, v2_net):
    sd, net = v2_net
    rng = np.random.default_rng(5)
    xs = [rng.uniform(-1, 1, (1, 3, 40, 36)).astype(np.float32) for _ in range(2)]
    first = net(xs[0])
    assert _rel_err(net(xs[1]), reference.mobilenet_v2(sd, xs[1])) < RTOL
    assert net(xs[0]).tobytes() == first.tobytes()
    assert _rel_err(first, reference.mobilenet_v2(sd, xs[0])) < RTOL


def test_network_batch_1_calls_take_the_kept_workspace_under_current_settings(v2_net):
    """After a checked batch-1 call the network keeps its workspace for O(1)-checked calls;
    a change of ISA or thread count sends the next call through a workspace built for it."""
    sd, _ = v2_net
    net = fs.MobileNetV2.from_dense(sd)
    rng = np.random.default_rng(9)
    x, other = (rng.uniform(-1, 1, (1, 3, 33, 31)).astype(np.float32) for _ in range(2))
    first = net(x[0][None])  # a new axis of stride 0 is C order too
    key, ws = net._fast
    assert key[0] == ((1, 3, 33, 31), "NCHW") and ws[1].pinned
    assert net(x).tobytes() == first.tobytes() and net._fast[1] is ws
    assert not net._free.get(key)  # the second call built nothing: it ran the kept list
    assert _rel_err(net(other), reference.mobilenet_v2(sd, other)) < RTOL
    # Another shape and layout run checked, in the pool, and leave the kept one alone.
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    assert net(nhwc, layout="NHWC").tobytes() == first.tobytes() and net._fast[1] is ws
    assert _rel_err(net(x[:, :, :20]), reference.mobilenet_v2(sd, x[:, :, :20])) < RTOL
    assert net._fast[1] is ws
    previous = fs.isa()
    for name in fs.available_isas():
        fs.set_isa(name)
        try:
            alone = fs.MobileNetV2.from_dense(sd)(x).tobytes()
            assert net(x).tobytes() == alone and net(x).tobytes() == alone
            assert net._fast[0][2] == name and net._fast[1][1].pinned
        finally:
            fs.set_isa(previous)
    if _kernels.OPENMP:
        net.num_threads = 2
        assert net._fast is None and net(x).tobytes() == first.tobytes()
        assert net._fast[0][1] == 2 and net._fast[1][1].num_threads == 2


def test_network_is_bit_identical_for_every_thread_count(v2_net):
    if not _kernels.OPENMP:
        pytest.skip("built without OpenMP")
    sd, _ = v2_net
    x = np.random.default_rng(6).uniform(-1, 1, (2, 3, 57, 50)).astype(np.float32)
    outs = [fs.MobileNetV2.from_dense(sd, num_threads=t)(x).tobytes() for t in (1, 2, 3)]
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("k", [3, 5])
def test_threads_splitting_positions_match_one_thread(isa, k):
    """With fewer images than 2 per thread, threads split the positions of 1x1 and stride-1
    depthwise steps at the same 16-float cuts (_kernels._spatial_chunk), cuts falling inside
    rows; planes of up to 32 rows (copied to scratch, only as far as a piece's taps reach) and
    taller (bounded loads at the plane's ends): bit-identical to one thread, close to the
    reference."""
    if not _kernels.OPENMP:
        pytest.skip("built without OpenMP")
    rng = np.random.default_rng(40 + k)
    for n, h, w in [(1, 16, 16), (1, 15, 19), (1, 33, 9), (3, 40, 41), (1, 70, 5)]:
        x = rng.standard_normal((n, 6, h, w)).astype(np.float32)
        wt = rng.standard_normal((6, 1, k, k)).astype(np.float32)
        W = fs.SparseMatrix.from_dense(fs.prune.magnitude(
            rng.standard_normal((10, 6)).astype(np.float32), 0.5))
        dws = [fs.depthwise_conv2d(x, wt, padding=k // 2, activation="relu6", num_threads=t)
               for t in (1, 2, 3)]
        pws = [fs.sparse_conv1x1(x, W, num_threads=t) for t in (1, 2, 3)]
        assert dws[0].tobytes() == dws[1].tobytes() == dws[2].tobytes(), (n, h, w)
        assert pws[0].tobytes() == pws[1].tobytes() == pws[2].tobytes(), (n, h, w)
        ref = reference.depthwise_conv2d(x, wt, padding=k // 2, activation="relu6")
        assert _rel_err(dws[1], ref) < RTOL
        assert _rel_err(pws[2], reference.sparse_conv1x1(x, W.to_dense())) < RTOL


KSPLIT = 6  # FS_STEP_SPMM_KSPLIT


@pytest.mark.parametrize("block,nparts_bytes,residual,n", [
    (1, None, True, 1), (1, 4, False, 1), (4, 100, True, 2), (2, 300, False, 1),
    (8, None, True, 3), (1, 30, True, 1),
])
def test_ksplit_step_matches_reference_on_every_thread_count(isa, block, nparts_bytes,
                                                             residual, n, monkeypatch):
    """FS_STEP_SPMM_KSPLIT (a 1x1 summed in two halves of its input channels, then added with
    the residual and clamped): close to the reference, bit-identical on 1, 2 and 3 threads,
    for 2 to many parts, residual or not, spatial sizes around the vector and tile lengths.
    With a single part the flag is ignored (a plain step)."""
    if nparts_bytes is not None:
        monkeypatch.setattr(_kernels, "SPMM_PART_BYTES", nparts_bytes)
    rng = np.random.default_rng(block * 10 + n)
    cin, cout = 61, 13
    dense = rng.standard_normal((cout, cin)).astype(np.float32)
    dense[rng.random((cout, cin)) < 0.7] = 0
    dense[2] = 0  # an empty row
    W = fs.SparseMatrix.from_dense(dense, block_size=block)
    bias = rng.standard_normal(cout).astype(np.float32)
    isa_id = _dispatch.isa_id(fs.isa())
    for hw in (1, 15, 16, 17, 49, 129, 196):
        x = rng.standard_normal((n, cin, 1, hw)).astype(np.float32)
        r = rng.standard_normal((n, cout, 1, hw)).astype(np.float32)
        kisa, k = _dispatch.spmm_kernel(fs.isa(), block, hw)
        outs = []
        for threads in (1, 2, 3):
            tensors = [np.empty_like(x), np.empty_like(r), np.empty((n, cout, 1, hw), np.float32)]
            steps = _kernels.StepList(tensors, threads)
            steps.add_spmm(kisa, k, W._packed, 0, 1 if residual else -1, 2, bias, -1.5, 2.5,
                           ksplit=True)
            split = steps.kinds()[0] == KSPLIT
            if nparts_bytes is not None and min(hw, 16) * cin * 4 > nparts_bytes:
                assert split, (hw, nparts_bytes)  # several parts: the split runs
            tensors[1][...] = r  # the residual is a planned tensor (the middle one)
            y = np.empty((n, cout, 1, hw), np.float32)
            steps.run(x, y)
            outs.append(y.tobytes())
        ref = reference.sparse_conv1x1(x, dense, bias=bias, residual=r if residual else None,
                                       activation=("clamp", -1.5, 2.5))
        assert _rel_err(np.frombuffer(outs[0], np.float32).reshape(ref.shape), ref) < RTOL, hw
        assert outs[0] == outs[1] == outs[2], (hw, block, residual, n)


def test_ksplit_halves_hold_equal_input_channels(monkeypatch):
    """A K-split step sums parts [0, nparts / 2) on one thread and the rest on another, and
    each half should read the input channels the channel-split step before wrote on that
    thread (the first half): a part count that would be odd is made even. (3 parts split
    576 -> 160 at 7x7 1/3 : 2/3, 1.4x on 2 threads.)"""
    cin, cout, hw = 61, 13, 16
    dense = np.random.default_rng(3).standard_normal((cout, cin)).astype(np.float32)
    W = fs.SparseMatrix.from_dense(dense, block_size=1)
    kisa, k = _dispatch.spmm_kernel(fs.isa(), 1, hw)
    mr = _kernels.spmm_kernels(kisa)[k][1]
    counts = {}
    for want in (2, 3, 4, 5):
        # the part size that gives `want` parts for this tile (nparts = ceil(tile bytes / size))
        tile = min(mr, hw) * cin * 4
        monkeypatch.setattr(_kernels, "SPMM_PART_BYTES", -(-tile // want))
        for ksplit in (False, True):
            tensors = [np.empty((1, cin, 1, hw), np.float32), np.empty((1, cout, 1, hw), np.float32)]
            steps = _kernels.StepList(tensors, 2)
            steps.add_spmm(kisa, k, W._packed, 0, -1, 1, None, -np.inf, np.inf, ksplit=ksplit)
            counts[want, ksplit] = steps.spmm_parts()[0]
            assert (steps.kinds()[0] == KSPLIT) == ksplit
    assert [counts[w, False] for w in (2, 3, 4, 5)] == [2, 3, 4, 5]
    assert [counts[w, True] for w in (2, 3, 4, 5)] == [2, 4, 4, 6]


def test_profile_times_every_layer(v2_net):
    _, net = v2_net
    x = np.random.default_rng(7).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    per, total = net.profile(x, repeat=3)
    assert len(per) == len(net.layers) and all(t > 0 for t in per)
    assert sum(per) <= total * 1.5


@pytest.mark.parametrize("block,cout,group_rows,k,stride,threads,part_bytes", [
    (1, 16, 1, 3, 1, 1, None), (1, 17, 5, 3, 2, 2, None), (2, 13, 4, 5, 1, 3, None),
    (4, 22, 8, 3, 2, 2, None), (8, 19, 3, 5, 2, 1, None), (4, 12, 64, 3, 1, 2, None),
    (1, 17, 5, 3, 2, 2, 4), (4, 22, 8, 3, 1, 1, 100),
])
def test_fused_1x1_depthwise_equals_the_two_steps(isa, block, cout, group_rows, k, stride,
                                                   threads, part_bytes, monkeypatch):
    """The fused step runs the same kernels on the same numbers: bit-identical to the 1x1
    then the depthwise conv, for every block size, leftover rows and group size, with the
    1x1's input channels in one part or several (K-blocking)."""
    if part_bytes is not None:
        monkeypatch.setattr(_kernels, "SPMM_PART_BYTES", part_bytes)
    rng = np.random.default_rng(block * 100 + cout)
    cin, h, w = 7, 9, 11
    dense = rng.standard_normal((cout, cin)).astype(np.float32)
    dense[rng.random((cout, cin)) < 0.6] = 0
    dense[1] = 0  # an empty row
    W = fs.SparseMatrix.from_dense(dense, block_size=block)
    b1 = rng.standard_normal(cout).astype(np.float32)
    wd = rng.standard_normal((cout, k * k)).astype(np.float32)
    b2 = rng.standard_normal(cout).astype(np.float32)
    p = k // 2
    oh, ow = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    tensors = [np.empty((2, cin, h, w), np.float32), np.empty((2, cout, h, w), np.float32),
               np.empty((2, cout, oh, ow), np.float32)]
    isa_id = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), block, h * w)
    two = _kernels.StepList(tensors, threads)
    two.add_spmm(kisa, kern, W._packed, 0, -1, 1, b1, 0.0, 6.0)
    two.add_dwconv2d(isa_id, 1, 2, wd, b2, k, stride, p, p, -1.0, 1.0)
    fused = _kernels.StepList(tensors, threads)
    fused.add_spmm_dwconv2d(kisa, kern, W._packed, 0, 1, 2, b1, 0.0, 6.0, isa_id, wd, b2, k,
                            stride, p, p, -1.0, 1.0, group_rows)
    assert len(fused) == 1
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    y2, yf = np.empty((2, cout, oh, ow), np.float32), np.full((2, cout, oh, ow), np.nan, np.float32)
    two.run(x, y2)
    mid = np.copy(tensors[1])
    fused.run(x, yf)
    assert yf.tobytes() == y2.tobytes()
    assert np.array_equal(tensors[1], mid, equal_nan=True)  # the fused step never writes mid
    ref = reference.depthwise_conv2d(
        reference.sparse_conv1x1(x, W, bias=b1, activation="relu6"), wd.reshape(cout, 1, k, k),
        bias=b2, stride=stride, padding=p, activation=("clamp", -1.0, 1.0))
    assert _rel_err(yf, ref) < RTOL


@pytest.mark.parametrize("h,w,k,stride,pad", [
    (9, 11, 3, 1, 1),    # stride-1 flat path, the plane copied into scratch
    (40, 12, 3, 1, 1),   # stride-1 flat path on the plane itself; cuts on 16-float positions
    (9, 11, 5, 1, 2),
    (20, 24, 3, 2, 1),   # stride 2 on quarter planes (PyTorch's padding)
    (20, 24, 5, 2, 1),   # ... and TensorFlow's "same" (k/2 - 1)
    (12, 70, 3, 2, 1),   # stride 2 on the row path (outputs wider than 32)
    (10, 13, 3, 1, 0),   # no padding: the row path at stride 1
    (40, 48, 3, 1, 1),   # stride-1 planes >= 48 wide: whole rows by blocks, cut rows flat
    (37, 50, 5, 1, 2),
])
@pytest.mark.parametrize("bands", [2, 3, 7, 50])
def test_fused_step_in_bands_of_rows_equals_one_band(isa, h, w, k, stride, pad, bands):
    """Output rows cut into bands (the threads' shares at batch 1), each band's 1x1 computing
    only the input rows its taps use: the same bytes as one band and as the two steps, on 1
    to 3 threads, with several channel groups (a band never reads rows another group or band
    left in scratch), more bands than rows included."""
    rng = np.random.default_rng(h * 100 + w * 10 + k + bands)
    cin, cout = 6, 13
    dense = rng.standard_normal((cout, cin)).astype(np.float32)
    dense[rng.random((cout, cin)) < 0.5] = 0
    W = fs.SparseMatrix.from_dense(dense, block_size=1)
    b1 = rng.standard_normal(cout).astype(np.float32)
    wd = rng.standard_normal((cout, k * k)).astype(np.float32)
    b2 = rng.standard_normal(cout).astype(np.float32)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    tensors = [np.empty((1, cin, h, w), np.float32), np.empty((1, cout, h, w), np.float32),
               np.empty((1, cout, oh, ow), np.float32)]
    isa_id = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, h * w)
    x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    # A first run on infinities leaves +-inf and NaN in every scratch plane: a band whose 1x1
    # skipped a row its taps use would read them.
    poison = np.full((1, cin, h, w), np.inf, np.float32)
    poison[:, ::2] = -np.inf
    outs = []
    for threads, nb in ((1, 1), (1, bands), (2, bands), (3, bands)):
        fused = _kernels.StepList(tensors, threads)
        fused.add_spmm_dwconv2d(kisa, kern, W._packed, 0, 1, 2, b1, -np.inf, np.inf, isa_id,
                                wd, b2, k, stride, pad, pad, -1.0, 1.0, 4, nb)
        y = np.full((1, cout, oh, ow), np.nan, np.float32)
        fused.run(poison, y)
        fused.run(x, y)
        outs.append(y.tobytes())
    assert outs[1] == outs[0] and outs[2] == outs[0] and outs[3] == outs[0]
    ref = reference.depthwise_conv2d(
        reference.sparse_conv1x1(x, W, bias=b1), wd.reshape(cout, 1, k, k),
        bias=b2, stride=stride, padding=pad, activation=("clamp", -1.0, 1.0))
    assert _rel_err(np.frombuffer(outs[0], np.float32).reshape(ref.shape), ref) < RTOL
    table = _kernels._row_bands(bands, k, stride, h, w, oh, ow, pad, pad).reshape(-1, 4)
    assert table[0, 0] == 0 and table[-1, 1] == oh * ow and 1 <= len(table) <= bands
    assert np.all(table[1:, 0] == table[:-1, 1]) and np.all(table[:, 0] % ow == 0)
    if stride == 1 and pad == k // 2:  # the flat path: ranges in whole vectors
        assert np.all(table[:, 0] % 16 == 0)
    for oy0, oy1, i0, i1 in table // [ow, ow, 1, 1]:
        rows_used = [min(max(oy * stride - pad + ky, 0), h - 1)
                     for oy in (oy0, oy1 - 1) for ky in (0, k - 1)]
        assert i0 <= min(rows_used) * w and max(rows_used) * w + w <= i1 <= h * w
        assert i1 - i0 <= (max(rows_used) - min(rows_used) + 1) * w + 30  # rows + alignment
    with pytest.raises(ValueError, match="bands must be >= 1"):
        _kernels._row_bands(0, k, stride, h, w, oh, ow, pad, pad)


# ---- A stride-1 depthwise conv fused with the 1x1 reading it (FS_STEP_DWCONV2D_SPMM) ------

def _dw_1x1_case(rng, c, cout, block, k):
    """A 1x1 of `cout` x `c` (60 % zeros, one empty row) in `block`-row blocks, depthwise
    weights and both biases."""
    dense = rng.standard_normal((cout, c)).astype(np.float32)
    dense[rng.random((cout, c)) < 0.6] = 0
    dense[cout // 2] = 0
    W = fs.SparseMatrix.from_dense(dense, block_size=block)
    return (W, rng.standard_normal((c, k * k)).astype(np.float32),
            rng.standard_normal(c).astype(np.float32), rng.standard_normal(cout).astype(np.float32))


def _add_dw_1x1(steps, fused, W, wd, b2, b1, k, band_rows, src, mid, res, dst, acts, hw):
    """The depthwise conv src -> mid and the 1x1 mid (+ res) -> dst (images of hw positions),
    as one step or two."""
    (dlo, dhi), (lo, hi) = acts
    isa = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), W.block_size, hw)
    if fused:
        steps.add_dwconv2d_spmm(isa, wd, b2, k, k // 2, k // 2, dlo, dhi, kisa, kern, W._packed,
                                src, mid, res, dst, b1, lo, hi, band_rows)
    else:
        steps.add_dwconv2d(isa, src, mid, wd, b2, k, 1, k // 2, k // 2, dlo, dhi)
        steps.add_spmm(kisa, kern, W._packed, mid, res, dst, b1, lo, hi)


ACTS = [((-np.inf, np.inf), (-np.inf, np.inf)), ((0.0, 6.0), (-np.inf, np.inf)),
        ((-1.0, 1.0), (0.0, 6.0))]


@given(h=st.integers(4, 40), w=st.sampled_from([48, 49, 56, 64, 80]), k=st.sampled_from([3, 5]),
       block=st.sampled_from([1, 2, 4, 8]), c=st.integers(1, 9), cout=st.integers(1, 19),
       want=st.integers(1, 44), res=st.booleans(), act=st.integers(0, 2),
       threads=st.integers(1, 3), zero=st.booleans())
def test_fused_depthwise_1x1_equals_the_two_steps(isa, h, w, k, block, c, cout, want, res,
                                                  act, threads, zero):
    """A stride-1 depthwise conv and the 1x1 reading it as one step, by bands of rows (each
    band's depthwise output in scratch): the bytes of the two steps on any thread count and
    band height, for every block size, empty rows and all-zero weights, with and without a
    residual and clamps; the depthwise output tensor never written; the reference's values."""
    band_rows = _kernels.dw_spmm_band_rows(0, k, 1, h, w, h, w, k // 2, k // 2, want)
    assume(band_rows)
    assert 4 <= band_rows <= max(want, 4) and h % band_rows == 0 and band_rows * w % 16 == 0
    rng = np.random.default_rng(h * 1000 + w * 10 + k + block + c * 7 + cout)
    W, wd, b2, b1 = _dw_1x1_case(rng, c, cout, block, k)
    if zero:
        W = fs.SparseMatrix.from_dense(np.zeros((cout, c), np.float32), block_size=block)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    r = rng.standard_normal((1, cout, h, w)).astype(np.float32)
    poison = np.where(rng.random(x.shape) < 0.5, np.inf, -np.inf).astype(np.float32)
    outs = []
    for fused, t in ((False, 1), (True, 1), (True, threads)):
        tensors = [x, np.full((1, c, h, w), np.nan, np.float32), r,
                   np.empty((1, cout, h, w), np.float32)]
        steps = _kernels.StepList(tensors, t)
        _add_dw_1x1(steps, fused, W, wd, b2, b1, k, band_rows, 0, 1, 2 if res else -1, 3,
                    ACTS[act], h * w)
        y = np.full((1, cout, h, w), np.nan, np.float32)
        steps.run(poison, y)
        steps.run(x, y)
        if fused:
            assert len(steps) == 1 and np.isnan(tensors[1]).all()  # never written
        outs.append(y.tobytes())
    assert outs[1] == outs[0] and outs[2] == outs[0]
    (dlo, dhi), (lo, hi) = ACTS[act]
    ref = reference.sparse_conv1x1(
        reference.depthwise_conv2d(x, wd.reshape(c, 1, k, k), bias=b2, padding=k // 2,
                                   activation=("clamp", dlo, dhi)),
        W, bias=b1, residual=r if res else None, activation=("clamp", lo, hi))
    assert _rel_err(np.frombuffer(outs[1], np.float32).reshape(ref.shape), ref) < RTOL


@given(h=st.integers(33, 72), w=st.sampled_from([48, 64]), stride=st.sampled_from([1, 2]),
       pad=st.sampled_from([0, 1]), nhwc=st.booleans(), k=st.sampled_from([3, 5]),
       block=st.sampled_from([1, 2, 4, 8]), c=st.integers(1, 9), cout=st.integers(1, 19),
       want=st.integers(1, 44), res=st.booleans(), act=st.integers(0, 2),
       n=st.integers(1, 2), threads=st.integers(1, 3), zero=st.booleans())
def test_fused_conv_depthwise_1x1_equals_the_three_steps(isa, h, w, stride, pad, nhwc, k,
                                                         block, c, cout, want, res, act, n,
                                                         threads, zero):
    """The first conv, a stride-1 depthwise conv and the 1x1 after it as one step, band by
    band with only the conv rows each band reads in the work buffer: the bytes of the three
    steps on any thread count, batch, band height, layout and padding, for every block
    size, empty rows and all-zero weights, with and without a residual and clamps, after a
    run on infinities; neither middle tensor written; the reference's values."""
    band_rows = _kernels.dw_spmm_band_rows(0, k, 1, h, w, h, w, k // 2, k // 2, want)
    assume(band_rows)
    rng = np.random.default_rng(h * 1000 + w * 10 + k + block + c * 7 + cout + stride)
    W, wd, b2, b1 = _dw_1x1_case(rng, c, cout, block, k)
    if zero:
        W = fs.SparseMatrix.from_dense(np.zeros((cout, c), np.float32), block_size=block)
    wc = rng.standard_normal((c, 3, 3, 3)).astype(np.float32)
    bc = rng.standard_normal(c).astype(np.float32)
    # Input rows and columns that give an h x w output (with pad 0 and stride 2 the conv's
    # last row and column read one padded row and column).
    ih, iw = (h + 2 - 2 * pad, w + 2 - 2 * pad) if stride == 1 else (2 * h, 2 * w)
    x = rng.uniform(-1, 1, (n, 3, ih, iw)).astype(np.float32)
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else x
    r = rng.standard_normal((n, cout, h, w)).astype(np.float32)
    poison = np.where(rng.random(xin.shape) < 0.5, np.inf, -np.inf).astype(np.float32)
    (clo, chi), ((dlo, dhi), (lo, hi)) = ((0.0, 6.0), ACTS[act])
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), W.block_size, h * w)
    isa_id = _dispatch.isa_id(fs.isa())
    outs = []
    for fused, t in ((False, 1), (True, 1), (True, threads)):
        tensors = [xin, np.full((n, c, h, w), np.nan, np.float32),
                   np.full((n, c, h, w), np.nan, np.float32), r,
                   np.empty((n, cout, h, w), np.float32)]
        steps = _kernels.StepList(tensors, t)
        if fused:
            steps.add_conv2d_dwconv2d_spmm(isa_id, nhwc, wc.reshape(c, -1), bc, stride, pad, pad,
                                           clo, chi, isa_id, wd, b2, k, k // 2, k // 2, dlo, dhi,
                                           kisa, kern, W._packed, 0, 1, 2, 3 if res else -1, 4,
                                           b1, lo, hi, band_rows)
        else:
            steps.add_conv2d(isa_id, 0, nhwc, 1, wc.reshape(c, -1), bc, stride, pad, pad, clo, chi)
            steps.add_dwconv2d(isa_id, 1, 2, wd, b2, k, 1, k // 2, k // 2, dlo, dhi)
            steps.add_spmm(kisa, kern, W._packed, 2, 3 if res else -1, 4, b1, lo, hi)
        y = np.full((n, cout, h, w), np.nan, np.float32)
        steps.run(poison, y)
        steps.run(xin, y)
        if fused:
            assert len(steps) == 1 and np.isnan(tensors[1]).all() and np.isnan(tensors[2]).all()
        outs.append(y.tobytes())
    assert outs[1] == outs[0] and outs[2] == outs[0]
    pads = (pad, pad, 1 - pad, 1 - pad) if stride == 2 else pad
    ref = reference.sparse_conv1x1(
        reference.depthwise_conv2d(
            reference.conv2d(x, wc, bias=bc, stride=stride, padding=pads,
                             activation=("clamp", clo, chi)),
            wd.reshape(c, 1, k, k), bias=b2, padding=k // 2, activation=("clamp", dlo, dhi)),
        W, bias=b1, residual=r if res else None, activation=("clamp", lo, hi))
    assert _rel_err(np.frombuffer(outs[1], np.float32).reshape(ref.shape), ref) < RTOL


@pytest.mark.parametrize("p,h,w,k,want,pieced", [
    (2, 70, 48, 3, 8, {1, 3}),   # pieces of 35 rows, bands of 7, input and output in pieces
    (2, 70, 48, 3, 35, {1}),     # one band per piece, the output whole
    (3, 108, 48, 5, 8, {1, 3}),  # 5x5, a middle piece with halos on both sides
    (2, 80, 56, 5, 4, {1, 3}),   # bands of 4 rows: the depthwise rows path's block
])
def test_fused_depthwise_1x1_reads_row_pieces(isa, p, h, w, k, want, pieced):
    """x -> 1x1 -> [depthwise -> 1x1 + residual] -> 1x1, the bracket fused, its input (and
    residual) and output in row pieces or whole: each band inside one piece, its halo rows
    read from the neighbouring piece. The bytes of whole images on one thread, on 1 to 3
    threads, after a run on infinities."""
    rng = np.random.default_rng(h + w + k + p)
    cin, c, cout = 3, 6, 6
    W, wd, b2, b1 = _dw_1x1_case(rng, c, c, 1, k)
    W0, W3 = (_dw_1x1_case(rng, m, n, 1, k)[0] for m, n in ((cin, c), (c, cout)))
    band_rows = _kernels.dw_spmm_band_rows(p, k, 1, h, w, h, w, k // 2, k // 2, want)
    assert band_rows and (h // p) % band_rows == 0
    x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    poison = np.where(rng.random(x.shape) < 0.5, np.inf, -np.inf).astype(np.float32)
    shapes = [(cin, h, w), (c, h, w), (c, h, w), (c, h, w), (cout, h, w)]
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, h * w)

    def run(threads, fused):
        held = pieced if fused else set()
        tensors = [_pieced(*shapes[t], p) if t in held else
                   np.full((1,) + shapes[t], np.nan, np.float32) for t in range(5)]
        steps = _kernels.StepList(tensors, threads, [p if t in held else 0 for t in range(5)])
        steps.add_spmm(kisa, kern, W0._packed, 0, -1, 1, None, -6.0, 6.0)
        _add_dw_1x1(steps, fused, W, wd, b2, b1, k, band_rows, 1, 2, 1, 3, ACTS[2], h * w)
        steps.add_spmm(kisa, kern, W3._packed, 3, -1, 4, None, -np.inf, np.inf)
        y = np.empty((1,) + shapes[4], np.float32)
        steps.run(poison, y)
        steps.run(x, y)
        if fused:
            assert np.isnan(tensors[2]).all()
        return y.tobytes(), _whole(tensors[3]).tobytes()

    want_bytes = run(1, False)
    for threads in (1, 2, 3):
        assert run(threads, True) == want_bytes, threads
    r1 = reference.sparse_conv1x1(x, W0, activation=("clamp", -6.0, 6.0))
    r = reference.depthwise_conv2d(r1, wd.reshape(c, 1, k, k), bias=b2, padding=k // 2,
                                   activation=("clamp", -1.0, 1.0))
    r = reference.sparse_conv1x1(r, W, bias=b1, residual=r1, activation="relu6")
    r = reference.sparse_conv1x1(r, W3)
    assert _rel_err(np.frombuffer(want_bytes[0], np.float32).reshape(r.shape), r) < RTOL


def test_fused_conv_depthwise_1x1_refuses_what_it_cannot_run():
    rng = np.random.default_rng(3)
    W, wd, b2, b1 = _dw_1x1_case(rng, 4, 4, 1, 3)
    wc, bc = rng.standard_normal((4, 27)).astype(np.float32), np.zeros(4, np.float32)
    isa = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 64)
    img = lambda h, w: np.empty((1, 3, h, w), np.float32)  # noqa: E731
    one = lambda c=4, h=40, w=48: np.empty((1, c, h, w), np.float32)  # noqa: E731

    def add(s, rows=8, res=-1, dst=3, mid=2):
        s.add_conv2d_dwconv2d_spmm(isa, False, wc, bc, 1, 1, 1, 0.0, 6.0, isa, wd, b2, 3, 1, 1,
                                   0.0, 6.0, kisa, kern, W._packed, 0, 1, mid, res, dst, b1,
                                   0.0, 6.0, rows)

    s = _kernels.StepList([img(40, 48), one(), one(), one(), one(c=2)], 1)
    for rows in (3, 6, 0):  # 40 / 6 does not divide, 3 is below a block
        with pytest.raises(ValueError, match="must come from dw_spmm_band_rows"):
            add(s, rows)
    for res in (2, 1, 4):  # never written (the depthwise or conv output); another shape
        with pytest.raises(ValueError, match="the residual"):
            add(s, res=res)
    with pytest.raises(ValueError, match="overlap"):
        add(s, dst=2)
    # Planes not read in place: 32 rows (a staged copy), rows not whole 16-float vectors.
    for h, w in ((32, 48), (40, 56)):
        t = _kernels.StepList([img(h, w), one(h=h, w=w), one(h=h, w=w), one(h=h, w=w)], 1)
        with pytest.raises(ValueError, match="must come from dw_spmm_band_rows"):
            add(t)
    p = _kernels.StepList([img(80, 48), one(h=80), one(h=80), _pieced(4, 80, 48, 2), one()],
                          2, [0, 0, 0, 2, 0])
    with pytest.raises(ValueError, match="row pieces"):
        add(p)
    assert len(s) == 0 and len(p) == 0


def test_fused_depthwise_1x1_refuses_what_it_cannot_run():
    rng = np.random.default_rng(2)
    W, wd, b2, b1 = _dw_1x1_case(rng, 4, 4, 1, 3)
    isa = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 64)
    # Not a stride-1 'same' conv on rows the kernel reads by bands in place: no bands.
    assert _kernels.dw_spmm_band_rows(0, 3, 2, 64, 64, 32, 32, 1, 1, 8) == 0
    assert _kernels.dw_spmm_band_rows(0, 3, 1, 64, 32, 64, 32, 1, 1, 8) == 0  # < 48 wide
    assert _kernels.dw_spmm_band_rows(0, 3, 1, 64, 64, 62, 62, 0, 0, 8) == 0  # no padding
    assert _kernels.dw_spmm_band_rows(2, 3, 1, 64, 64, 64, 64, 1, 1, 8) == 0  # pieces of 32
    assert _kernels.dw_spmm_band_rows(0, 3, 1, 37, 64, 37, 64, 1, 1, 8) == 0  # 37 rows: prime
    assert _kernels.dw_spmm_band_rows(0, 3, 1, 40, 50, 40, 50, 1, 1, 7) == 0  # 16-float cuts
    assert _kernels.dw_spmm_band_rows(0, 3, 1, 40, 50, 40, 50, 1, 1, 8) == 8
    one = lambda c=4, h=40, w=48: np.empty((1, c, h, w), np.float32)  # noqa: E731
    s = _kernels.StepList([one(), one(), one(), one()], 1)
    for rows in (3, 6, 0):  # 40 / 6 does not divide, 3 is below a block
        with pytest.raises(ValueError, match="must come from dw_spmm_band_rows"):
            s.add_dwconv2d_spmm(isa, wd, b2, 3, 1, 1, 0.0, 6.0, kisa, kern, W._packed, 0, 1,
                                -1, 2, b1, 0.0, 6.0, rows)
    with pytest.raises(ValueError, match="stride|padding|k must be"):
        s.add_dwconv2d_spmm(isa, wd, b2, 4, 1, 1, 0.0, 6.0, kisa, kern, W._packed, 0, 1, -1, 2,
                            b1, 0.0, 6.0, 8)
    with pytest.raises(ValueError, match="channels"):
        s.add_dwconv2d_spmm(isa, wd, b2, 3, 1, 1, 0.0, 6.0, kisa, kern,
                            _dw_1x1_case(rng, 5, 4, 1, 3)[0]._packed, 0, 1, -1, 2, b1, 0.0,
                            6.0, 8)
    with pytest.raises(ValueError, match="overlap"):
        s.add_dwconv2d_spmm(isa, wd, b2, 3, 1, 1, 0.0, 6.0, kisa, kern, W._packed, 0, 1, -1, 1,
                            b1, 0.0, 6.0, 8)
    for res in (1, 4):  # the never-written depthwise output; a residual of another shape
        t = _kernels.StepList([one(), one(), one(), one(), one(c=2, h=80, w=96)], 1)
        with pytest.raises(ValueError, match="the residual"):
            t.add_dwconv2d_spmm(isa, wd, b2, 3, 1, 1, 0.0, 6.0, kisa, kern, W._packed, 0, 1,
                                res, 2, b1, 0.0, 6.0, 8)
    s = _kernels.StepList([one(), _pieced(4, 80, 48, 2), one(h=80), _pieced(4, 80, 48, 2),
                           one(h=80)], 2, [0, 2, 0, 2, 0])
    with pytest.raises(ValueError, match="never written"):
        s.add_dwconv2d_spmm(isa, wd, b2, 3, 1, 1, 0.0, 6.0, kisa, kern, W._packed, 2, 1, -1, 4,
                            b1, 0.0, 6.0, 8)
    with pytest.raises(ValueError, match="row pieces of tensor"):  # the input whole
        s.add_dwconv2d_spmm(isa, wd, b2, 3, 1, 1, 0.0, 6.0, kisa, kern, W._packed, 2, 4, -1, 3,
                            b1, 0.0, 6.0, 8)
    assert len(s) == 0


def test_steps_share_one_work_buffer_without_reading_each_others_planes(isa, monkeypatch):
    """A fused 1x1 + depthwise step, a fused depthwise + 1x1 step and a K-split 1x1 in one list
    write their planes and partial sums into one shared buffer: after a run on infinities,
    each step gives the bytes it gives in a list of its own, on 1 and 2 threads."""
    monkeypatch.setattr(_kernels, "SPMM_PART_BYTES", 16)  # K-split parts on small inputs
    rng = np.random.default_rng(11)
    h, w = 16, 48
    W1, _, _, b1 = _dw_1x1_case(rng, 3, 6, 1, 3)  # the 1x1 3 -> 6 and its bias
    wd1 = rng.standard_normal((6, 9)).astype(np.float32)
    W2, wd2, b2, b3 = _dw_1x1_case(rng, 6, 4, 2, 5)
    W3 = fs.SparseMatrix.from_dense(rng.standard_normal((2, 4)).astype(np.float32), block_size=1)
    isa_id = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, h * w)
    band_rows = _kernels.dw_spmm_band_rows(0, 5, 1, h, w, h, w, 2, 2, 4)
    steps_of = [
        lambda s, a, b, c: s.add_spmm_dwconv2d(kisa, kern, W1._packed, a, b, c, b1, 0.0, 6.0,
                                               isa_id, wd1, None, 3, 1, 1, 1, -6.0, 6.0, 2),
        lambda s, a, b, c: _add_dw_1x1(s, True, W2, wd2, b2, b3, 5, band_rows, a, b, -1, c,
                                       ACTS[1], h * w),
        lambda s, a, b, c: s.add_spmm(kisa, kern, W3._packed, a, -1, c, None, -np.inf, np.inf,
                                      ksplit=True)]
    shapes = [(3, h, w), (6, h, w), (6, h, w), (6, h, w), (4, h, w), (4, h, w), (2, h, w)]
    x = rng.standard_normal((1,) + shapes[0]).astype(np.float32)

    def run(tensor_ids, steps_used, threads, x):
        tensors = [np.full((1,) + shapes[t], np.nan, np.float32) for t in tensor_ids]
        steps = _kernels.StepList(tensors, threads)
        for k in steps_used:  # step k reads tensor 2k and writes 2k + 2 (through 2k + 1)
            a = tensor_ids.index(2 * k)
            steps_of[k](steps, a, a + 1, a + 2 if k < 2 else a + 1)
        y = np.empty((1,) + shapes[tensor_ids[-1]], np.float32)
        steps.run(np.where(np.isnan(x), 0, np.inf).astype(np.float32), y)  # poison
        steps.run(x, y)
        return steps, tensors, y

    for threads in (1, 2):
        steps, tensors, y = run([0, 1, 2, 3, 4, 6], (0, 1, 2), threads, x)
        assert steps.kinds() == [5, 7, 6]
        _, _, y0 = run([0, 1, 2], (0,), threads, x)
        _, _, y1 = run([2, 3, 4], (1,), threads, np.ascontiguousarray(tensors[2]))
        _, _, y2 = run([4, 6], (2,), threads, np.ascontiguousarray(tensors[4]))
        assert y0.tobytes() == tensors[2].tobytes()
        assert y1.tobytes() == tensors[4].tobytes()
        assert y2.tobytes() == y.tobytes()


def test_row_groups_split_on_block_starts():
    W = fs.SparseMatrix.from_dense(np.ones((10, 3), np.float32), block_size=4)._packed
    assert W.row_groups(8).tolist() == [0, 2, 4]     # blocks: rows 0-3, 4-7, then 8 and 9
    assert W.row_groups(3).tolist() == [0, 1, 2, 3, 4]
    assert W.row_groups(100).tolist() == [0, 4]
    with pytest.raises(ValueError, match="rows must be >= 1"):
        W.row_groups(0)


@pytest.mark.parametrize("block", [None, 4])
def test_network_with_fusion_forced_matches_unfused(isa, v2_net, block, monkeypatch):
    sd, _ = v2_net
    x = np.random.default_rng(8).uniform(-1, 1, (2, 3, 45, 38)).astype(np.float32)
    plain = fs.MobileNetV2.from_dense(sd, block_size=block, num_threads=2)
    expect = plain(x)
    monkeypatch.setattr(fs.models, "FUSE_MIN_HW", 1)
    monkeypatch.setattr(fs.models, "FUSE_GROUP_BYTES", 4096)
    net = fs.MobileNetV2.from_dense(sd, block_size=block, num_threads=2)
    out = net(x)
    plan = net._plan(((2, 3, 45, 38), "NCHW"))
    assert len(plan[3]) == 16  # the expansion 1x1 of every block but the first (t = 1)
    assert out.tobytes() == expect.tobytes()
    assert _rel_err(out, reference.mobilenet_v2(sd, x)) < RTOL


@pytest.mark.parametrize("threads", [1, 2])
def test_network_fuses_the_first_depthwise_conv_with_its_1x1(isa, v2_net, threads, monkeypatch):
    """MobileNet v2's first block (depthwise 3x3 -> 1x1, no expansion) runs as one fused step
    where its planes are at least 48 wide, with the first conv in the step too where they are
    whole 16-float rows taller than a staged copy (here 68 x 64), in both layouts; on 2 threads
    the step's output is held whole. The bytes of the unfused network, the reference's values,
    the depthwise and conv outputs unplanned. (Its input in row pieces: the step tests.)"""
    sd, _ = v2_net
    x = np.random.default_rng(9).uniform(-1, 1, (1, 3, 136, 128)).astype(np.float32)
    key = ((1, 3, 136, 128), "NCHW")
    monkeypatch.setattr(fs.models, "FUSE_MIN_HW", 1)
    monkeypatch.setattr(fs.models, "DW_FUSE_BAND_BYTES", 1)  # bands of 1 row: never fused
    plain = fs.MobileNetV2.from_dense(sd, num_threads=threads)
    expect = plain(x)
    assert 1 not in plain._plan(key)[3]
    monkeypatch.undo()
    monkeypatch.setattr(fs.models, "FUSE_MIN_HW", 1)
    net = fs.MobileNetV2.from_dense(sd, num_threads=threads)
    out = net(x)
    shapes, _, buffer_of, fused, pieced, _ = net._plan(key, threads)
    assert {0, 1} <= fused and not {net.layers[0].dst, net.layers[1].dst} & set(buffer_of)
    assert net.layers[2].dst not in pieced
    _, steps, _ = net._workspace((key, threads, fs.isa()), net._plan(key, threads))
    assert steps.kinds()[0] == 8  # FS_STEP_CONV2D_DWCONV2D_SPMM
    assert out.tobytes() == expect.tobytes()
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    assert net(nhwc, layout="NHWC").tobytes() == expect.tobytes()
    assert _rel_err(out, reference.mobilenet_v2(sd, x)) < RTOL


def _padded(shape, plane, fill=np.nan):
    """An (N, C, H, W) view whose planes start `plane` floats apart, over a NaN buffer."""
    n, c, h, w = shape
    buf = np.full(n * c * plane, fill, np.float32)
    view = np.lib.stride_tricks.as_strided(buf, shape=shape,
                                           strides=(4 * c * plane, 4 * plane, 4 * w, 4))
    return buf, view


def test_steps_on_padded_planes_match_contiguous_and_leave_the_padding(isa):
    """Planes padded to whole vectors (the executor's layout): same results as contiguous
    tensors, and nothing written between the planes."""
    rng = np.random.default_rng(9)
    n, cin, cout, h, w = 2, 10, 12, 7, 7
    W = fs.SparseMatrix.from_dense(fs.prune.magnitude(
        rng.standard_normal((cout, cin)).astype(np.float32), 0.5), block_size=1)
    wd = rng.standard_normal((cout, 9)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    isa_id = _dispatch.isa_id(fs.isa())
    results = []
    for plane in (49, 64, 80):
        _, t1 = _padded((n, cout, h, w), plane)
        buf2, t2 = _padded((n, cout, h, w), plane)
        tensors = [np.empty((n, cin, h, w), np.float32), t1, t2, np.empty((n, cout), np.float32)]
        steps = _kernels.StepList(tensors, 2)
        kisa, k = _dispatch.spmm_kernel(fs.isa(), 1, h * w)  # one kernel for every layout
        steps.add_spmm(kisa, k, W._packed, 0, -1, 1, b, 0.0, 6.0)
        steps.add_dwconv2d(isa_id, 1, 2, wd, b, 3, 1, 1, 1, -np.inf, np.inf)
        steps.add_gavgpool(isa_id, 2, 3)
        x = rng.standard_normal((n, cin, h, w)).astype(np.float32) if not results else x
        y = np.empty((n, cout), np.float32)
        steps.run(x, y)
        pad = buf2.reshape(n * cout, plane)[:, h * w:]
        assert np.isnan(pad).all()  # padding between planes untouched
        results.append(y.copy())
    assert results[0].tobytes() == results[1].tobytes() == results[2].tobytes()
    ref = reference.global_avg_pool(reference.depthwise_conv2d(
        reference.sparse_conv1x1(x, W, bias=b, activation="relu6"), wd.reshape(cout, 1, 3, 3),
        bias=b, stride=1, padding=1))
    assert _rel_err(results[0], ref) < RTOL


def test_overlapping_planes_are_refused():
    rng = np.random.default_rng(10)
    W = fs.SparseMatrix.from_dense(rng.standard_normal((4, 3)).astype(np.float32), block_size=1)
    buf = np.zeros(64, np.float32)
    overlap = np.lib.stride_tricks.as_strided(buf, shape=(1, 4, 2, 5), strides=(16, 16, 20, 4))
    steps = _kernels.StepList([np.zeros((1, 3, 2, 5), np.float32), overlap,
                               np.zeros((1, 4), np.float32)], 1)
    kisa, k = _dispatch.spmm_kernel(fs.isa(), 1, 10)
    with pytest.raises(ValueError, match="without overlap"):
        steps.add_spmm(kisa, k, W._packed, 0, -1, 1, None, 0.0, 1.0)
    gaps = np.zeros((1, 3, 2, 6), np.float32)[:, :, :, :5]  # rows not back to back
    with pytest.raises(ValueError, match="tensor 1 must have contiguous planes"):
        _kernels.StepList([np.zeros((1, 3, 2, 5), np.float32), gaps,
                           np.zeros((1, 3), np.float32)], 1)


# ---- Row pieces (fs_steps.h): one image held as P bands of rows, one block per band ------

def _pieced(c, h, w, p, fill=np.nan):
    """An (p, C, H / p, W) row-pieces tensor of one (C, H, W) image, as the executor plans
    them, over a buffer filled with `fill`."""
    from fastsparse.models import _pieced_size, _pieced_view
    shape = (1, c, h, w)
    return _pieced_view(np.full(_pieced_size(shape, p) + 16, fill, np.float32), shape, p)


def _whole(a):
    """The (1, C, H, W) image of a row-pieces tensor (or a one-image tensor as it is)."""
    return np.concatenate(list(a), axis=1)[None] if a.shape[0] > 1 else a


def _pieces_chain(tensors, threads, pieces, params):
    """x -> 1x1 -> depthwise (k, stride, pad) -> 1x1 -> fused 1x1 + depthwise 3x3 -> 1x1 +
    residual: every step kind that runs on row pieces, over `tensors`."""
    W1, W2, W3, W4, wd, wd2, b, k, stride, pad, bands = params
    isa = _dispatch.isa_id(fs.isa())
    steps = _kernels.StepList(tensors, threads, pieces)
    for W, src, res, dst in ((W1, 0, -1, 1), (W2, 2, -1, 3)):
        kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 64)
        steps.add_spmm(kisa, kern, W._packed, src, res, dst, b[:W.shape[0]], -6.0, 6.0)
        if src == 0:
            steps.add_dwconv2d(isa, 1, 2, wd, b[:wd.shape[0]], k, stride, pad, pad, -6.0, 6.0)
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 64)
    steps.add_spmm_dwconv2d(kisa, kern, W3._packed, 3, 4, 5, b[:W3.shape[0]], 0.0, 6.0, isa,
                            wd2, b[:wd2.shape[0]], 3, 1, 1, 1, -6.0, 6.0, 3, bands)
    steps.add_spmm(kisa, kern, W4._packed, 5, 3, 6, b[:W4.shape[0]], -np.inf, np.inf)
    return steps


PIECES_CASES = [
    (2, 8, 16, 3, 1, 1),    # stride-1 pieces of 4 rows, the fused step's bands at 64 floats
    (2, 12, 12, 3, 1, 1),   # pieces of 72 floats: no band cut there, the fused output whole
    (2, 12, 8, 5, 1, 2),    # 5x5: two halo rows
    (3, 12, 16, 3, 1, 1),   # a middle piece with halos on both sides
    (2, 16, 12, 3, 2, 1),   # stride 2 on quarter planes (AVX-512: in registers), PyTorch padding
    (2, 16, 12, 3, 2, 0),   # ... TensorFlow's "same" (a halo row below, none above)
    (2, 24, 10, 5, 2, 1),
    (2, 64, 16, 3, 1, 1),   # pieces of 32 rows: the most the stride-1 path stages
    (2, 4, 32, 5, 1, 2),    # pieces of 2 rows: the fewest a 5x5 can take (2 halo rows)
    (3, 24, 56, 3, 1, 1),   # pieces 56 wide: the depthwise conv by blocks of rows, with halos
    (2, 12, 64, 5, 1, 2),   # ... 5x5
    (2, 70, 48, 3, 1, 1),   # pieces of 35 rows: taller than a staged copy, halos read in place
    (3, 102, 50, 5, 1, 2),  # ... 5x5 pieces of 34 rows, a middle one
]


@pytest.mark.parametrize("p,h,w,stride", [(2, 64, 50, 2), (3, 45, 30, 1), (2, 4, 9, 2),
                                          (4, 136, 136, 2)])
def test_conv2d_writes_row_pieces(isa, p, h, w, stride):
    """The first conv into a tensor held in row pieces: one band of rows per piece, the
    bytes of a whole output, the pieces' padding untouched."""
    rng = np.random.default_rng(h + w + p)
    cin, cout = 3, 11
    oh, ow = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    oh -= oh % p
    h = (oh - 1) * stride + 1  # an input whose output rows cut into p pieces
    wc = rng.standard_normal((cout, cin * 9)).astype(np.float32)
    bc = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    isa_id = _dispatch.isa_id(fs.isa())
    whole = np.empty((1, cout, oh, ow), np.float32)
    one = _kernels.StepList([x, whole, np.empty((1, 1), np.float32)], 1)
    one.add_conv2d(isa_id, 0, False, 1, wc, bc, stride, 1, 1, 0.0, 6.0)
    one.run(x, np.empty((1, 1), np.float32))
    rows, plane = oh // p, -(-(oh // p) * ow // 16) * 16
    for threads in (1, 2, 3):
        buf = np.full(p * cout * plane + 16, np.nan, np.float32)
        pieced = np.lib.stride_tricks.as_strided(
            buf, (p, cout, rows, ow), (4 * cout * plane, 4 * plane, 4 * ow, 4))
        steps = _kernels.StepList([x, pieced, np.empty((1, 1), np.float32)], threads, [0, p, 0])
        steps.add_conv2d(isa_id, 0, False, 1, wc, bc, stride, 1, 1, 0.0, 6.0)
        steps.run(x, np.empty((1, 1), np.float32))
        got = np.ascontiguousarray(pieced.transpose(1, 0, 2, 3)).reshape(1, cout, oh, ow)
        assert got.tobytes() == whole.tobytes(), threads
        pad = buf.reshape(-1)[p * cout * plane:]
        assert np.isnan(pad).all()
        if plane > rows * ow:
            gaps = buf[:p * cout * plane].reshape(p * cout, plane)[:, rows * ow:]
            assert np.isnan(gaps).all()



def _first_step_list(kind, threads, rng):
    """A one-step list on `threads` threads, its input, an output, the bytes of the result
    and the step's items on several threads: the first conv into 2 row pieces (28 bands of
    4 rows), or the conv + depthwise + 1x1 step (24 bands of 4 rows)."""
    isa_id = _dispatch.isa_id(fs.isa())
    cin, c = 3, 16
    wc = rng.standard_normal((c, cin * 9)).astype(np.float32)
    bc = rng.standard_normal(c).astype(np.float32)
    if kind == "conv":
        x = rng.standard_normal((1, cin, 224, 112)).astype(np.float32)
        pieced = _pieced(c, 112, 56, 2)
        steps = _kernels.StepList([x, pieced, np.empty((1, 1), np.float32)], threads, [0, 2, 0])
        steps.add_conv2d(isa_id, 0, False, 1, wc, bc, 2, 1, 1, 0.0, 6.0)
        return steps, x, np.empty((1, 1), np.float32), lambda y: _whole(pieced).tobytes(), 28
    W, wd, b2, b1 = _dw_1x1_case(rng, c, 24, 1, 3)
    x = rng.standard_normal((1, cin, 96, 64)).astype(np.float32)
    mid = np.full((1, c, 96, 64), np.nan, np.float32)
    tensors = [x, mid, mid.copy(), np.empty((1, 24, 96, 64), np.float32)]
    steps = _kernels.StepList(tensors, threads)
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 96 * 64)
    rows = _kernels.dw_spmm_band_rows(0, 3, 1, 96, 64, 96, 64, 1, 1, 4)
    assert rows == 4
    steps.add_conv2d_dwconv2d_spmm(isa_id, False, wc, bc, 1, 1, 1, 0.0, 6.0, isa_id, wd, b2, 3,
                                   1, 1, 0.0, 6.0, kisa, kern, W._packed, 0, 1, 2, -1, 3, b1,
                                   0.0, 6.0, rows)
    return steps, x, np.empty((1, 24, 96, 64), np.float32), lambda y: y.tobytes(), 24


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a worker that starts late needs 2 CPUs")
@pytest.mark.parametrize("kind", ["conv", "conv + depthwise + 1x1"])
def test_first_step_items_claimed_by_pairs_give_the_bytes_of_one_thread(isa, kind):
    """A list's first step on 2 threads: the threads claim its items through a counter,
    thread 0 from the front, thread 1 from the back (fs_step.claims), so a worker woken late
    leaves its first items to thread 0. Every split gives the bytes of one thread and runs
    every item once, after a sleep (the worker then starts late, by 25-40 us here: uneven
    splits) or back to back; thread 1 takes several items in a row (the fused step then
    keeps conv rows going up the image). How uneven the splits get depends on the machine
    (under qemu, where an item takes milliseconds, they stay even): not asserted."""
    rng = np.random.default_rng(7)
    one, x, y1, got, _ = _first_step_list(kind, 1, rng)
    one.run(x, y1)
    want = got(y1)
    steps, x2, y, got, total = _first_step_list(kind, 2, np.random.default_rng(7))
    assert np.array_equal(x2, x)
    splits = []
    for r in range(40):
        if r % 2:
            time.sleep(0.02)
        y[...] = np.nan
        ran = np.zeros((2, 1), np.int64)
        steps.run(x, y, 0, -1, None, None, ran)
        assert got(y) == want, (r, ran.ravel())
        assert ran.sum() == total
        splits.append(tuple(ran[:, 0]))
    assert any(b >= 2 for _, b in splits), splits


@pytest.mark.parametrize("p,h,w,k,stride,pad", PIECES_CASES)
def test_row_pieces_give_the_bytes_of_whole_images(isa, p, h, w, k, stride, pad):
    """Every step kind over tensors held in row pieces, in every mix of pieced and whole
    tensors the steps accept, on 1 to 3 threads: the same bytes as whole images on one
    thread (halo rows read from the neighbouring pieces, band cuts on the pieces); the
    pieces' padding and the scratch hold NaN and infinities from an earlier run."""
    rng = np.random.default_rng(h * 31 + w * 7 + k + stride + pad + p)
    cin, c1, c2, c3 = 5, 6, 4, 7
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    if stride == 2:
        oh, ow = h // 2, w // 2

    def sparse(r, c):
        d = rng.standard_normal((r, c)).astype(np.float32)
        d[rng.random((r, c)) < 0.4] = 0
        return fs.SparseMatrix.from_dense(d, block_size=1)

    params = (sparse(c1, cin), sparse(c2, c1), sparse(c3, c2), sparse(c2, c3),
              rng.standard_normal((c1, k * k)).astype(np.float32),
              rng.standard_normal((c3, 9)).astype(np.float32),
              rng.standard_normal(8).astype(np.float32), k, stride, pad)
    shapes = [(cin, h, w), (c1, h, w), (c1, oh, ow), (c2, oh, ow), (c3, oh, ow), (c3, oh, ow),
              (c2, oh, ow)]
    x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    poison = np.where(rng.random(x.shape) < 0.5, np.inf, -np.inf).astype(np.float32)

    def run(threads, pieced):
        tensors = [_pieced(*shapes[t], p) if t in pieced else np.full((1,) + shapes[t], np.nan,
                                                                      np.float32)
                   for t in range(7)]
        steps = _pieces_chain(tensors, threads, [p if t in pieced else 0 for t in range(7)],
                              params + (p if 5 in pieced else threads,))
        y = np.empty((1,) + shapes[6], np.float32)
        steps.run(poison, y)
        steps.run(x, y)
        return y.tobytes(), [_whole(tensors[t]) for t in (1, 2, 3, 5)]

    want, inner = run(1, set())
    # The fused step writes row pieces where its bands cut at them (16-float positions).
    fused_ok = _kernels.fused_writes_pieces(p, 3, 1, oh, ow, oh, ow, 1, 1)
    for pieced in ({1, 2}, {1, 2, 3, 5}, {2, 3}, {3, 5}, {1}):
        if 5 in pieced and not fused_ok:
            pieced = pieced - {5}
        for threads in (1, 2, 3):
            got, got_inner = run(threads, pieced)
            assert got == want, (pieced, threads)
            for a, b in zip(got_inner, inner):
                assert a.tobytes() == b.tobytes(), (pieced, threads)
    y = np.frombuffer(want, np.float32).reshape((1,) + shapes[6])
    W1, W2, W3, W4, wd, wd2, b = params[:7]
    r = reference.sparse_conv1x1(x, W1, bias=b[:c1], activation=("clamp", -6.0, 6.0))
    r = reference.depthwise_conv2d(r, wd.reshape(c1, 1, k, k), bias=b[:c1], stride=stride,
                                   padding=(pad, pad, k - stride - pad if stride == 2 else pad,
                                            k - stride - pad if stride == 2 else pad),
                                   activation=("clamp", -6.0, 6.0))
    r3 = reference.sparse_conv1x1(r, W2, bias=b[:c2], activation=("clamp", -6.0, 6.0))
    r = reference.sparse_conv1x1(r3, W3, bias=b[:c3], activation="relu6")
    r = reference.depthwise_conv2d(r, wd2.reshape(c3, 1, 3, 3), bias=b[:c3], stride=1,
                                   padding=1, activation=("clamp", -6.0, 6.0))
    r = reference.sparse_conv1x1(r, W4, bias=b[:c2], residual=r3)
    assert _rel_err(y, r) < RTOL


def test_row_pieces_cases_cover_fused_outputs_in_pieces_and_whole():
    oh = [h // 2 if s == 2 else h for _, h, _, _, s, _ in PIECES_CASES]
    ow = [w // 2 if s == 2 else w for _, _, w, _, s, _ in PIECES_CASES]
    got = {_kernels.fused_writes_pieces(c[0], 3, 1, a, b, a, b, 1, 1)
           for c, a, b in zip(PIECES_CASES, oh, ow)}
    assert got == {True, False}


def test_row_pieces_under_a_ksplit_step(monkeypatch):
    """A K-split 1x1 (two halves of the input channels, then a reduction) whose output or
    residual is in row pieces and whose input is not runs every piece."""
    monkeypatch.setattr(_kernels, "SPMM_PART_BYTES", 1024)  # parts for any ISA's tile
    rng = np.random.default_rng(9)
    cin, cout, h, w = 256, 8, 8, 16
    W = fs.SparseMatrix.from_dense(rng.standard_normal((cout, cin)).astype(np.float32),
                                   block_size=1)
    x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 64)
    eye = fs.SparseMatrix.from_dense(np.eye(cout, dtype=np.float32), block_size=1)
    outs = []
    for pieced in (False, True):
        mid = _pieced(cout, h, w, 2) if pieced else np.full((1, cout, h, w), np.nan, np.float32)
        s = _kernels.StepList([x, mid, np.empty((1, cout, h, w), np.float32)], 2,
                              [0, 2 if pieced else 0, 0])
        s.add_spmm(kisa, kern, W._packed, 0, -1, 1, None, -np.inf, np.inf, ksplit=True)
        s.add_spmm(kisa, kern, eye._packed, 1, -1, 2, None, -np.inf, np.inf)
        assert s.kinds()[0] == 6  # FS_STEP_SPMM_KSPLIT
        y = np.empty((1, cout, h, w), np.float32)
        s.run(x, y)
        outs.append(y.tobytes())
    assert outs[0] == outs[1]
    y = np.frombuffer(outs[1], np.float32).reshape(1, cout, h, w)
    assert _rel_err(y, reference.sparse_conv1x1(x, W)) < RTOL


def test_row_pieces_of_two_tensors_may_lie_between_each_other():
    """A network's plan for several threads puts piece p of every tensor in region p of its
    arena, so one tensor's pieces lie between another's: a step over two such tensors runs
    (the bytes of separate buffers), while pieces that do share floats are refused."""
    from fastsparse.models import _pieced_size, _pieced_view
    rng = np.random.default_rng(6)
    W = fs.SparseMatrix.from_dense(rng.standard_normal((4, 4)).astype(np.float32), block_size=1)
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 64)
    shape, x = (1, 4, 8, 8), rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    piece = _pieced_size(shape, 2) // 2
    arena = np.full(4 * piece, np.nan, np.float32)
    between = [_pieced_view(arena[i * piece:], shape, 2, 2 * piece) for i in (0, 1)]
    outs = []
    for a, b in (between, (_pieced(4, 8, 8, 2), _pieced(4, 8, 8, 2))):
        s = _kernels.StepList([x, a, b, np.empty(shape, np.float32)], 2, [0, 2, 2, 0])
        for src in (0, 1, 2):
            s.add_spmm(kisa, kern, W._packed, src, -1, src + 1, None, -np.inf, np.inf)
        y = np.empty(shape, np.float32)
        s.run(x, y)
        outs.append(y.tobytes())
    assert outs[0] == outs[1]
    shifted = _pieced_view(arena[2 * piece:], shape, 2, piece)  # its piece 0 = a's piece 1
    s = _kernels.StepList([x, between[0], shifted, np.empty(shape, np.float32)], 2, [0, 2, 2, 0])
    with pytest.raises(ValueError, match="must not overlap"):
        s.add_spmm(kisa, kern, W._packed, 1, -1, 2, None, -np.inf, np.inf)


def test_row_pieces_refused_where_a_step_cannot_run_them():
    rng = np.random.default_rng(5)
    W = fs.SparseMatrix.from_dense(rng.standard_normal((4, 4)).astype(np.float32), block_size=1)
    wd = rng.standard_normal((4, 9)).astype(np.float32)
    isa = _dispatch.isa_id(fs.isa())
    kisa, kern = _dispatch.spmm_kernel(fs.isa(), 1, 64)
    one = lambda h=8, w=8: np.empty((1, 4, h, w), np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="input and the output cannot be"):
        _kernels.StepList([_pieced(4, 8, 8, 2), one()], 2, [2, 0])
    with pytest.raises(ValueError, match=r"pieces\[1\] = 3"):
        _kernels.StepList([one(), _pieced(4, 8, 8, 2), one()], 2, [0, 3, 0])
    with pytest.raises(ValueError, match="pieces must have 3 entries"):
        _kernels.StepList([one(), _pieced(4, 8, 8, 2), one()], 2, [0, 2])
    with pytest.raises(ValueError, match="contiguous planes"):  # rows padded
        _kernels.StepList([one(), np.zeros((2, 4, 4, 12), np.float32)[..., :8], one()], 2,
                          [0, 2, 0])
    with pytest.raises(ValueError, match="must not share planes"):  # pieces interleaved
        a = np.zeros((4, 2, 4, 8), np.float32).transpose(1, 0, 2, 3)
        _kernels.StepList([one(), a, one()], 2, [0, 2, 0])
    s = _kernels.StepList([one(), _pieced(4, 9, 8, 3), _pieced(4, 8, 8, 2), one()], 2,
                          [0, 3, 2, 0])
    with pytest.raises(ValueError, match="different numbers of row pieces"):
        s.add_spmm(kisa, kern, W._packed, 1, -1, 2, None, 0.0, 6.0)
    with pytest.raises(ValueError, match="cannot be cut into 3 row pieces"):
        s.add_spmm(kisa, kern, W._packed, 0, -1, 1, None, 0.0, 6.0)
    with pytest.raises(ValueError, match="'same' padding"):  # no padding: not a flat path
        s.add_dwconv2d(isa, 0, 2, wd, None, 3, 1, 0, 0, 0.0, 6.0)
    wd5 = rng.standard_normal((4, 25)).astype(np.float32)
    s = _kernels.StepList([one(2, 32), _pieced(4, 2, 32, 2), one(2, 32)], 2, [0, 2, 0])
    with pytest.raises(ValueError, match="pieces of 2 to 32 rows"):  # 1 row, 2 halo rows
        s.add_dwconv2d(isa, 0, 1, wd5, None, 5, 1, 2, 2, 0.0, 6.0)
    s = _kernels.StepList([one(66, 8), _pieced(4, 66, 8, 2), one(66, 8)], 2, [0, 2, 0])
    with pytest.raises(ValueError, match="pieces of 1 to 32 rows"):  # 33 rows per piece
        s.add_dwconv2d(isa, 0, 1, wd, None, 3, 1, 1, 1, 0.0, 6.0)
    s = _kernels.StepList([one(), one(), _pieced(4, 8, 8, 2), one()], 2, [0, 0, 2, 0])
    with pytest.raises(ValueError, match="bands cut at them"):  # bands != pieces
        s.add_spmm_dwconv2d(kisa, kern, W._packed, 0, 1, 2, None, 0.0, 6.0, isa, wd, None, 3, 1,
                            1, 1, 0.0, 6.0, 4, 1)
    # Bands at 16-float positions miss the cut (row 36 of 10 floats).
    assert not _kernels.fused_writes_pieces(2, 3, 1, 72, 10, 72, 10, 1, 1)
    s = _kernels.StepList([one(72, 10), one(72, 10), _pieced(4, 72, 10, 2), one(72, 10)], 2,
                          [0, 0, 2, 0])
    with pytest.raises(ValueError, match="bands cut at them"):
        s.add_spmm_dwconv2d(kisa, kern, W._packed, 0, 1, 2, None, 0.0, 6.0, isa, wd, None, 3, 1,
                            1, 1, 0.0, 6.0, 4, 2)
    s = _kernels.StepList([one(), _pieced(4, 8, 8, 2), one(), one()], 2, [0, 2, 0, 0])
    with pytest.raises(ValueError, match="never written"):
        s.add_spmm_dwconv2d(kisa, kern, W._packed, 0, 1, 2, None, 0.0, 6.0, isa, wd, None, 3, 1,
                            1, 1, 0.0, 6.0, 4, 2)


@pytest.mark.parametrize("n,c", [(1, 7), (1, 1), (1, 32), (3, 5)])
def test_gavgpool_step_in_runs_of_channels(isa, n, c):
    """Fewer images than 2 per thread: each thread pools a run of channels. The same bytes on
    any thread count (1 thread and more than channels included), and the mean."""
    x = np.random.default_rng(c).standard_normal((n, c, 5, 6)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3, 8):
        steps = _kernels.StepList([np.empty_like(x), np.empty((n, c), np.float32)], threads)
        steps.add_gavgpool(_dispatch.isa_id(fs.isa()), 0, 1)
        y = np.full((n, c), np.nan, np.float32)
        steps.run(x, y)
        outs.append(y.tobytes())
    assert all(o == outs[0] for o in outs)
    y = np.frombuffer(outs[0], np.float32).reshape(n, c)
    assert _rel_err(y, reference.global_avg_pool(x)) < RTOL


def test_step_lists_guard_what_a_caller_of_the_private_api_could_break():
    """StepList is importable (fastsparse._kernels): what a caller could pass must not make the
    C code read or write out of bounds (found by review). Arrays run() would copy (a
    non-contiguous template), tensors whose rows do not abut (padded or broadcast), images
    that overlap, padding whose scratch size would wrap around, a bias the caller resizes
    after adding the step, two threads running one list."""
    import array
    import sys
    import threading
    W = fs.SparseMatrix.from_dense(np.eye(4, dtype=np.float32), block_size=1)
    isa = _dispatch.isa_id(fs.isa())
    kisa, k = _dispatch.spmm_kernel(fs.isa(), 1, 16)
    big = np.ones((1, 4, 64), np.float32)
    x, y = big[:, :, :16], np.zeros((1, 4, 16), np.float32)  # x: padded planes
    steps = _kernels.StepList([x, y], 1)
    steps.add_spmm(kisa, k, W._packed, 0, -1, 1, None, -np.inf, np.inf)
    with pytest.raises(ValueError, match="C-contiguous"):
        steps.run(x, y)
    base = np.zeros(64, np.float32)
    for bad in (np.zeros((1, 2, 4, 8), np.float32)[:, :, :, :4],  # rows 8 floats apart
                np.lib.stride_tricks.as_strided(base, (1, 2, 4, 4), (32, 16, 0, 4))):
        with pytest.raises(ValueError, match="tensor 1 must have contiguous planes"):
            _kernels.StepList([np.zeros((1, 2, 4, 4), np.float32), bad,
                               np.zeros((1, 2), np.float32)], 1)
    one = fs.SparseMatrix.from_dense(np.ones((1, 4), np.float32))
    same = np.lib.stride_tricks.as_strided(base, (3, 1, 16), (0, 64, 4), writeable=True)
    steps = _kernels.StepList([np.ones((3, 4, 16), np.float32), same,
                               np.zeros((3, 1, 16), np.float32)], 1)
    with pytest.raises(ValueError, match="without overlap"):  # 3 images, one plane
        steps.add_spmm(kisa, k, one._packed, 0, -1, 1, None, -np.inf, np.inf)
    xi = np.ones((1, 2, 16, 16), np.float32)
    with pytest.raises(ValueError, match="padding must be in"):
        _kernels.dwconv2d(isa, xi, np.ones((2, 25), np.float32), None,
                          np.zeros((1, 2, 16, 16), np.float32), 5, 1, 2, 2**62 - 48,
                          -np.inf, np.inf, 1)
    xc = np.ones((1, 4, 16), np.float32)
    bias = array.array("f", [1.0, 2.0, 3.0, 4.0])
    steps = _kernels.StepList([xc, y], 1)
    steps.add_spmm(kisa, k, W._packed, 0, -1, 1, bias, -np.inf, np.inf)
    bias.extend([9.0] * 100000)  # the storage moves; the step kept its own copy
    junk = [bytearray(b"\xff" * 64) for _ in range(1000)]
    steps.run(xc, y)
    del junk
    np.testing.assert_array_equal(y[0, :, 0], [2.0, 3.0, 4.0, 5.0])
    # Two threads run one list: one of them is refused, none crashes.
    wide = fs.SparseMatrix.from_dense(np.ones((16, 256), np.float32) * 0.01)
    kisa, k = _dispatch.spmm_kernel(fs.isa(), wide.block_size, 512)
    xw = np.ones((1, 256, 512), np.float32)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            sl = _kernels.StepList([xw, np.empty((1, 16, 512), np.float32)], 1)
            for _ in range(3):
                sl.add_spmm(kisa, k, wide._packed, 0, -1, 1, None, -np.inf, np.inf, True)
            outcome = []
            start = threading.Barrier(2)

            def go():
                yw = np.empty((1, 16, 512), np.float32)
                start.wait()
                try:
                    sl.run(xw, yw)
                    outcome.append(float(yw[0, 0, 0]))
                except RuntimeError as exc:
                    outcome.append(str(exc))
            ts = [threading.Thread(target=go) for _ in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert all(o == "StepList.run is not reentrant" or abs(o - 2.56) < 1e-4
                       for o in outcome), outcome
    finally:
        sys.setswitchinterval(old)
