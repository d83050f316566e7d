"""An oracle independent of reference.py: torch.nn.functional.conv2d (oneDNN)."""
import numpy as np
import pytest

import fastsparse as fs
from _helpers import assert_close_to_reference, dense_magnitude, dw_magnitude

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_pad(x, padding):
    """(top, left, bottom, right) -> F.pad's (left, right, top, bottom)."""
    pt, pl, pb, pr = padding
    return F.pad(x, (pl, pr, pt, pb))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [None, (0, 0, 1, 1), (1, 1, 2, 2)])
@pytest.mark.parametrize("hw", [(1, 1), (7, 7), (14, 15), (33, 17)])
def test_depthwise_matches_torch(isa, k, stride, padding, hw):
    rng = np.random.default_rng(k + stride)
    c = 6
    x = rng.standard_normal((2, c) + hw).astype(np.float32)
    w = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    pad = padding if padding is not None else (k // 2,) * 4
    if hw[0] + pad[0] + pad[2] < k or hw[1] + pad[1] + pad[3] < k:
        pytest.skip("output would be empty")
    out = fs.depthwise_conv2d(x, w, b, stride, pad if padding is not None else k // 2, "relu6")
    with torch.no_grad():
        t = F.conv2d(_torch_pad(torch.from_numpy(x), pad), torch.from_numpy(w),
                     torch.from_numpy(b), stride=stride, groups=c).clamp(0.0, 6.0).numpy()
    assert out.shape == t.shape
    mag = dw_magnitude(x, w, stride, pad)
    # Two float32 computations, each within the bound of the exact result.
    assert_close_to_reference(out, t, 2 * mag, extra_abs=2 * np.abs(b)[None, :, None, None],
                              nnz_per_row=k * k, what=f"k={k} stride={stride} pad={pad} hw={hw}")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("padding", [1, (0, 0, 1, 1)])
def test_first_conv_matches_torch(isa, stride, layout, padding):
    rng = np.random.default_rng(stride)
    x = rng.standard_normal((2, 3, 30, 31)).astype(np.float32)
    w = rng.standard_normal((32, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x
    out = fs.conv2d(xin, w, b, stride, padding, "relu", layout=layout)
    pad = (padding,) * 4 if isinstance(padding, int) else padding
    with torch.no_grad():
        t = F.relu(F.conv2d(_torch_pad(torch.from_numpy(x), pad), torch.from_numpy(w),
                            torch.from_numpy(b), stride=stride)).numpy()
    mag = dense_magnitude(x, w, stride, pad)
    assert_close_to_reference(out, t, 2 * mag, extra_abs=2 * np.abs(b)[None, :, None, None],
                              nnz_per_row=27, what=f"stride={stride} {layout} pad={pad}")


def test_pool_matches_torch(isa):
    x = np.random.default_rng(0).standard_normal((2, 40, 7, 7)).astype(np.float32)
    t = F.adaptive_avg_pool2d(torch.from_numpy(x), 1).numpy()[:, :, 0, 0]
    np.testing.assert_allclose(fs.global_avg_pool(x), t, rtol=1e-5, atol=1e-6)
