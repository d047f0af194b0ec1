"""An independent reference BiT in PyTorch, written from the paper and the released bit_pytorch model.

It shares nothing with convert/bit/: weight standardization is computed inside every forward pass (as BiT's
StdConv2d does), GroupNorm is torch.nn.GroupNorm, the network is laid out from the published description, and the
npz is read by its own names. Tests compare the converter's tf_keras model (pre-standardized kernels, re-expressed
GroupNorm) against this on the same checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class StdConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardized per output filter on every call (BiT, Qiao et al. 2019)."""

    def forward(self, x):
        w = self.weight  # (O, I, kh, kw)
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-10), None, self.stride, self.padding)


class Unit(nn.Module):
    """Pre-activation bottleneck; stride on the 3x3 conv; projection fed by the pre-activated input."""

    def __init__(self, cin, mid, stride, pruned=None):
        super().__init__()
        cout = 4 * mid
        mid_a, mid_b = pruned or (mid, mid)  # a structured-pruned unit has narrower a/b convs, same output
        self.gn1, self.conv1 = nn.GroupNorm(32, cin), StdConv2d(cin, mid_a, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, mid_a)
        self.conv2 = StdConv2d(mid_a, mid_b, 3, stride=stride, padding=1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(32, mid_b), StdConv2d(mid_b, cout, 1, bias=False)
        self.proj = StdConv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        pre = F.relu(self.gn1(x))
        shortcut = self.proj(pre) if self.proj is not None else x
        y = self.conv1(pre)
        y = self.conv2(F.relu(self.gn2(y)))
        y = self.conv3(F.relu(self.gn3(y)))
        return y + shortcut


class ReferenceBiT(nn.Module):
    def __init__(self, block_units, width_factor, num_classes, base_width=64, widths=None):
        super().__init__()
        root = base_width * width_factor
        self.root = StdConv2d(3, root, 7, stride=2, padding=3, bias=False)
        self.blocks = nn.ModuleList()
        cin = root
        for b, units in enumerate(block_units):
            mid = root * 2**b
            block = nn.ModuleList()
            for u in range(units):
                pruned = widths[(b, u)] if widths else None
                block.append(Unit(cin, mid, 2 if (b > 0 and u == 0) else 1, pruned))
                cin = 4 * mid
            self.blocks.append(block)
        self.gn = nn.GroupNorm(32, cin)
        self.head = nn.Conv2d(cin, num_classes, 1, bias=True)

    def forward(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        x = x_nhwc.permute(0, 3, 1, 2)
        x = self.root(x)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1), value=0.0), 3, stride=2)  # BiT: zero pad, then VALID pool
        for block in self.blocks:
            for unit in block:
                x = unit(x)
        x = F.relu(self.gn(x)).mean(dim=(2, 3), keepdim=True)
        return self.head(x)[:, :, 0, 0]

    @torch.no_grad()
    def load_npz(self, tensors: dict[str, np.ndarray]) -> "ReferenceBiT":
        def conv(module, name):  # HWIO -> OIHW
            module.weight.copy_(torch.from_numpy(tensors[f"resnet/{name}/standardized_conv2d/kernel"])
                                .permute(3, 2, 0, 1))

        def norm(module, name):
            module.weight.copy_(torch.from_numpy(tensors[f"resnet/{name}group_norm/gamma"]))
            module.bias.copy_(torch.from_numpy(tensors[f"resnet/{name}group_norm/beta"]))

        conv(self.root, "root_block")
        for b, block in enumerate(self.blocks, start=1):
            for u, unit in enumerate(block, start=1):
                prefix = f"block{b}/unit{u:02d}"
                for part, gn, cv in (("a", unit.gn1, unit.conv1), ("b", unit.gn2, unit.conv2),
                                     ("c", unit.gn3, unit.conv3)):
                    norm(gn, f"{prefix}/{part}/")
                    conv(cv, f"{prefix}/{part}")
                if unit.proj is not None:
                    conv(unit.proj, f"{prefix}/a/proj")
        norm(self.gn, "")
        self.head.weight.copy_(torch.from_numpy(tensors["resnet/head/conv2d/kernel"]).permute(3, 2, 0, 1))
        self.head.bias.copy_(torch.from_numpy(tensors["resnet/head/conv2d/bias"]))
        return self


def reference_logits(tensors: dict[str, np.ndarray], images: np.ndarray, *, block_units, width_factor,
                     base_width=64) -> np.ndarray:
    """Logits (N, num_classes) for NHWC float images already in the checkpoint's input range."""
    num_classes = tensors["resnet/head/conv2d/bias"].shape[0]
    widths = {(b, u): tuple(tensors[f"resnet/block{b + 1}/unit{u + 1:02d}/{p}/standardized_conv2d/kernel"].shape[3]
                            for p in "ab")
              for b, units in enumerate(block_units) for u in range(units)}  # (a, b) widths as the npz has them
    model = ReferenceBiT(block_units, width_factor, num_classes, base_width, widths).load_npz(tensors).eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()
