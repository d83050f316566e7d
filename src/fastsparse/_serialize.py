"""The .fsnet file format: a network's layers and packed weights, without pickle.

    offset 0   8 bytes   magic b"\\x89FSNET\\r\\n" (PNG-style: catches text-mode mangling)
    offset 8   4 bytes   little-endian uint32 H, the length of the header
    offset 12  H bytes   UTF-8 JSON header (below)
    then                 the data section: raw little-endian arrays, each at a 64-byte aligned
                         offset from the start of the data section

Header: {"format": "fastsparse.network", "version": 1, "arch": str, "data_bytes": int,
         "layers": [{"op": ..., "src": int, "dst": int, "res": int|null, <op fields>,
                     "arrays": {name: [offset, dtype, shape]}}]}

Loading parses JSON and copies byte ranges into NumPy arrays: it never executes code. Every
declared shape is checked against the bytes actually present before anything is allocated
from it, the arrays together may declare no more bytes than the data section holds, and
packed sparse weights are re-validated by the kernel layer (column ranges, counts)
exactly as when they were first built.
"""
import json
import math
import os
import struct
import threading

import numpy as np

from . import _kernels

MAGIC = b"\x89FSNET\r\n"
VERSION = 1
MAX_HEADER = 1 << 24
_DTYPES = {"float32": np.float32, "int32": np.int32, "uint32": np.uint32}
_ARRAY_DTYPES = {"nnzmap": "uint32", "columns": "int32"}  # every other array is float32
_ALIGN = 64


def _layer_record(layer):
    from .models import _Classifier, _Conv, _Depthwise, _Pointwise, _Pool
    rec = {"op": layer.op, "src": layer.src, "dst": layer.dst, "res": layer.res}
    arrays = {}
    if isinstance(layer, (_Conv, _Depthwise)):
        rec.update(stride=layer.stride, act=list(layer.act),
                   padding=layer.padding if isinstance(layer.padding, str) else list(layer.padding))
        arrays.update(w=layer.w, b=layer.b)
    elif isinstance(layer, _Pointwise):  # includes _Classifier
        rec.update(act=[float(v) for v in layer.act], sparse=layer.sparse,
                   classifier=isinstance(layer, _Classifier))
        if layer.sparse:
            p = layer.W._packed
            rec.update(rows=p.rows, cols=p.cols, block=p.nr)
            arrays.update(values=p.values, nnzmap=p.nnzmap, columns=p.columns)
        else:
            rec["why_dense"] = layer.why_dense
            arrays["w"] = layer.W
        if layer.b is not None:
            arrays["b"] = layer.b
    elif not isinstance(layer, _Pool):
        raise TypeError(f"cannot save layer {layer!r}")
    return rec, arrays


def save_network(net, path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    records, blobs, offset = [], [], 0
    for layer in net.layers:
        rec, arrays = _layer_record(layer)
        rec["arrays"] = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            dtype = a.dtype.name
            if dtype not in _DTYPES:
                raise TypeError(f"cannot save array {name} of dtype {dtype}")
            offset = -(-offset // _ALIGN) * _ALIGN
            rec["arrays"][name] = [offset, dtype, list(a.shape)]
            blobs.append((offset, a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()))
            offset += a.nbytes
        records.append(rec)
    header = json.dumps({"format": "fastsparse.network", "version": VERSION, "arch": net.arch,
                         "data_bytes": offset, "layers": records}).encode()
    # Written beside the target, then renamed over it: a reader never sees half a file. The
    # name is the writing thread's own, and the file goes if anything fails.
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            data = bytearray(offset)
            for off, raw in blobs:
                data[off:off + len(raw)] = raw
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _fail(path, why):
    raise ValueError(f"{path!s} is not a valid fastsparse model file: {why}")


def _int(rec, key, path, lo=0, hi=2**31 - 1):
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        _fail(path, f"field {key!r} must be an int in [{lo}, {hi}], got {v!r}")
    return v


def load_network(path):
    from .models import (MobileNetV1, MobileNetV2, Network, _Classifier, _Conv, _Depthwise,
                         _Pointwise, _Pool)
    from .sparse import SparseMatrix
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"{path!s} is a directory, not a fastsparse model file")
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:8] != MAGIC:
            _fail(path, "it does not start with the fastsparse magic bytes")
        (hlen,) = struct.unpack("<I", head[8:])
        size = os.fstat(f.fileno()).st_size
        if hlen > MAX_HEADER or 12 + hlen > size:
            _fail(path, f"header length {hlen} exceeds the file ({size} bytes) or the limit")
        try:
            header = json.loads(f.read(hlen).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            # ValueError: bad JSON, or an int literal beyond Python's digit limit;
            # RecursionError: nesting deeper than the C stack allows.
            _fail(path, f"its header is not valid JSON ({type(exc).__name__}: {exc})")
        if not isinstance(header, dict) or header.get("format") != "fastsparse.network":
            _fail(path, "its header does not describe a fastsparse network")
        if header.get("version") != VERSION:
            _fail(path, f"format version {header.get('version')!r} is not supported (this "
                        f"fastsparse reads version {VERSION})")
        data_bytes = _int(header, "data_bytes", path, 0, 2**62)
        if 12 + hlen + data_bytes != size:
            _fail(path, f"it should hold {12 + hlen + data_bytes} bytes but holds {size} "
                        "(truncated or padded)")
        data = f.read(data_bytes)
    declared = [0]  # bytes of the arrays read so far: at most the data section's

    def array(rec, name, required=True):
        spec = rec.get("arrays", {}).get(name) if isinstance(rec.get("arrays"), dict) else None
        if spec is None:
            if required:
                _fail(path, f"layer {rec.get('op')!r} lacks array {name!r}")
            return None
        if (not isinstance(spec, list) or len(spec) != 3 or spec[1] not in _DTYPES
                or not isinstance(spec[2], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31
                           for d in spec[2])
                or isinstance(spec[0], bool) or not isinstance(spec[0], int)):
            _fail(path, f"array {name!r} has a malformed description {spec!r}")
        offset, dtype, shape = spec
        if dtype != _ARRAY_DTYPES.get(name, "float32"):
            _fail(path, f"array {name!r} has dtype {dtype}, expected {_ARRAY_DTYPES.get(name, 'float32')}")
        count = math.prod(shape)  # exact: an int64 product of hostile sizes could wrap around
        nbytes = count * 4
        if offset < 0 or offset % _ALIGN or offset + nbytes > data_bytes:
            _fail(path, f"array {name!r} ({shape}, {dtype}) at offset {offset} lies outside "
                        f"the data section ({data_bytes} bytes)")
        # Each array is copied, so arrays declared over the same bytes again and again would
        # make a small file take any amount of memory.
        declared[0] += nbytes
        if declared[0] > data_bytes:
            _fail(path, f"its arrays declare more bytes than its data section holds "
                        f"({data_bytes}): arrays overlap")
        a = np.frombuffer(data, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"), count=count,
                          offset=offset).astype(_DTYPES[dtype]).reshape(shape)
        if dtype == "float32" and not np.isfinite(a).all():
            _fail(path, f"array {name!r} holds NaN or inf (weights must be finite)")
        return a

    def activation(i, rec):
        act = rec.get("act")
        if not (isinstance(act, list) and len(act) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in act)):
            _fail(path, f"layer {i} has a bad activation {act!r}")
        try:
            lo, hi = float(act[0]), float(act[1])
        except OverflowError:
            _fail(path, f"layer {i} has a bad activation {act!r}")
        if not lo <= hi:  # also refuses NaN
            _fail(path, f"layer {i} has a bad activation {act!r}")
        return lo, hi

    arch = header.get("arch")
    cls = {"mobilenet_v2": MobileNetV2, "mobilenet_v1": MobileNetV1}.get(arch, Network)
    layers = header.get("layers")
    if not isinstance(layers, list) or not layers:
        _fail(path, "it has no layers")
    built = []
    for i, rec in enumerate(layers):
        if not isinstance(rec, dict):
            _fail(path, f"layer {i} is not an object")
        op = rec.get("op")
        if op in ("conv3x3", "dwconv"):
            w, b = array(rec, "w"), array(rec, "b")
            if w.ndim != 4 or w.size == 0 or b.shape != (w.shape[0],):
                _fail(path, f"layer {i} has weights of shape {w.shape} and bias {b.shape}")
            pad = rec.get("padding")
            if not ((pad == "same" and op == "conv3x3") or (
                    isinstance(pad, list) and len(pad) == 4
                    and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 8
                            for p in pad))):
                _fail(path, f"layer {i} has a bad padding {pad!r}")
            act = activation(i, rec)
            kind = _Conv if op == "conv3x3" else _Depthwise
            layer = kind(w, b, _int(rec, "stride", path, 1, 2),
                         pad if pad == "same" else tuple(pad), act)
        elif op in ("conv1x1", "linear"):
            act = activation(i, rec)
            b = array(rec, "b", required=False)
            if rec.get("sparse") is True:
                try:
                    packed = _kernels.SpmmWeights(
                        array(rec, "values"), array(rec, "nnzmap"), array(rec, "columns"),
                        _int(rec, "rows", path, 1), _int(rec, "cols", path, 1),
                        _int(rec, "block", path, 1, 8))
                except ValueError as exc:
                    _fail(path, f"layer {i} has inconsistent sparse weights ({exc})")
                W = SparseMatrix(packed, int(np.count_nonzero(packed.values)))
            else:
                W = array(rec, "w")
                if W.ndim != 2 or W.size == 0:
                    _fail(path, f"layer {i} has dense weights of shape {W.shape}")
            kind = _Classifier if rec.get("classifier") else _Pointwise
            layer = kind(W, b, act)
            if not layer.sparse:
                layer.why_dense = str(rec.get("why_dense", "dense"))
            if b is not None and b.shape != (W.shape[0],):
                _fail(path, f"layer {i} has a bias of shape {b.shape} for {W.shape[0]} outputs")
        elif op == "avgpool":
            layer = _Pool()
        else:
            _fail(path, f"layer {i} has an unknown op {op!r}")
        layer.src = _int(rec, "src", path, 0, i)
        layer.dst = _int(rec, "dst", path, i + 1, i + 1)
        res = rec.get("res")
        if res is not None and op != "conv1x1":  # only a 1x1 step adds a residual
            _fail(path, f"layer {i} ({op}) cannot add a residual")
        layer.res = None if res is None else _int(rec, "res", path, 0, i)
        built.append(layer)
    _check_chain(built, path)
    return cls(arch if isinstance(arch, str) else "network", built)


def _check_chain(layers, path):
    """Channel counts agree from layer to layer, and the program ends with pool + classifier,
    so that a model file cannot make the executor index out of bounds."""
    from .models import _Classifier, _Conv, _Depthwise, _Pointwise, _Pool
    channels = {0: 3}
    for i, layer in enumerate(layers):
        c = channels.get(layer.src)
        if isinstance(layer, _Conv):
            need, out = layer.w.shape[1], layer.w.shape[0]
            if layer.w.shape[1:] != (3, 3, 3):
                _fail(path, f"layer {i}: the first conv must be 3x3 over 3 channels")
        elif isinstance(layer, _Depthwise):
            need = out = layer.w.shape[0]
            if layer.w.shape[1] != 1 or layer.w.shape[2] != layer.w.shape[3] or layer.w.shape[2] not in (3, 5):
                _fail(path, f"layer {i}: depthwise weights of shape {layer.w.shape}")
        elif isinstance(layer, _Pointwise):
            out, need = layer.W.shape
        else:
            need = out = c
        if c != need:
            _fail(path, f"layer {i} expects {need} input channels, its input has {c}")
        if layer.res is not None and channels.get(layer.res) != out:
            _fail(path, f"layer {i} adds a residual of {channels.get(layer.res)} channels to {out}")
        channels[layer.dst] = out
    if not (len(layers) >= 3 and isinstance(layers[-2], _Pool) and isinstance(layers[-1], _Classifier)
            and isinstance(layers[0], _Conv) and layers[-1].src == layers[-2].dst):
        _fail(path, "the layers are not conv ... pool, classifier (of the pooled features)")
    if any(isinstance(l, (_Pool, _Classifier)) for l in layers[:-2]):
        _fail(path, "pooling or a classifier appears before the end")
