"""torchvision's mobilenet_v2 structure and state-dict names in plain torch, for comparisons
(torchvision does not import beside the pinned CPU torch). Imports torch when called."""


def mobilenet_v2_module(width=1.0, num_classes=1000, state_dict=None):
    """An eval-mode torch MobileNetV2 with torchvision's key names; loads `state_dict`
    (NumPy arrays; every key must match) when given."""
    import torch
    from torch import nn

    from .models import _V2_SETTING, _make_divisible

    def cbr(cin, cout, k, stride, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                       bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hidden = cin * t
            layers = [cbr(cin, hidden, 1, 1)] if t != 1 else []
            layers += [cbr(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.use_res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            c = _make_divisible(32 * width)
            feats = [cbr(3, c, 3, 2)]
            for t, ch, n, s in _V2_SETTING:
                out = _make_divisible(ch * width)
                for i in range(n):
                    feats.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                    c = out
            last = _make_divisible(1280 * max(1.0, width))
            feats.append(cbr(c, last, 1, 1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

        def forward(self, x):
            x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    model = MobileNetV2()
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise ValueError(f"state dict does not match: missing {missing}, unexpected {unexpected}")
    return model.eval()


def mobilenet_v1_module(weights, bn_eps=1e-3):
    """An eval-mode torch module computing Keras' applications.MobileNet (classifier_activation
    =None) from Keras weights ({variable path: array}, HWIO kernels, any width): NCHW images in,
    logits out. Keras pads stride-2 convolutions bottom/right only ("same" for the first conv,
    ZeroPadding2D((0, 1), (0, 1)) + "valid" for the depthwise ones); here F.pad does it."""
    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    from ._reference_nets import V1_STRIDE2_BLOCKS, same_padding

    wt = {k.split(":")[0]: np.asarray(v, dtype=np.float32) for k, v in weights.items()}

    def conv_bn(kernel_hwio, bn, stride=1, padding=0, depthwise=False):
        # HWIO -> OIHW; a depthwise kernel (kh, kw, C, 1) -> (C, 1, kh, kw).
        k = kernel_hwio.transpose((2, 3, 0, 1) if depthwise else (3, 2, 0, 1))
        groups = k.shape[0] if depthwise else 1
        conv = nn.Conv2d(k.shape[1] * groups, k.shape[0], k.shape[2], stride, padding,
                         groups=groups, bias=False)
        norm = nn.BatchNorm2d(k.shape[0], eps=bn_eps)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(k)))
            for name, key in (("weight", "gamma"), ("bias", "beta"),
                              ("running_mean", "moving_mean"), ("running_var", "moving_variance")):
                getattr(norm, name).copy_(torch.from_numpy(wt[f"{bn}/{key}"]))
        return nn.Sequential(conv, norm, nn.ReLU6())

    class MobileNetV1(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = conv_bn(wt["conv1/kernel"], "conv1_bn", stride=2)
            layers = []
            for i in range(1, 14):
                kd = wt.get(f"conv_dw_{i}/depthwise_kernel", wt.get(f"conv_dw_{i}/kernel"))
                if i in V1_STRIDE2_BLOCKS:
                    layers += [nn.ZeroPad2d((0, 1, 0, 1)),
                               conv_bn(kd, f"conv_dw_{i}_bn", 2, 0, depthwise=True)]
                else:
                    layers.append(conv_bn(kd, f"conv_dw_{i}_bn", 1, 1, depthwise=True))
                layers.append(conv_bn(wt[f"conv_pw_{i}/kernel"], f"conv_pw_{i}_bn"))
            self.features = nn.Sequential(*layers)
            kc = wt["conv_preds/kernel"]
            self.fc = nn.Linear(kc.shape[2], kc.shape[3])
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(kc[0, 0].T)))
                self.fc.bias.copy_(torch.from_numpy(wt["conv_preds/bias"]))

        def forward(self, x):
            # TensorFlow "same" for the stride-2 first conv: any odd pixel of padding goes
            # bottom/right, and it depends on the input size.
            (t, b), (l, r) = same_padding(x.shape[2], 3, 2), same_padding(x.shape[3], 3, 2)
            x = self.features(self.conv1(F.pad(x, (l, r, t, b))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return MobileNetV1().eval()
