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
