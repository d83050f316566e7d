"""MobileNet v2/v1 from dense weights: vs the NumPy reference network (unfolded BatchNorm), vs
PyTorch, save/load, bad sources, summary, threads."""
import os
import threading

import numpy as np
import pytest

import fastsparse as fs
from fastsparse.models import random_mobilenet_v1_weights, random_mobilenet_v2_weights

# Logits are compared relative to their largest magnitude: float32 rounding through ~50
# layers (each error ~ K * eps32 of its inputs' scale) stays near 1e-5 of it in practice;
# 1e-4 leaves a margin and still catches a wrong fold, stride, pad or residual (>= 1e-2).
RTOL = 1e-4


def _images(rng, n, h, w, layout="NCHW"):
    x = rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32)
    return x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _rel_err(out, ref):
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def _pruned_v2(width, sparsity, block, classes=10, seed=0):
    sd = random_mobilenet_v2_weights(width, classes, seed)
    if sparsity:
        for k, v in sd.items():  # prune the source, so the reference sees the same zeros
            if (v.ndim == 4 and v.shape[2:] == (1, 1)) or k == "classifier.1.weight":
                sd[k] = fs.prune.magnitude(v, sparsity, block_size=block or 1)
    return sd


@pytest.mark.parametrize("width,sparsity,block,n,hw,layout", [
    (1.0, 0.9, None, 1, (64, 64), "NCHW"),
    (0.35, 0.0, None, 3, (97, 131), "NHWC"),
    (0.5, 0.5, 2, 1, (33, 40), "NCHW"),
    (1.4, 0.9, 4, 3, (32, 32), "NHWC"),
    (1.0, 0.9, 1, 1, (224, 224), "NCHW"),
])
def test_mobilenet_v2_matches_reference(isa, width, sparsity, block, n, hw, layout):
    sd = _pruned_v2(width, sparsity, block)
    net = fs.MobileNetV2.from_dense(sd, block_size=block)
    rng = np.random.default_rng(1)
    x = _images(rng, n, *hw, layout)
    out = net(x, layout=layout)
    x_nchw = x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    ref = fs.reference.mobilenet_v2(sd, x_nchw)
    assert out.shape == (n, 10) and out.dtype == np.float32
    assert _rel_err(out, ref) < RTOL, (width, sparsity, block)
    # Same input, same buffers reused: bit-identical.
    assert net(x, layout=layout).tobytes() == out.tobytes()


@pytest.mark.parametrize("width,sparsity,block,n,hw", [
    (1.0, 0.9, None, 1, (64, 64)), (0.25, 0.0, None, 2, (97, 131)), (0.75, 0.5, 4, 1, (40, 33)),
])
def test_mobilenet_v1_matches_reference(isa, width, sparsity, block, n, hw):
    wt = random_mobilenet_v1_weights(width, 10, seed=2)
    if sparsity:
        for k, v in wt.items():
            if k.startswith("conv_pw_") and k.endswith("/kernel") or k == "conv_preds/kernel":
                # prune along output channels: HWIO -> (O, I) -> back
                w2 = fs.prune.magnitude(v[0, 0].T, sparsity, block_size=block or 1)
                wt[k] = np.ascontiguousarray(w2.T)[None, None]
    net = fs.MobileNetV1.from_dense(wt, block_size=block)
    x = _images(np.random.default_rng(3), n, *hw)
    assert _rel_err(net(x), fs.reference.mobilenet_v1(wt, x)) < RTOL


def test_v1_accepts_tf_keras_2_names():
    wt = random_mobilenet_v1_weights(0.25, 5, seed=4)
    renamed = {(k.replace("conv_dw_3/kernel", "conv_dw_3/depthwise_kernel") + ":0"): v
               for k, v in wt.items()}
    x = _images(np.random.default_rng(0), 1, 32, 32)
    a = fs.MobileNetV1.from_dense(wt)(x)
    b = fs.MobileNetV1.from_dense(renamed)(x)
    assert a.tobytes() == b.tobytes()


def test_sparsity_argument_prunes_and_summary_reports(isa):
    sd = random_mobilenet_v2_weights(1.0, 1000, seed=5)
    net = fs.MobileNetV2.from_dense(sd, sparsity=0.9)
    text = net.summary()
    assert "sparse" in text and "total" in text
    assert "35/35 1x1+linear layers sparse" in text  # 34 1x1 convs + the classifier
    dense = fs.MobileNetV2.from_dense(sd)  # random weights have no zeros: dense fallback
    assert "dense:" in dense.summary() and "0/35" in dense.summary()


def test_dense_fallback_matches_reference():
    sd = _pruned_v2(0.5, 0.0, None)
    net = fs.MobileNetV2.from_dense(sd)
    x = _images(np.random.default_rng(6), 2, 48, 48)
    assert _rel_err(net(x), fs.reference.mobilenet_v2(sd, x)) < RTOL


def test_dense_layers_run_in_blocks_the_same_on_every_thread_count():
    """Above the sparse break-even a 1x1 runs its whole weight in 4x1 blocks in the spmm
    kernels (never sgemm inside a network): networks mixing both paths match the reference
    and give the same bytes on 1 and 2 threads, the classifier of a batch included."""
    from fastsparse.models import _pointwise
    rng = np.random.default_rng(11)
    small = _pointwise(rng.standard_normal((96, 16)).astype(np.float32), None, (0.0, 6.0),
                       None, None)
    big = _pointwise(rng.standard_normal((512, 512)).astype(np.float32), None, (0.0, 6.0),
                     None, None)
    assert not (small.sparse or big.sparse)
    assert small.matrix().block_size == 4 and small.matrix().nnz == 96 * 16
    assert big.matrix().block_size == 4 and big.matrix().stored == 512 * 512
    assert "4x1 blocks" in big.describe((1, 512, 14, 14))[3]
    for sparsity in (0.0, 0.7):
        sd = _pruned_v2(1.0, sparsity, None)
        for n in (1, 3):  # batch 3: image after image on 1 thread, the batch on 2
            x = _images(np.random.default_rng(12), n, 64, 64)
            outs = [fs.MobileNetV2.from_dense(sd, num_threads=t)(x) for t in (1, 2)]
            assert outs[0].tobytes() == outs[1].tobytes(), (sparsity, n)
            assert _rel_err(outs[1], fs.reference.mobilenet_v2(sd, x)) < RTOL


def test_network_sweeps_unfused_block_1x1s_that_stream_more_than_l2(isa, monkeypatch):
    """In 4x1 blocks, a 1x1 step of its own whose input and output exceed L2 runs its output
    in groups of rows (_dispatch.spmm_sweep_rows; summary() says so); fused and K-split 1x1s
    never do.
    The logits are the bytes of the same network without sweeps, and match the reference."""
    from fastsparse import _dispatch
    sd = _pruned_v2(1.0, 0.9, 4)
    x = _images(np.random.default_rng(3), 1, 112, 112)
    monkeypatch.setattr(_dispatch, "_l2", 64 * 1024)
    net = fs.MobileNetV2.from_dense(sd, block_size=4, num_threads=1)
    lines = net.summary(input_size=(112, 112)).splitlines()
    swept = [l for l in lines if "in groups of 8 rows" in l]
    assert swept and not any("fused with" in l for l in swept)
    shapes = net._shapes(x.shape)  # a K-split step never sweeps: it is not labelled so
    ksplit = [layer for layer in net.layers if type(layer) is fs.models._Pointwise
              and layer._ksplit(shapes[layer.src])]
    assert ksplit and all(layer._kernel(fs.isa(), shapes[layer.src])[3] == 0
                          for layer in ksplit)
    out = net(x)
    assert _rel_err(out, fs.reference.mobilenet_v2(sd, x)) < RTOL
    net.num_threads = 2  # row pieces, each swept
    assert net(x).tobytes() == out.tobytes()
    monkeypatch.setattr(_dispatch, "_l2", 1 << 40)
    tiles = fs.MobileNetV2.from_dense(sd, block_size=4, num_threads=1)
    assert not any("in groups of" in l for l in tiles.summary(input_size=(112, 112)).splitlines())
    assert tiles(x).tobytes() == out.tobytes()


def test_a_batch_gives_each_image_its_batch_1_bytes():
    """An image's logits are the same bytes alone or in a batch, on 1 thread (image after
    image) and on 2 and 3 (T images side by side, the n % T left after them on all threads):
    every decision and kernel call per image is the same, the classifier's one-position
    variant included, and concurrent images never share a buffer."""
    sd = _pruned_v2(0.5, 0.9, None)
    nets = {t: fs.MobileNetV2.from_dense(sd, num_threads=t) for t in (1, 2, 3)}
    x = _images(np.random.default_rng(21), 5, 96, 80)
    alone = np.concatenate([nets[1](x[i:i + 1]) for i in range(5)])
    for n in (1, 2, 3, 4, 5):
        for t, net in nets.items():
            assert net(x[:n]).tobytes() == alone[:n].tobytes(), (n, t)
    for n in (2, 3):  # per-layer times add up over the images
        per, total = nets[2].profile(x[:n], repeat=2)
        assert len(per) == len(nets[2].layers) and all(t > 0 for t in per)
        assert sum(per) <= total * 1.5


def test_planned_activations_start_on_cache_lines():
    """Every planned 4-D activation and each of its padded channel planes starts on a 64-byte
    line (NumPy itself only aligns to 16 bytes): the kernel choice assumes it, and the 16-wide
    loads of misaligned planes split lines (MobileNet v2 at 90 %: 3.4 -> 3.0 ms)."""
    from fastsparse import _dispatch
    net = fs.MobileNetV2.from_dense(_pruned_v2(0.5, 0.9, None), num_threads=1)
    key = ((1, 3, 64, 64), "NCHW")
    plan = net._plan(key)
    for _ in range(3):  # several workspaces: fresh allocations each
        views = net._workspace((key, 1, _dispatch.isa()), plan)[0]
        planned = [v for v in views[1:-1] if v is not None and v.ndim == 4]
        assert len(planned) > 10
        for v in planned:
            assert v.ctypes.data % 64 == 0 and v.strides[1] % 64 == 0, v.shape


def test_plans_place_tensors_alive_together_apart():
    """Tensors alive at the same time never share a float, on any thread count; on several
    threads piece p of every tensor held in row pieces lies in region p of the arena, so each
    thread writes only its own region's lines of them; and the arena stays small: the offsets
    pack tighter than one buffer per tensor, and the regions cost a few percent on 2 threads
    (at 224x224: v2 2.30 MiB on 1 thread, 2.49 on 2, where buffers by size took 6.98)."""
    net = fs.MobileNetV2.from_dense(_pruned_v2(0.5, 0.9, None), num_threads=2)
    for key in (((1, 3, 96, 80), "NCHW"), ((1, 3, 224, 224), "NCHW")):
        arenas = {}
        for threads in (1, 2, 3):
            shapes, arena, spans, fused, pieced, stride = net._plan(key, threads)
            arenas[threads] = arena
            alive = {}  # tensor -> (first layer writing it, last layer reading it)
            for i, layer in enumerate(net.layers):
                alive.setdefault(layer.dst, [i, i])
                for t in (layer.src, layer.res):
                    if t is not None and t in alive:
                        alive[t][1] = max(alive[t][1], i + (1 if i in fused else 0))
            floats = {}  # tensor -> its [start, end) ranges: one per piece, or the whole span
            for t, (a, n) in spans.items():
                assert a % 16 == 0 and a + n <= arena
                if t in pieced:
                    p = pieced[t]
                    assert p == threads and stride % 16 == 0
                    piece = fs.models._pieced_size(shapes[t], p) // p
                    assert a + piece <= stride and n == (p - 1) * stride + piece
                else:
                    assert n >= fs.models._padded_size(shapes[t])
                floats[t] = _planned_floats(shapes, spans, pieced, stride, t)
            for a in floats:
                for b in floats:
                    if a < b and _overlap(floats[a], floats[b]):
                        assert alive[a][1] < alive[b][0] or alive[b][1] < alive[a][0], (a, b)
            if threads < 3:  # (on 3, whether the rows divide by 3 decides)
                assert bool(pieced) == (threads == 2), (key, threads)
        slots = fs.models._arena_floats(net._plan_buffers(*_plan_inputs(net, key)[1:]))
        assert arenas[1] < slots if key[0][2] == 224 else arenas[1] <= slots
        assert arenas[2] <= 1.1 * arenas[1]


def test_plans_keep_lines_another_core_read_from_the_next_outputs(monkeypatch):
    """On several threads, a 1x1 split by output channels reads its whole input on every
    thread, and a depthwise conv over row pieces reads halo rows from its neighbours' pieces:
    those lines then sit in both cores' caches, and a step writing over them must first take
    each line back (MobileNet v1's 14x14 depthwise convs 32 -> 18.6 us, v2's 28x28 1x1s
    17 -> 9 us on 2 threads). The plan keeps the next step's output (the next two, after a
    depthwise conv) off them where that costs no arena: the first of Network._shared_reads'
    candidates that fits the arena of a plan holding nothing back is taken, and no tensor
    born while one is held overlaps it. The bytes are the same on any plan."""
    wt1 = random_mobilenet_v1_weights(0.5, 10, seed=3)
    nets = {"v1": fs.MobileNetV1.from_dense(wt1, sparsity=0.9, num_threads=2),
            "v2": fs.MobileNetV2.from_dense(_pruned_v2(1.0, 0.9, None), num_threads=2)}
    key = ((1, 3, 224, 224), "NCHW")
    taken = {}
    for name, net in nets.items():
        for threads in (2, 3):
            shapes, arena, spans, fused, pieced, stride = net._plan(key, threads)
            held = net._held[(key, threads)]
            assert held in list(net._shared_reads(shapes, fused, pieced)) + [{}]
            taken[(name, threads)] = held
            with monkeypatch.context() as m:  # the plan holding nothing back
                m.setattr(fs.models.Network, "_shared_reads", lambda *a: iter(()))
                net._plans.pop((key, threads))
                free = net._plan(key, threads)[1]
                net._plans.pop((key, threads))
            assert arena <= free, (name, threads)
            net._plan(key, threads)

            ends = [last for _, last in net._step_spans(fused)]  # each step's output's writer
            for t in held:
                k = next(k for k, i in enumerate(ends) if net.layers[i].src == t)
                after = 2 if type(net.layers[ends[k]]) is fs.models._Depthwise else 1
                for j in ends[k + 1:k + 1 + after]:
                    u = net.layers[j].dst
                    assert u in spans and not _overlap(
                        *(_planned_floats(shapes, spans, pieced, stride, v) for v in (t, u))), \
                        (name, threads, t, u)
    # Where it was measured: v1's 14x14 1x1 inputs, and v2's 28x28 row-piece depthwise inputs.
    v1_shapes, v2_shapes = nets["v1"]._shapes(key[0]), nets["v2"]._shapes(key[0])
    assert sum(v1_shapes[t][2] == 14 for t in taken[("v1", 2)]) >= 5
    assert sum(v2_shapes[t][2] == 28 and any(type(layer) is fs.models._Depthwise
                                              and layer.src == t for layer in nets["v2"].layers)
               for t in taken[("v2", 2)]) == 2
    # On one thread nothing is held: v1's 14x14 ping-pong, the smallest arena.
    shapes, _, spans, _, _, _ = nets["v1"]._plan(key, 1)
    layers = nets["v1"].layers
    assert any(type(a) is fs.models._Pointwise and shapes[a.src][2] == 14
               and type(b) is fs.models._Depthwise and spans[a.src][0] == spans[b.dst][0]
               for a, b in zip(layers, layers[1:]))
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    one = fs.MobileNetV1.from_dense(wt1, sparsity=0.9, num_threads=1)
    assert nets["v1"](x).tobytes() == one(x).tobytes()


def _planned_floats(shapes, spans, pieced, stride, t):
    """The [start, end) ranges of arena floats tensor t takes in a plan: one per row piece,
    `stride` apart, or its whole span."""
    a, n = spans[t]
    if t not in pieced:
        return [(a, a + n)]
    piece = fs.models._pieced_size(shapes[t], pieced[t]) // pieced[t]
    return [(a + q * stride, a + q * stride + piece) for q in range(pieced[t])]


def _overlap(ranges_a, ranges_b):
    return any(a0 < b1 and b0 < a1 for a0, a1 in ranges_a for b0, b1 in ranges_b)


def _plan_inputs(net, key):
    """The (shapes, born, size, life) a one-thread plan of `key` places."""
    shapes, _, spans, fused, _, _ = net._plan(key)
    born, life = {}, {}
    for i, layer in enumerate(net.layers[:-1]):
        if i not in fused:
            born[layer.dst] = i
    for i, layer in enumerate(net.layers):
        for t in (layer.src, layer.res):
            if t in born:
                life[t] = (born[t], max(life.get(t, (0, born[t]))[1], i + (1 if i in fused else 0)))
    for t in born:
        life.setdefault(t, (born[t], born[t]))
    size = {t: -(-fs.models._padded_size(shapes[t]) // 16) * 16 for t in born}
    return shapes, born, size, life


def test_fused_pairs_give_their_1x1_output_no_buffer():
    """A fused pair (1x1 + depthwise, or the first block's depthwise + 1x1, which the first
    conv joins) keeps its first layers' outputs in per-thread work planes: the
    plan gives those tensors no buffer (MobileNet v2 at 224x224: 7.9 -> 3.8 MB of
    activations), and the one array that stands for all such tensors is never written by a
    call."""
    from fastsparse import _dispatch
    sd = _pruned_v2(0.5, 0.9, None)
    net = fs.MobileNetV2.from_dense(sd, num_threads=1)
    key = ((1, 3, 224, 224), "NCHW")
    plan = net._plan(key)
    shapes, slots, buffer_of, fused, _, _ = plan
    mids = [net.layers[i].dst for i in fused]
    assert len(mids) == 5 and not set(mids) & set(buffer_of)
    assert type(net.layers[min(fused)]) is fs.models._Conv
    views, steps, _ = net._workspace((key, 1, _dispatch.isa()), plan)
    for m in mids:
        views[m][...] = 7.0
    x = _images(np.random.default_rng(0), 1, 224, 224)
    logits = np.empty((1, net.num_classes), np.float32)
    steps.run(x, logits, 0, -1, None)
    assert _rel_err(logits, fs.reference.mobilenet_v2(sd, x)) < RTOL
    for m in mids:
        assert np.all(views[m] == 7.0), m


def test_hugepage_arrays_are_aligned_writable_and_separate():
    """The executor's activation arena: any size, 64-byte aligned, writable, and two arenas
    never share memory (small ones fall back to ordinary line-aligned arrays)."""
    from fastsparse._validate import hugepage_empty
    arrays = [hugepage_empty(n) for n in (1, 17, 300_000, 1 << 20, 3_000_001)]
    for i, a in enumerate(arrays):
        assert a.dtype == np.float32 and a.ndim == 1 and a.ctypes.data % 64 == 0
        a[...] = i
    for i, a in enumerate(arrays):
        assert np.all(a == i) and a.shape[0] == (1, 17, 300_000, 1 << 20, 3_000_001)[i]
    if hasattr(os, "fork"):  # a forked child's writes must not reach the parent's arena
        big = arrays[-1]
        pid = os.fork()
        if pid == 0:
            big[...] = -1.0
            os._exit(0)
        os.waitpid(pid, 0)
        assert np.all(big == len(arrays) - 1)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    for net, n in [(fs.MobileNetV2.from_dense(_pruned_v2(0.5, 0.9, None)), 2),
                   (fs.MobileNetV2.from_dense(_pruned_v2(0.35, 0.0, None)), 1),
                   (fs.MobileNetV1.from_dense(random_mobilenet_v1_weights(0.25, 7), sparsity=0.8,
                                              block_size=4), 1)]:
        path = tmp_path / "m.fsnet"
        net.save(path)
        loaded = fs.load(path)
        assert type(loaded) is type(net)
        x = _images(np.random.default_rng(7), n, 45, 37)
        assert loaded(x).tobytes() == net(x).tobytes()
        assert loaded.summary() == net.summary()


def test_concurrent_calls_match_serial():
    net = fs.MobileNetV2.from_dense(_pruned_v2(0.35, 0.9, None))
    rng = np.random.default_rng(8)
    xs = [_images(rng, 1, 40, 40) for _ in range(4)]
    expected = [net(x).tobytes() for x in xs]
    errors = []

    def work(i):
        for _ in range(10):
            if net(xs[i]).tobytes() != expected[i]:
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("mutate,words", [
    (lambda sd: sd.pop("features.3.conv.1.0.weight"), "features.3.conv.1.0.weight"),
    (lambda sd: sd.__setitem__("features.5.conv.2.weight", np.ones((32, 10, 1, 1), np.float32)),
     "features.5.conv.2.weight"),
    (lambda sd: sd.pop("classifier.1.bias"), "classifier.1.bias"),
    (lambda sd: sd.__setitem__("features.0.1.running_var", np.ones(5, np.float32)),
     "features.0.1.running_var"),
    (lambda sd: sd.__setitem__("features.7.conv.0.0.weight",
                               np.full_like(sd["features.7.conv.0.0.weight"], np.nan)),
     "features.7.conv.0.0.weight"),
])
def test_bad_v2_sources_name_the_key(mutate, words):
    sd = random_mobilenet_v2_weights(0.35, 10)
    mutate(sd)
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        fs.MobileNetV2.from_dense(sd)


def test_unknown_architecture_and_bad_arguments():
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v2"):
        fs.MobileNetV2.from_dense({"conv.weight": np.ones((3, 3))})
    with pytest.raises(ValueError, match="not a Keras MobileNet"):
        fs.MobileNetV1.from_dense(random_mobilenet_v2_weights(0.35, 10))
    with pytest.raises(TypeError, match="source"):
        fs.MobileNetV2.from_dense(42)
    sd = random_mobilenet_v2_weights(0.35, 10)
    with pytest.raises(ValueError, match="sparsity"):
        fs.MobileNetV2.from_dense(sd, sparsity=1.5)
    with pytest.raises(ValueError, match="block_size"):
        fs.MobileNetV2.from_dense(sd, block_size=3)
    net = fs.MobileNetV2.from_dense(sd)
    with pytest.raises(TypeError, match="images"):
        net(np.ones((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="3 channels"):
        net(np.ones((1, 4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="layout"):
        net(np.ones((1, 3, 32, 32), np.float32), layout="CHW")
    with pytest.raises(ValueError, match="too small"):
        fs.MobileNetV1.from_dense(random_mobilenet_v1_weights(0.25, 5))(np.ones((1, 3, 1, 1), np.float32))


def test_smallest_images_run(isa):
    sd = random_mobilenet_v2_weights(0.35, 10)
    net = fs.MobileNetV2.from_dense(sd)
    for h, w in [(1, 1), (2, 3), (5, 1)]:
        x = _images(np.random.default_rng(h * 7 + w), 2, h, w)
        assert _rel_err(net(x), fs.reference.mobilenet_v2(sd, x)) < RTOL


# -- PyTorch as an independent oracle --------------------------------------------------------

@pytest.mark.parametrize("width,sparsity", [(1.0, 0.9), (0.5, 0.0), (1.4, 0.7)])
def test_mobilenet_v2_matches_pytorch(width, sparsity):
    torch = pytest.importorskip("torch")
    from fastsparse._torch_models import mobilenet_v2_module
    sd = _pruned_v2(width, sparsity, None, classes=100, seed=9)
    model = mobilenet_v2_module(width, 100, sd)
    x = _images(np.random.default_rng(10), 2, 96, 80)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    net = fs.MobileNetV2.from_dense(model)  # the module itself: eps read from its BN layers
    got = net(x)
    err = _rel_err(got, expected)
    print(f"max relative error vs PyTorch (width {width}, sparsity {sparsity}): {err:.2e}")
    assert err < RTOL


def test_pytorch_module_eps_pruning_dtype_and_mode():
    """A module's own BatchNorm eps (not the state-dict default), 1x1s pruned with
    torch.nn.utils.prune (weight_orig * weight_mask, zeros kept as the sparse pattern), a
    bfloat16 module (no NumPy dtype), and a module in training mode (folded as in eval mode,
    with a warning): each matches the module in eval mode."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune
    from fastsparse._torch_models import mobilenet_v2_module
    sd = _pruned_v2(0.5, 0.0, None, classes=10, seed=4)
    x = _images(np.random.default_rng(11), 1, 64, 64)
    model = mobilenet_v2_module(0.5, 10, sd)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 0.1  # far from 1e-5: reading the default would be off by several %
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1):
            prune.l1_unstructured(m, "weight", amount=0.85)
    assert any(k.endswith("weight_orig") for k in model.state_dict())
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    net = fs.MobileNetV2.from_dense(model)
    assert _rel_err(net(x), expected) < RTOL
    pw = [l for l in net.layers if type(l).__name__ == "_Pointwise"]
    assert all(l.sparse and l.density() < 0.2 for l in pw[1:])  # the masks' zeros, kept
    with pytest.warns(UserWarning, match="training mode"):
        fs.MobileNetV2.from_dense(model.train())
    model.eval()
    with torch.no_grad():
        half = model.to(torch.bfloat16)
        expected = half(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    got = fs.MobileNetV2.from_dense(half)(x)  # bfloat16 weights, float32 arithmetic
    assert _rel_err(got, expected) < 0.1


def test_from_dense_refuses_what_would_not_run_and_names_the_key():
    """BatchNorm that folds into NaN or inf (running variance + eps <= 0, or an overflow in
    float32) named by its prefix; the last 1x1's shape; a missing BatchNorm key named as
    missing; a non-real weight named. Keys the network does not use are not read."""
    def v2(edit, **kw):
        sd = random_mobilenet_v2_weights(width=0.35, num_classes=10)
        edit(sd)
        return fs.MobileNetV2.from_dense(sd, **kw)

    def v1(edit, **kw):
        wt = random_mobilenet_v1_weights(width=0.25, num_classes=10)
        edit(wt)
        return fs.MobileNetV1.from_dense(wt, **kw)

    def put(key, value):
        return lambda d: d.__setitem__(key, value(d[key]) if callable(value) else value)

    cases = [
        (lambda: v2(put("features.0.1.running_var", lambda a: a * 0 - 1)),
         ValueError, "BatchNorm 'features.0.1': running variance + eps must be > 0"),
        (lambda: v2(put("features.5.conv.1.1.running_var", lambda a: a * 0), bn_eps=0.0),
         ValueError, "BatchNorm 'features.5.conv.1.1'"),
        (lambda: v2(lambda d: (put("features.0.1.weight", lambda a: a * 0 + 3e38)(d),
                               put("features.0.1.running_var", lambda a: a * 0 + 1e-10)(d)),
                    bn_eps=0.0),
         ValueError, "BatchNorm 'features.0.1' folded into the convolution before it gives"),
        (lambda: v1(put("conv_pw_3_bn/moving_variance", lambda a: a * 0), bn_eps=0.0),
         ValueError, "BatchNorm 'conv_pw_3_bn'"),
        (lambda: v2(put("features.18.0.weight", lambda a: np.zeros(a.shape[:2] + (3, 3)))),
         ValueError, "weight 'features.18.0.weight' must have shape (C, 112, 1, 1)"),
        (lambda: v2(lambda d: d.pop("features.2.conv.3.weight")),
         ValueError, "missing weight 'features.2.conv.3.weight'"),
        (lambda: v2(put("features.3.conv.1.0.weight", lambda a: a.astype(complex))),
         TypeError, "features.3.conv.1.0.weight must hold real numbers"),
        (lambda: v1(put("conv_dw_2/kernel", lambda a: a > 0)),
         TypeError, "conv_dw_2/kernel must hold real numbers"),
    ]
    for call, exc, words in cases:
        with pytest.raises(exc) as info:
            call()
        assert words in str(info.value), (words, info.value)
    for build in (v2, v1):  # unused keys, whatever they hold, are not read
        build(put("optimizer/name", "adam"))
        build(put("extra", [[1.0, 2.0], [3.0]]))
    v2(put("classifier.1.bias", lambda a: tuple(float(v) for v in a)))  # a tuple is an array


@pytest.mark.parametrize("width,sparsity,hw", [(1.0, 0.9, (64, 64)), (0.5, 0.0, (97, 75))])
def test_mobilenet_v1_matches_pytorch(width, sparsity, hw):
    """v1 against a torch module computing Keras' MobileNet from the same weights (its own
    bottom/right padding at stride 2, BatchNorm unfolded): an oracle independent of the
    NumPy reference."""
    torch = pytest.importorskip("torch")
    from fastsparse._torch_models import mobilenet_v1_module
    from fastsparse.bench_e2e import pruned_weights
    wt = pruned_weights("mobilenet_v1", sparsity, 1, width, 10, seed=5)
    x = _images(np.random.default_rng(12), 2, *hw)
    with torch.no_grad():
        expected = mobilenet_v1_module(wt)(torch.from_numpy(x)).numpy()
    assert _rel_err(fs.MobileNetV1.from_dense(wt)(x), expected) < RTOL


@pytest.mark.parametrize("arch", ["v2", "v1"])
def test_row_pieces_on_several_threads_keep_the_bytes(arch):
    """On 2 and 3 threads at batch 1 the 56x56 and 28x28 tensors of a 112x112 image are held
    in row pieces (one block per thread, Network._row_pieces) and the logits are the bytes of
    one thread; batches (images side by side, then one after another) too."""
    net_of = _pruned_net_of(arch)
    # 112x112: pieces at 56x56 and 28x28 on 2 threads, none on 3 (56 and 28 rows do not cut
    # in 3). 96x96: 48x48 and 24x24 cut in 2 and in 3.
    both = {(48, 48), (24, 24)}
    _check_row_pieces(net_of, ((112, "NCHW", {2: {(56, 56), (28, 28)}, 3: set()}),
                               (96, "NHWC", {2: both, 3: both})))


@pytest.mark.parametrize("arch", ["v2", "v1"])
def test_tall_row_pieces_in_networks(arch):
    """At 136x136 on 2 threads the first conv writes pieces of 34 rows, taller than a staged
    depthwise plane, whose halo rows the depthwise conv reads in place (the rows path): the
    bytes of one thread. (Left out under emulation: the step tests cover these pieces.)"""
    net_of = _pruned_net_of(arch)
    _check_row_pieces(net_of, ((136, "NCHW", {2: {(68, 68), (34, 34)}}),))


def test_first_conv_step_on_several_threads_keeps_the_bytes():
    """At 224x224 v2's first conv, depthwise conv and 1x1 run as one step on any thread count
    (each thread one run of bands), the step's output held whole, not in row pieces: 2 and 3
    threads give the bytes of one."""
    net_of = _pruned_net_of("v2")
    for threads in (2, 3):
        net = net_of(threads)
        _, _, _, fused, pieced, _ = net._plan(((1, 3, 224, 224), "NCHW"), threads)
        conv = net.layers[0]
        assert type(conv) is fs.models._Conv and {0, 1} <= fused
        assert not {conv.dst, net.layers[2].dst} & set(pieced)
    _check_row_pieces(net_of, ((224, "NCHW", {2: {(56, 56), (28, 28)}, 3: set()}),))


@pytest.mark.parametrize("arch", ["v2", "v1"])
def test_a_team_smaller_than_planned_keeps_the_bytes(arch):
    """A network planned for T threads (row pieces, bands and channel groups cut for T) may
    get a smaller OpenMP team (OMP_THREAD_LIMIT, nested parallelism): the team's threads then
    run the missing threads' items too. 2 and 3 threads on a team of 1, and 3 on a team of 2,
    give the bytes of one thread, row pieces and the fused first step included."""
    from test_dispatch import _run
    one = _pruned_net_of(arch)(1)
    sizes = (224, 112)
    xs = [np.random.default_rng(s).uniform(-1, 1, (1, 3, s, s)).astype(np.float32)
          for s in sizes]
    want = "".join(one(x).tobytes().hex() for x in xs)
    code = (
        "import numpy as np, sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_models import _pruned_net_of\n"
        f"net_of = _pruned_net_of({arch!r})\n"
        f"xs = [np.random.default_rng(s).uniform(-1, 1, (1, 3, s, s)).astype(np.float32)"
        f" for s in {sizes!r}]\n"
        "for t in map(int, sys.argv[1:]):\n"
        "    net = net_of(t)\n"
        "    sys.stdout.write(''.join(net(x).tobytes().hex() for x in xs) + '\\n')\n")
    for limit, threads in (("1", (2, 3)), ("2", (3,))):
        r = _run(code, *map(str, threads), OMP_THREAD_LIMIT=limit, FASTSPARSE_ISA=fs.isa())
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [want] * len(threads), (limit, threads)


def _pruned_net_of(arch):
    """threads -> a MobileNet (v2 or v1, width 0.5) pruned to 90 %, on that many threads."""
    if arch == "v2":
        sd = _pruned_v2(0.5, 0.9, None)
        return lambda t: fs.MobileNetV2.from_dense(sd, num_threads=t)
    wt = random_mobilenet_v1_weights(0.5, 10, seed=2)
    return lambda t: fs.MobileNetV1.from_dense(wt, sparsity=0.9, num_threads=t)


def _check_row_pieces(net_of, cases):
    """For each (size, layout, {threads: sizes held in pieces}): the pieced sizes, and the
    bytes of one thread for images one by one and as a batch."""
    one = net_of(1)
    for size, layout, want_sizes in cases:
        x = np.random.default_rng(size).uniform(-1, 1, (3, 3, size, size)).astype(np.float32)
        if layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        want = [one(x[i:i + 1], layout=layout).tobytes() for i in range(3)]
        for threads in want_sizes:
            net = net_of(threads)
            shapes, _, _, fused, pieced, _ = net._plan(((1, 3, size, size), layout), threads)
            assert {shapes[t][2:] for t in pieced} == want_sizes[threads], (size, threads)
            assert all(v == threads for v in pieced.values())
            for i in range(3):
                assert net(x[i:i + 1], layout=layout).tobytes() == want[i], (size, threads, i)
            assert net(x, layout=layout).tobytes() == b"".join(want)
