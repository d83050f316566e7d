"""ISA dispatch and thread settings."""
import os
import subprocess
import sys

import pytest

import fastsparse as fs


def test_available_isas_are_ordered_and_include_scalar():
    isas = fs.available_isas()
    assert isas[-1] == "scalar"
    assert fs.isa() in isas
    import platform
    if platform.machine() in ("x86_64", "AMD64"):
        assert "sse2" in isas


def _run(code, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "FASTSPARSE_ISA"}
    full_env.update(env)
    # The same fastsparse as this test process, wherever it was imported from.
    full_env["PYTHONPATH"] = os.path.dirname(os.path.dirname(fs.__file__))
    return subprocess.run([sys.executable, "-c", code, *args], env=full_env, capture_output=True,
                          text=True)


@pytest.mark.parametrize("name", fs.available_isas())
def test_env_var_forces_an_isa(name):
    r = _run("import fastsparse as fs; print(fs.isa())", FASTSPARSE_ISA=name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


@pytest.mark.parametrize("name", ["avx1024", "neon_or_not", ""])
def test_env_var_with_unknown_or_unsupported_isa_fails_clearly(name):
    r = _run("import fastsparse", FASTSPARSE_ISA=name)
    if name == "":
        assert r.returncode == 0  # empty means unset
        return
    assert r.returncode != 0
    assert "FASTSPARSE_ISA" in r.stderr and "ValueError" in r.stderr


def test_env_var_naming_an_isa_this_cpu_lacks_fails_clearly():
    # Asked of a subprocess: it may run on another CPU than this one (CI runs this suite under
    # an emulated CPU without AVX2, and its subprocesses natively).
    r = _run("import fastsparse as fs; print(','.join(fs.available_isas()))")
    assert r.returncode == 0, r.stderr
    missing = [n for n in ("scalar", "sse2", "avx2", "avx512", "neon")
               if n not in r.stdout.strip().split(",")]
    if not missing:
        pytest.skip("this build runs every ISA here")
    for name in missing:
        r = _run("import fastsparse", FASTSPARSE_ISA=name)
        assert r.returncode != 0 and "FASTSPARSE_ISA" in r.stderr and "not supported" in r.stderr, name


def test_unsupported_isa_is_refused():
    missing = [n for n in ("scalar", "sse2", "avx2", "avx512", "neon") if n not in fs.available_isas()]
    for name in missing:
        with pytest.raises(ValueError, match="not supported"):
            fs.set_isa(name)


def test_omp_num_threads_sets_the_default():
    r = _run("import fastsparse as fs; print(fs.get_num_threads())", OMP_NUM_THREADS="3")
    assert r.returncode == 0, r.stderr
    from fastsparse import _kernels
    assert r.stdout.strip() == ("3" if _kernels.OPENMP else "1")


def test_set_num_threads_round_trip():
    before = fs.get_num_threads()
    try:
        fs.set_num_threads(2)
        from fastsparse import _kernels
        assert fs.get_num_threads() == (2 if _kernels.OPENMP else 1)
    finally:
        fs.set_num_threads(before)


def test_spmm_tile_follows_plane_alignment():
    """On AVX-512 the 16-wide tiles run on planes that start on 64-byte lines and the AVX2
    tile on misaligned ones below 1024 positions; the one-op entry point's outputs start on
    lines, and its result does not depend on where the input lies (same values at an
    address 16 bytes past a line: the same bytes out)."""
    from fastsparse import _dispatch, _kernels
    if "avx512" not in fs.available_isas():
        pytest.skip("needs AVX-512")

    def name(choice):
        return _kernels.spmm_kernels(choice[0])[choice[1]][0]
    assert "avx512" in name(_dispatch.spmm_kernel("avx512", 1, 196, plane=208))
    assert "avx2" in name(_dispatch.spmm_kernel("avx512", 1, 196))
    assert "avx512" in name(_dispatch.spmm_kernel("avx512", 1, 208))
    import numpy as np
    W = fs.SparseMatrix.from_dense(np.eye(8, dtype=np.float32))
    x = np.ones((1, 8, 4, 4), np.float32)
    assert fs.sparse_conv1x1(x, W).ctypes.data % 64 == 0
    rng = np.random.default_rng(0)
    w = fs.prune.magnitude(rng.standard_normal((64, 512)).astype(np.float32), 0.5)
    W = fs.SparseMatrix.from_dense(w)
    raw = np.empty(512 * 256 + 32, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    on_line = raw[skip:skip + 512 * 256].reshape(1, 512, 16, 16)
    off_line = raw[skip + 4:skip + 4 + 512 * 256].reshape(1, 512, 16, 16)
    on_line[...] = rng.standard_normal(on_line.shape)
    first = fs.sparse_conv1x1(on_line, W).tobytes()
    off_line[...] = on_line.copy()
    assert fs.sparse_conv1x1(off_line, W).tobytes() == first


def test_prefetch_variant_only_where_the_output_exceeds_l2():
    """The tile's _prefetch twin runs when the layer's output is larger than L2, the plain
    variant otherwise; only AVX2 and AVX-512 have twins."""
    from fastsparse import _dispatch, _kernels
    l2 = _dispatch.l2_bytes()
    assert l2 >= 64 * 1024
    for isa in fs.available_isas():
        for block_size in (1, 2, 4, 8):
            small, big = (_kernels.spmm_kernels(c[0])[c[1]][0] for c in (
                _dispatch.spmm_kernel(isa, block_size, 12544, plane=12544, out_bytes=b)
                for b in (l2, l2 + 1)))
            assert "_prefetch" not in small
            twin = small.replace("__", "_prefetch__", 1)
            kisa = _dispatch.isa_id(small.split("__")[1])
            has_twin = any(k[0] == twin for k in _kernels.spmm_kernels(kisa))
            assert big == (twin if has_twin else small), (isa, block_size, small, big)
            assert has_twin == (isa in ("avx2", "avx512")), (isa, block_size)


def test_network_runs_prefetch_variants_only_outside_fused_steps(monkeypatch):
    """In a network, an unfused sparse 1x1 whose output exceeds L2 runs a _prefetch variant;
    a 1x1 fused with the depthwise conv after it never does (its groups stay in L2). With a
    64 KiB L2 both kinds occur in MobileNet v2 at 112x112."""
    import numpy as np
    from fastsparse import _dispatch
    if fs.isa() not in ("avx2", "avx512"):
        pytest.skip("the active ISA has no _prefetch variants")
    monkeypatch.setattr(_dispatch, "_l2", 64 * 1024)
    from fastsparse.bench_e2e import pruned_weights
    net = fs.MobileNetV2.from_dense(pruned_weights("mobilenet_v2", 0.9), num_threads=1)
    lines = net.summary(input_size=(112, 112)).splitlines()
    fused = [l for l in lines if "fused with" in l]
    unfused = [l for l in lines if "conv1x1" in l and "fused with" not in l]
    assert fused and not any("_prefetch" in l for l in fused)
    assert any("_prefetch" in l for l in unfused)
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    ref = net(x).copy()
    monkeypatch.setattr(_dispatch, "_l2", 1 << 40)
    plain = fs.MobileNetV2.from_dense(pruned_weights("mobilenet_v2", 0.9), num_threads=1)
    assert plain(x).tobytes() == ref.tobytes()
