"""Robustness: inputs never mutated, thread safety, resident memory under repeated calls,
hostile model files, and the 32-bit limits of the packed format.

Sizes for CI, with variables for the full run (pytest -s prints what was measured):
FASTSPARSE_LEAK_CALLS calls per op (default 1000; 200 for the network unless set),
FASTSPARSE_FLIPS single-bit flips (default 100), FASTSPARSE_ALL_PREFIXES=1 every truncation.
"""
import functools
import io
import json
import os
import pickle
import struct
import sys
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastsparse as fs
from fastsparse import _kernels
from fastsparse._serialize import MAGIC
from fastsparse.models import random_mobilenet_v1_weights, random_mobilenet_v2_weights

CLEAN_FILE_ERRORS = (ValueError, TypeError, OSError)


def rng_arrays(seed):
    rng = np.random.default_rng(seed)
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def v2():
    return fs.MobileNetV2.from_dense(random_mobilenet_v2_weights(width=0.25, num_classes=10),
                                     sparsity=0.85)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small saved network and its bytes."""
    path = tmp_path_factory.mktemp("model") / "m.fsnet"
    net = fs.MobileNetV2.from_dense(random_mobilenet_v2_weights(width=0.1, num_classes=3),
                                    sparsity=0.9)
    net.save(path)
    return path, path.read_bytes()


# --- 3. no mutation ------------------------------------------------------------------------

def _state(objs):
    return [(a.tobytes(), a.dtype.str, a.shape, a.strides) for a in objs]


def test_no_public_function_mutates_its_inputs(v2, tmp_path):
    r = rng_arrays(0)
    wd = r(24, 16)
    wd[np.abs(wd) < 1.0] = 0
    W = fs.SparseMatrix.from_dense(wd, block_size=2)
    x, res, bias = r(2, 16, 5, 7), r(2, 24, 5, 7), r(24)
    dw, db, cw, cb = r(16, 1, 3, 3), r(16), r(8, 3, 3, 3), r(8)
    img, img_nhwc = r(2, 3, 32, 33), r(2, 32, 33, 3)
    a, b = r(3, 70), r(3, 70)
    packed = (W._packed.values, W._packed.nnzmap, W._packed.columns)
    inputs = [wd, x, res, bias, dw, db, cw, cb, img, img_nhwc, a, b, *packed]
    calls = [
        lambda: fs.sparse_conv1x1(x, W, bias, "relu", res, num_threads=2),
        lambda: fs.sparse_conv1x1(x, W, bias, out=np.empty((2, 24, 5, 7), np.float32)),
        lambda: fs.linear(x[:, :, 0, 0], W, bias, "relu6"),
        lambda: fs.linear(x[:, :, 0, 0], wd, bias),
        lambda: fs.depthwise_conv2d(x, dw, db, stride=2, padding=(0, 0, 1, 1)),
        lambda: fs.depthwise_conv2d(x, dw, db, out=np.empty((2, 16, 5, 7), np.float32)),
        lambda: fs.conv2d(img, cw, cb, activation="relu6"),
        lambda: fs.conv2d(img_nhwc, cw, cb, layout="NHWC"),
        lambda: fs.global_avg_pool(x),
        lambda: fs.add(a, b, activation="relu"),
        lambda: fs.SparseMatrix.from_dense(wd),
        lambda: fs.prune.magnitude(wd, 0.5, block_size=4),
        lambda: v2(img),
        lambda: v2(img_nhwc, layout="NHWC"),
    ]
    before = _state(inputs)
    for i, call in enumerate(calls):
        call()
        assert _state(inputs) == before, f"call {i} modified an input"
    # Builders leave the source weights alone; save/load leave the network alone.
    for make, cls in ((lambda: random_mobilenet_v2_weights(0.25, 5), fs.MobileNetV2),
                      (lambda: random_mobilenet_v1_weights(0.25, 5), fs.MobileNetV1)):
        sd = make()
        snap = _state(sd.values())
        net = cls.from_dense(sd, sparsity=0.8)
        assert _state(sd.values()) == snap
        out1 = net(img)
        net.save(tmp_path / "n.fsnet")
        assert net(img).tobytes() == out1.tobytes()
        assert fs.load(tmp_path / "n.fsnet")(img).tobytes() == out1.tobytes()


# --- 4. threads ----------------------------------------------------------------------------

def test_out_sharing_memory_with_any_operand_is_refused():
    """An `out` the kernels would write while still reading it (x, a weight, the bias, the
    residual) gave wrong results (depthwise 16.5 off, conv2d 400 off): refused by name."""
    r = rng_arrays(8)
    x4, x3 = r(1, 4, 8, 8), r(1, 3, 8, 8)
    W = fs.SparseMatrix.from_dense(r(16, 4))

    def shared(n_out, n_other):
        buf = np.zeros(n_out + n_other, np.float32)
        return buf[:n_out], buf[n_out - 1:]  # one float in common

    cases = []
    out, other = shared(4 * 64, 36)
    cases.append(("w", lambda out=out, other=other: fs.depthwise_conv2d(
        x4, other[:36].reshape(4, 1, 3, 3), padding=1, out=out.reshape(1, 4, 8, 8))))
    out, other = shared(4 * 64, 4)
    cases.append(("bias", lambda out=out, other=other: fs.depthwise_conv2d(
        x4, r(4, 1, 3, 3), bias=other[:4], padding=1, out=out.reshape(1, 4, 8, 8))))
    out, other = shared(8 * 64, 8 * 27)
    cases.append(("w", lambda out=out, other=other: fs.conv2d(
        x3, other[:8 * 27].reshape(8, 3, 3, 3), stride=1, padding=1, out=out.reshape(1, 8, 8, 8))))
    out, other = shared(8 * 64, 8)
    cases.append(("bias", lambda out=out, other=other: fs.conv2d(
        x3, r(8, 3, 3, 3), bias=other[:8], stride=1, padding=1, out=out.reshape(1, 8, 8, 8))))
    out, other = shared(16 * 64, 16)
    cases.append(("bias", lambda out=out, other=other: fs.sparse_conv1x1(
        x4, W, bias=other[:16], out=out.reshape(1, 16, 8, 8))))
    out, other = shared(16 * 64, 16 * 64)
    cases.append(("residual", lambda out=out, other=other: fs.sparse_conv1x1(
        x4, W, residual=other[:16 * 64].reshape(1, 16, 8, 8), out=out.reshape(1, 16, 8, 8))))
    out, other = shared(4, 4 * 64)
    cases.append(("x", lambda out=out, other=other: fs.global_avg_pool(other[:4 * 64].reshape(1, 4, 8, 8),
                                                  out=out.reshape(1, 4))))
    for name, call in cases:
        with pytest.raises(ValueError, match=f"out must not overlap {name}"):
            call()


def _hammer(n_threads, calls_per_thread, job):
    """Runs job(thread, i) from n_threads Python threads at once; returns the results."""
    results = [[None] * calls_per_thread for _ in range(n_threads)]
    errors = []
    start = threading.Barrier(n_threads)

    def worker(t):
        try:
            start.wait()
            for i in range(calls_per_thread):
                results[t][i] = job(t, i)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return results


def test_one_network_from_four_threads_matches_serial(v2):
    r = rng_arrays(1)
    # Several shapes, so that threads plan and share buffers for different inputs at once.
    images = [r(1, 3, 32, 32), r(2, 3, 24, 40), r(1, 3, 17, 9), r(3, 3, 16, 16)]
    serial = [v2(x).tobytes() for x in images]
    out = _hammer(4, 75, lambda t, i: v2(images[(t + i) % len(images)]).tobytes())
    for t in range(4):
        for i in range(75):
            assert out[t][i] == serial[(t + i) % len(images)], f"thread {t}, call {i}"


def test_one_sparse_matrix_from_four_threads_matches_serial():
    r = rng_arrays(2)
    wd = r(48, 40)
    wd[np.abs(wd) < 1.2] = 0
    W = fs.SparseMatrix.from_dense(wd)
    xs = [r(1, 40, 7, 9), r(2, 40, 16, 16), r(1, 40, 1, 33), r(1, 40, 5, 5)]
    bias = r(48)
    ops = [lambda x: fs.sparse_conv1x1(x, W, bias, "relu6", num_threads=2),
           lambda x: fs.sparse_conv1x1(x, W, None, None, num_threads=1),
           lambda x: fs.linear(x[:, :, 0, 0], W, bias)]
    serial = [[op(x).tobytes() for x in xs] for op in ops]
    out = _hammer(4, 100, lambda t, i: ops[i % 3](xs[(t + i) % 4]).tobytes())
    for t in range(4):
        for i in range(100):
            assert out[t][i] == serial[i % 3][(t + i) % 4], f"thread {t}, call {i}"


# --- 5. resident memory ------------------------------------------------------------------

def test_first_calls_from_several_threads_at_once():
    """Threads that miss a fresh matrix's or network's caches together (offsets, input
    channel parts, plans) must share one entry: the C steps point into the arrays an entry
    holds, and an entry replaced by a second thread's was freed under a running step
    (segfaults, or logits of 1e30). A tiny switch interval makes the threads interleave."""
    r = rng_arrays(7)
    x = r(1, 512, 4, 4)
    sd = random_mobilenet_v1_weights(width=0.25, num_classes=10)
    images = r(1, 3, 64, 64)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for trial in range(12):
            wd = r(256, 512)
            wd[np.abs(wd) < 0.7] = 0  # about half dense: several input-channel parts
            expect = fs.sparse_conv1x1(x, fs.SparseMatrix.from_dense(wd), num_threads=1)
            W = fs.SparseMatrix.from_dense(wd)
            out = _hammer(3, 1, lambda t, i: fs.sparse_conv1x1(x, W, num_threads=1))
            junk = [np.full(W.nnz, 0x3FFFFF00, np.int32) for _ in range(20)]  # reuse freed memory
            again = fs.sparse_conv1x1(x, W, num_threads=1)
            del junk
            for y in [o[0] for o in out] + [again]:
                np.testing.assert_array_equal(y, expect, err_msg=f"trial {trial}")
            if trial % 4 == 0:
                logits = fs.MobileNetV1.from_dense(sd, sparsity=0.5, num_threads=1)(images)
                net = fs.MobileNetV1.from_dense(sd, sparsity=0.5, num_threads=1)
                for y in _hammer(3, 1, lambda t, i: net(images)):
                    np.testing.assert_array_equal(y[0], logits, err_msg=f"trial {trial}")
    finally:
        sys.setswitchinterval(old)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


LEAK_CALLS = int(os.environ.get("FASTSPARSE_LEAK_CALLS", "1000"))


@functools.lru_cache(maxsize=1)
def _leak_cases():
    r = rng_arrays(3)
    wd = r(32, 24)
    wd[np.abs(wd) < 1.0] = 0
    W = fs.SparseMatrix.from_dense(wd)
    x, res, out = r(1, 24, 14, 14), r(1, 32, 14, 14), np.empty((1, 32, 14, 14), np.float32)
    dw, cw, img = r(24, 1, 3, 3), r(8, 3, 3, 3), r(1, 3, 32, 32)
    a, bias = r(4, 1000), r(32)
    net = fs.MobileNetV2.from_dense(random_mobilenet_v2_weights(width=0.25, num_classes=10),
                                    sparsity=0.9)
    small = r(1, 3, 24, 24)
    bad = np.ones((1, 3, 5, 5), np.float64)
    return {
        "sparse_conv1x1": lambda: fs.sparse_conv1x1(x, W, bias, "relu", res),
        "sparse_conv1x1 out=": lambda: fs.sparse_conv1x1(x, W, out=out),
        "linear": lambda: fs.linear(x[:, :, 0, 0], W),
        "depthwise_conv2d": lambda: fs.depthwise_conv2d(x, dw, stride=2, num_threads=2),
        "conv2d": lambda: fs.conv2d(img, cw, activation="relu6"),
        "global_avg_pool": lambda: fs.global_avg_pool(x),
        "add": lambda: fs.add(a, a),
        "SparseMatrix.from_dense": lambda: fs.SparseMatrix.from_dense(wd),
        "prune.magnitude": lambda: fs.prune.magnitude(wd, 0.7),
        "error path": lambda: pytest.raises(TypeError, fs.sparse_conv1x1, bad, W),
        "network": lambda: net(small),
    }


@pytest.mark.parametrize("name", list(_leak_cases()))
def test_resident_memory_is_stable_under_repeated_calls(name):
    """RSS after warm-up vs after LEAK_CALLS more calls (200 for the network unless the
    variable is set). A leak of one small array per call (>= 100 bytes) over 1000 calls shows
    as >= 100 KB; the bound (2 MiB) is what allocator noise stays below."""
    call = _leak_cases()[name]
    calls = LEAK_CALLS if name != "network" or "FASTSPARSE_LEAK_CALLS" in os.environ else 200
    warm = max(50, calls // 10)
    for _ in range(warm):
        call()
    before = rss_bytes()
    for _ in range(calls):
        call()
    growth = rss_bytes() - before
    print(f"\nRSS growth over {calls} calls of {name}: {growth / 1024:.0f} KiB")
    assert growth < 2 * 1024 * 1024, f"{name}: RSS grew {growth} bytes over {calls} calls"


# --- 6. hostile files --------------------------------------------------------------------

def expect_refused(path, exc=CLEAN_FILE_ERRORS):
    with pytest.raises(exc) as info:
        fs.load(path)
    assert str(info.value).strip()
    if type(info.value) is ValueError:  # the loader's own words, not NumPy's
        assert "fastsparse model file" in str(info.value), info.value
    return info.value


def rebuild(header, data):
    """A file with the given header (dict or bytes) and data section."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(hb)) + hb + data


def split(raw):
    hlen = struct.unpack("<I", raw[8:12])[0]
    return json.loads(raw[12:12 + hlen]), raw[12 + hlen:]


def test_every_truncation_is_refused(model_file, tmp_path):
    path, raw = model_file
    hlen = struct.unpack("<I", raw[8:12])[0]
    if os.environ.get("FASTSPARSE_ALL_PREFIXES"):
        sizes = range(len(raw))
    else:  # the first 2 KiB, ~1500 spread over the header and ~500 over the data
        sizes = sorted(set(range(2048)) |
                       set(np.linspace(2048, 12 + hlen, 1500).astype(int).tolist()) |
                       set(np.linspace(12 + hlen, len(raw) - 1, 500).astype(int).tolist()))
    p = tmp_path / "t.fsnet"
    for n in sizes:
        p.write_bytes(raw[:n])
        expect_refused(p, ValueError)
    print(f"\ntruncations refused: {len(sizes)} of the {len(raw)} prefixes")


FLIPS = int(os.environ.get("FASTSPARSE_FLIPS", "100"))


def test_bit_flips_are_refused_or_harmless(model_file, tmp_path):
    """A flipped bit in the header or in the integer arrays is refused; one in a weight value
    may load (the format has no checksum) and the network must then still run cleanly."""
    path, raw = model_file
    p = tmp_path / "f.fsnet"
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    outcomes = {"refused": 0, "loaded": 0}
    for seed in range(FLIPS):
        rng = np.random.default_rng(seed)
        flipped = bytearray(raw)
        bit = int(rng.integers(len(raw) * 8))
        flipped[bit // 8] ^= 1 << (bit % 8)
        p.write_bytes(bytes(flipped))
        try:
            net = fs.load(p)
        except ValueError as exc:
            assert str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        try:
            y = net(x)
            assert y.shape == (1, net.num_classes)
        except (ValueError, TypeError) as exc:
            assert str(exc)
    print(f"\nsingle bit flips: {outcomes}")


def _absurd_headers(header, data):
    """(name, header dict) pairs that declare impossible sizes or places."""
    def edit(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return h

    def first_sparse(h):
        return next(l for l in h["layers"] if l.get("sparse"))

    def set_array(key, spec):
        def fn(h):
            first_sparse(h)["arrays"][key] = spec
        return fn

    def same_bytes_again(h):
        # 1000 dense 1x1s, each declaring the whole data section as its weights: arrays are
        # copied, so without a bound on the declared bytes the file takes 1000x its size.
        floats = len(data) // 4
        h["layers"][1:1] = [
            {"op": "conv1x1", "src": i, "dst": i + 1, "res": None, "act": [0.0, 6.0],
             "sparse": False, "arrays": {"w": [0, "float32", [1, floats]]}}
            for i in range(1, 1001)]

    big = 2**31 - 1
    return [
        ("the same bytes declared 1000 times", edit(same_bytes_again)),
        ("values of 2**31-1 x 3 floats", edit(set_array("values", [0, "float32", [big, big, big]]))),
        ("values of 2**31-1 floats", edit(set_array("values", [0, "float32", [big]]))),
        ("offset 2**62", edit(set_array("values", [2**62, "float32", [4]]))),
        ("offset -64", edit(set_array("values", [-64, "float32", [4]]))),
        ("offset not aligned", edit(set_array("values", [4, "float32", [4]]))),
        ("negative dim", edit(set_array("values", [0, "float32", [-1]]))),
        ("float dim", edit(set_array("values", [0, "float32", [1.5]]))),
        ("dtype float64", edit(set_array("values", [0, "float64", [4]]))),
        ("dtype object", edit(set_array("values", [0, "object", [4]]))),
        ("columns as float32", edit(set_array("columns", [0, "float32", [4]]))),
        ("rows 2**31", edit(lambda h: first_sparse(h).update(rows=2**31))),
        ("cols 2**40", edit(lambda h: first_sparse(h).update(cols=2**40))),
        ("block 3", edit(lambda h: first_sparse(h).update(block=3))),
        ("data_bytes 2**62", edit(lambda h: h.update(data_bytes=2**62))),
        ("data_bytes -1", edit(lambda h: h.update(data_bytes=-1))),
        ("act 1e400", edit(lambda h: first_sparse(h).update(act=[0, 10**400]))),
        ("act NaN", edit(lambda h: first_sparse(h).update(act=[float("nan"), 1.0]))),
        ("act lo > hi", edit(lambda h: first_sparse(h).update(act=[6.0, 0.0]))),
        ("act strings", edit(lambda h: first_sparse(h).update(act=["0", "6"]))),
        ("padding 2**40", edit(lambda h: h["layers"][1].update(padding=[2**40] * 4))),
        ("padding same on depthwise", edit(lambda h: h["layers"][1].update(padding="same"))),
        ("padding booleans", edit(lambda h: h["layers"][1].update(padding=[True, 1, 1, 1]))),
        ("conv weights of shape []", edit(lambda h: h["layers"][0]["arrays"].update(
            w=[0, "float32", []]))),
        ("conv weights of shape [0]", edit(lambda h: h["layers"][0]["arrays"].update(
            w=[0, "float32", [0]]))),
        ("depthwise weights of shape [0, 1, 3, 3]", edit(lambda h: h["layers"][1]["arrays"].update(
            w=[0, "float32", [0, 1, 3, 3]]))),
        ("a residual on a depthwise conv", edit(lambda h: h["layers"][1].update(
            res=h["layers"][1]["src"]))),  # of the right channels: refused for its op
        ("a residual on the pooling", edit(lambda h: h["layers"][-2].update(
            res=h["layers"][-2]["src"]))),
        ("a classifier of the unpooled tensor", edit(lambda h: h["layers"][-1].update(
            src=h["layers"][-2]["src"]))),
        ("stride 0", edit(lambda h: h["layers"][0].update(stride=0))),
        ("src ahead", edit(lambda h: h["layers"][2].update(src=50))),
        ("res ahead", edit(lambda h: h["layers"][2].update(res=50))),
        ("res wrong channels", edit(lambda h: h["layers"][2].update(res=0))),
        ("no layers", edit(lambda h: h.update(layers=[]))),
        ("layers not a list", edit(lambda h: h.update(layers={"a": 1}))),
        ("layer not an object", edit(lambda h: h["layers"].__setitem__(0, 7))),
        ("unknown op", edit(lambda h: h["layers"][0].update(op="exec"))),
        ("classifier first", edit(lambda h: h["layers"].reverse())),
        ("arrays not a dict", edit(lambda h: first_sparse(h).update(arrays=[1, 2]))),
        ("version 2", edit(lambda h: h.update(version=2))),
        ("format other", edit(lambda h: h.update(format="numpy"))),
    ]


def _refused_peak_bytes(path):
    """Loads `path` expecting a ValueError; returns the peak bytes Python allocated doing so."""
    tracemalloc.start()
    try:
        expect_refused(path, ValueError)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_absurd_declarations_are_refused_without_allocating(model_file, tmp_path):
    path, raw = model_file
    header, data = split(raw)
    p = tmp_path / "a.fsnet"
    for name, h in _absurd_headers(header, data):
        h.setdefault("data_bytes", len(data))
        p.write_bytes(rebuild(h, data))
        peak = _refused_peak_bytes(p)
        # Parsing copies the file (and its arrays) a few times at most: nothing near what the
        # header claims (up to 2**93 floats).
        assert peak < 8 * len(raw) + (4 << 20), f"{name}: {peak} bytes allocated"


def test_malformed_headers_are_refused(model_file, tmp_path):
    path, raw = model_file
    header, data = split(raw)
    p = tmp_path / "h.fsnet"
    cases = {
        "header length 2**32-1": MAGIC + struct.pack("<I", 2**32 - 1) + raw[12:],
        "header length past the end": MAGIC + struct.pack("<I", len(raw)) + raw[12:],
        "header not UTF-8": rebuild(b"\xff\xfe" + b"{}", data),
        "header not JSON": rebuild(b"{'format': 1}", data),
        "header nested 100000 deep": rebuild(b"[" * 100000 + b"]" * 100000, data),
        "header a 5000-digit int": rebuild(b'{"format": "fastsparse.network", "version": '
                                           + b"9" * 5000 + b"}", data),
        "header a list": rebuild(b"[1, 2]", data),
        "magic only": MAGIC,
        "wrong magic": b"\x89PNG\r\n\x1a\n" + raw[8:],
        "empty": b"",
        "text": b"hello, this is not a model\n",
        "data padded": raw + b"\0" * 64,
    }
    for name, content in cases.items():
        p.write_bytes(content)
        peak = _refused_peak_bytes(p)
        assert peak < 8 * max(len(content), len(raw)) + (4 << 20), f"{name}: {peak} bytes"


class _Payload:
    """Unpickling this would create a marker file: loading must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_foreign_files_are_refused_and_run_no_code(tmp_path):
    marker = tmp_path / "code-ran"
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps({"net": _Payload(str(marker))}))
    expect_refused(pkl, ValueError)
    # The same pickle behind the magic bytes, as a header of any length.
    payload = pickle.dumps(_Payload(str(marker)))
    for content in (MAGIC + struct.pack("<I", len(payload)) + payload, MAGIC + payload):
        (tmp_path / "m.fsnet").write_bytes(content)
        expect_refused(tmp_path / "m.fsnet", ValueError)
    npz = tmp_path / "w.npz"
    np.savez(npz, a=np.ones(10), b=np.zeros((3, 3)))
    expect_refused(npz, ValueError)
    # A zip bomb-like npz: 256 MiB of zeros deflated to a few hundred KiB.
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("w.npy", "w", force_zip64=True) as f:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 26,)})
            f.write(header.getvalue())
            chunk = bytes(1 << 22)
            for _ in range(64):
                f.write(chunk)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        expect_refused(bomb, ValueError)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    assert not marker.exists(), "loading ran code"


def test_paths_that_are_not_files(tmp_path):
    expect_refused(tmp_path, ValueError)  # a directory
    with pytest.raises(FileNotFoundError):
        fs.load(tmp_path / "missing.fsnet")
    expect_refused("/dev/null", ValueError)
    with pytest.raises(ValueError, match="null byte"):  # Python's own check of the path
        fs.load("bad\0path")
    for bad in (None, 3, b"m.fsnet", ["m.fsnet"]):
        expect_refused(bad, TypeError)


def test_a_failed_save_leaves_no_file(v2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(OSError):
        v2.save(target)  # a directory: the rename fails after the data was written
    for bad in (3, None, ["m.fsnet"]):
        with pytest.raises(TypeError, match="path must be"):
            v2.save(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]
    assert list(target.iterdir()) == []


# --- 7. limits of the packed format ----------------------------------------------------------

def test_per_image_offset_limit_both_sides():
    """Input rows are addressed by int32 byte offsets: Cin * H * W * 4 must be < 2**31."""
    cin = 2**20
    wd = np.zeros((1, cin), np.float32)  # 4 MiB: one row, huge column count
    wd[0, cin - 1] = 1.0
    W = fs.SparseMatrix.from_dense(wd)
    ok = W._packed.offsets(511)  # 2**20 * 511 * 4 = 2**31 - 4 MiB: fits
    assert ok.dtype == np.int32 and int(ok[0]) == (cin - 1) * 511 * 4
    with pytest.raises(ValueError, match="2 GiB"):
        W._packed.offsets(512)  # 2**31 bytes: one past
    # Through the public API, before any memory is touched (the view is 2 GiB of one float).
    big = np.broadcast_to(np.float32(1.0), (1, cin, 1, 512))
    with pytest.raises(ValueError, match="2 GiB"):
        fs.sparse_conv1x1(big, W)
    # linear: the batch is the spatial axis.
    x2d = np.zeros((512, 8), np.float32)
    W8 = fs.SparseMatrix.from_dense(np.ones((1, 8), np.float32))
    assert fs.linear(x2d, W8).shape == (512, 1)
    with pytest.raises(ValueError, match="2 GiB"):
        fs.linear(np.broadcast_to(np.float32(0), (512, cin)), W)


def test_int32_index_limits_of_the_packed_weights():
    # cols = 2**31 - 1 is the largest column count int32 indices can address: accepted.
    top = 2**31 - 1
    p = _kernels.SpmmWeights([2.0], [1], [top - 1], 1, top, 1)
    assert p.cols == top and int(p.columns[0]) == top - 1
    with pytest.raises(ValueError, match="2\\*\\*31"):
        _kernels.SpmmWeights([2.0], [1], [0], 1, top + 1, 1)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        _kernels.SpmmWeights([], [0] * 1, [], top + 1, 4, 8)
    # A column index the int32 array cannot hold is refused, not wrapped around to 1.
    with pytest.raises(ValueError, match="columns must lie in"):
        _kernels.SpmmWeights([2.0], [1], np.array([2**32 + 1], np.int64), 1, top, 1)
    with pytest.raises(ValueError, match="nnzmap must lie in"):
        _kernels.SpmmWeights([2.0], np.array([2**32 + 1], np.int64), [0], 1, 3, 1)
    # from_dense refuses such shapes before copying anything (the view is 8 GiB of one float).
    with pytest.raises(ValueError, match="2\\*\\*31"):
        fs.SparseMatrix.from_dense(np.broadcast_to(np.float32(0), (1, 2**31)))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        fs.SparseMatrix.from_dense(np.broadcast_to(np.float32(0), (2**31, 1, 1, 1)))
