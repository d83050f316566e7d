"""Dense NumPy forward passes of MobileNet v2 (torchvision layout) and v1 (Keras layout) from
the *unfolded* weights: BatchNorm is applied as its own step, so that a folding bug in the
fastsparse builders cannot hide in both sides. float64 throughout. Exposed through
fastsparse.reference.mobilenet_v2 / mobilenet_v1."""
import numpy as np

TORCH_BN_EPS = 1e-5
KERAS_BN_EPS = 1e-3
# torchvision's MobileNetV2: features index of each stride-2 inverted residual block.
V2_STRIDE2_BLOCKS = (2, 4, 7, 14)
# Keras MobileNet: the stride-2 depthwise blocks.
V1_STRIDE2_BLOCKS = (2, 4, 6, 12)


def _np(a):
    if hasattr(a, "detach"):  # a torch tensor, without importing torch
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def conv2d_nchw(x, w, stride=1, padding=(0, 0, 0, 0), groups=1):
    """Direct convolution, float64: x (N, C, H, W), w (O, C // groups, kh, kw);
    padding (top, left, bottom, right)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    t, l, b, r = padding
    xp = np.zeros((n, c, h + t + b, wd + l + r))
    xp[:, :, t:t + h, l:l + wd] = x
    oh = (h + t + b - kh) // stride + 1
    ow = (wd + l + r - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    og = o // groups
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            for g in range(groups):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "oc,nchw->nohw", w[g * og:(g + 1) * og, :, i, j], patch[:, g * cg:(g + 1) * cg])
    return y


def batch_norm(x, gamma, beta, mean, var, eps):
    scale = gamma / np.sqrt(var + eps)
    return x * scale[None, :, None, None] + (beta - mean * scale)[None, :, None, None]


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def same_padding(size, k, stride):
    """TensorFlow "same": (before, after) with the extra row or column after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def mobilenet_v2(state_dict, x, bn_eps=TORCH_BN_EPS):
    """Logits (N, classes) of torchvision's mobilenet_v2 in eval mode, NCHW float input."""
    sd = {k: _np(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}

    def bn(y, p):
        return batch_norm(y, sd[p + ".weight"], sd[p + ".bias"], sd[p + ".running_mean"],
                          sd[p + ".running_var"], bn_eps)

    y = np.asarray(x, dtype=np.float64)
    y = relu6(bn(conv2d_nchw(y, sd["features.0.0.weight"], 2, (1, 1, 1, 1)), "features.0.1"))
    last = max(int(k.split(".")[1]) for k in sd if k.startswith("features."))
    for i in range(1, last):
        p = f"features.{i}.conv"
        stride = 2 if i in V2_STRIDE2_BLOCKS else 1
        inp = y
        if f"{p}.3.weight" in sd:  # expand, depthwise, project
            y = relu6(bn(conv2d_nchw(y, sd[f"{p}.0.0.weight"]), f"{p}.0.1"))
            dw, proj, proj_bn = f"{p}.1", f"{p}.2.weight", f"{p}.3"
        else:  # t = 1: depthwise, project
            dw, proj, proj_bn = f"{p}.0", f"{p}.1.weight", f"{p}.2"
        wdw = sd[dw + ".0.weight"]
        y = relu6(bn(conv2d_nchw(y, wdw, stride, (1, 1, 1, 1), groups=wdw.shape[0]), dw + ".1"))
        y = bn(conv2d_nchw(y, sd[proj]), proj_bn)
        if stride == 1 and inp.shape == y.shape:
            y = y + inp
    y = relu6(bn(conv2d_nchw(y, sd[f"features.{last}.0.weight"]), f"features.{last}.1"))
    pooled = y.mean(axis=(2, 3))
    return pooled @ sd["classifier.1.weight"].T + sd["classifier.1.bias"]


def mobilenet_v1(weights, x, bn_eps=KERAS_BN_EPS):
    """Logits (N, classes) of Keras' applications.MobileNet (classifier_activation=None),
    NCHW float input; weights keyed by Keras variable paths, HWIO kernels."""
    wt = {k.split(":")[0]: _np(v) for k, v in weights.items()}

    def bn(y, p):
        return batch_norm(y, wt[p + "/gamma"], wt[p + "/beta"], wt[p + "/moving_mean"],
                          wt[p + "/moving_variance"], bn_eps)

    y = np.asarray(x, dtype=np.float64)
    k = wt["conv1/kernel"].transpose(3, 2, 0, 1)
    (t, b), (l, r) = same_padding(y.shape[2], 3, 2), same_padding(y.shape[3], 3, 2)
    y = relu6(bn(conv2d_nchw(y, k, 2, (t, l, b, r)), "conv1_bn"))
    for i in range(1, 14):
        kd = wt.get(f"conv_dw_{i}/depthwise_kernel", wt.get(f"conv_dw_{i}/kernel"))
        kd = kd.transpose(2, 3, 0, 1)  # (3, 3, C, 1) -> (C, 1, 3, 3)
        if i in V1_STRIDE2_BLOCKS:
            y = conv2d_nchw(y, kd, 2, (0, 0, 1, 1), groups=kd.shape[0])  # ZeroPadding + valid
        else:
            y = conv2d_nchw(y, kd, 1, (1, 1, 1, 1), groups=kd.shape[0])
        y = relu6(bn(y, f"conv_dw_{i}_bn"))
        kp = wt[f"conv_pw_{i}/kernel"].transpose(3, 2, 0, 1)
        y = relu6(bn(conv2d_nchw(y, kp), f"conv_pw_{i}_bn"))
    pooled = y.mean(axis=(2, 3))
    kc = wt["conv_preds/kernel"].reshape(-1, wt["conv_preds/kernel"].shape[-1])
    return pooled @ kc + wt["conv_preds/bias"]
