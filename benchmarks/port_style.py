"""The comparison baseline: a minimal PyTorch rendering of a cfg in the style of the popular Darknet ports.

Every ``[convolutional]`` is an ``nn.Sequential`` of Conv2d, BatchNorm2d and an activation module,
every layer's output is appended to a list that lives for the whole forward pass, nothing is fused.
Written generically from netspec's own layer specs (so it is the same network) for the sections of
yolov3, yolov4 and their tiny versions; the weights are copied from a netspec network so that the
two can be checked against each other.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _Route(nn.Module):
    def __init__(self, layers, groups: int, group_id: int) -> None:
        super().__init__()
        self.layers, self.groups, self.group_id = layers, groups, group_id


class _Shortcut(nn.Module):
    def __init__(self, source: int) -> None:
        super().__init__()
        self.source = source


class _Yolo(nn.Module):
    """The head as ports run it at inference: logistic on x, y, objectness and classes, grid-sensitivity
    scaling of x, y."""

    def __init__(self, anchors: int, classes: int, scale_x_y: float) -> None:
        super().__init__()
        self.anchors, self.classes, self.scale = anchors, classes, scale_x_y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = x.float().view(b, self.anchors, self.classes + 5, h, w).permute(0, 1, 3, 4, 2).contiguous()
        xy = torch.sigmoid(p[..., 0:2]) * self.scale - 0.5 * (self.scale - 1)
        return torch.cat([xy, p[..., 2:4], torch.sigmoid(p[..., 4:])], -1)


_ACTIVATIONS = {"leaky": lambda: nn.LeakyReLU(0.1), "mish": nn.Mish, "swish": nn.SiLU, "relu": nn.ReLU,
                "logistic": nn.Sigmoid, "linear": nn.Identity}


class PortStyleNet(nn.Module):
    def __init__(self, spec) -> None:
        super().__init__()
        modules = []
        for layer in spec.layers:
            p = layer.p
            if layer.type == "convolutional":
                seq = nn.Sequential()
                seq.add_module("conv", nn.Conv2d(layer.in_shape[0], p.filters, p.size, (p.sy, p.sx), p.pad_px,
                                                 bias=not p.batch_normalize))
                if p.batch_normalize:
                    seq.add_module("batch_norm", nn.BatchNorm2d(p.filters, eps=1e-5))
                seq.add_module("activation", _ACTIVATIONS[p.activation]())
                modules.append(seq)
            elif layer.type == "maxpool":
                if p.k == 2 and p.sx == 1:
                    modules.append(nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1)))
                else:
                    modules.append(nn.MaxPool2d(p.k, p.sx, (p.k - 1) // 2))
            elif layer.type == "upsample":
                modules.append(nn.Upsample(scale_factor=p.stride, mode="nearest"))
            elif layer.type == "route":
                modules.append(_Route(layer.sources, p.groups, p.group_id))
            elif layer.type == "shortcut":
                modules.append(_Shortcut(layer.sources[1]))
            elif layer.type == "yolo":
                modules.append(_Yolo(len(p.mask), p.classes, p.scale_x_y))
            else:
                raise NotImplementedError(f"port-style baseline: no [{layer.type}]")
        self.module_list = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        layer_outputs: list[torch.Tensor] = []
        yolo_outputs = []
        for module in self.module_list:
            if isinstance(module, _Route):
                parts = [layer_outputs[i] for i in module.layers]
                if module.groups > 1:
                    parts = [t.chunk(module.groups, 1)[module.group_id] for t in parts]
                x = torch.cat(parts, 1)
            elif isinstance(module, _Shortcut):
                x = layer_outputs[-1] + layer_outputs[module.source]
            elif isinstance(module, _Yolo):
                x = module(x)
                yolo_outputs.append(x)
            else:
                x = module(x)
            layer_outputs.append(x)
        return yolo_outputs


def port_style_from(net) -> PortStyleNet:
    """The baseline for a built netspec network, with its weights (and BN statistics) copied."""
    base = PortStyleNet(net.spec)
    with torch.no_grad():
        for ours, theirs in zip(net.layers, base.module_list):
            if isinstance(theirs, nn.Sequential) and hasattr(theirs, "conv"):
                theirs.conv.weight.copy_(ours.conv.weight)
                if ours.conv.bias is not None:
                    theirs.conv.bias.copy_(ours.conv.bias)
                if ours.bn is not None:
                    theirs.batch_norm.load_state_dict(ours.bn.state_dict())
    return base.eval()


def same_outputs(net_out: list[torch.Tensor], base_out: list[torch.Tensor]) -> float:
    """Largest difference between netspec's head buffers and the baseline's (layouts differ)."""
    worst = 0.0
    for ours, theirs in zip(net_out, base_out):
        b, c, h, w = ours.shape
        ours = ours.float().view(b, theirs.shape[1], -1, h, w).permute(0, 1, 3, 4, 2)
        worst = max(worst, float((ours - theirs).abs().max()))
    return worst
