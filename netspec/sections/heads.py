"""Detection heads: ``[yolo]`` (§3.10), ``[Gaussian_yolo]`` (§3.11), ``[region]`` (§3.12),
``[detection]`` (§3.13).  Each module returns exactly Darknet's inference buffer for the layer; the
box decoding is each module's ``decode_boxes`` (:mod:`netspec.sections.head_decode`), shared by
:mod:`netspec.detection` and the ONNX export."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..keys import Choice, Flag, Float, FloatList, Int, IntList, Text
from .base import BuildContext, Context, Inference, LayerSpec, Params, Section, SpecError, register

_T = {"training": True}

_YOLO_TRAINING_KEYS = {
    "jitter": Float(0.2, "augmentation", **_T),
    "resize": Float(1.0, "augmentation", **_T),
    "random": Float(0, "multi-scale training", **_T),
    "ignore_thresh": Float(0.5, "loss", **_T),
    "truth_thresh": Float(1.0, "loss", **_T),
    "iou_thresh": Float(1.0, "loss", **_T),
    "iou_loss": Text("mse", "loss: mse, giou, diou or ciou", **_T),
    "iou_thresh_kind": Text("iou", "loss", **_T),
    "iou_normalizer": Float(0.75, "loss", **_T),
    "obj_normalizer": Float(1.0, "loss", **_T),
    "cls_normalizer": Float(1.0, "loss", **_T),
    "delta_normalizer": Float(1.0, "loss", **_T),
    "label_smooth_eps": Float(0, "loss", **_T),
    "objectness_smooth": Flag(0, "loss", **_T),
    "focal_loss": Flag(0, "loss", **_T),
    "max_delta": Float(None, "loss", **_T),
    "counters_per_class": Text(None, "loss", **_T),
    "map": Text(None, "class map file", **_T),
    "show_details": Flag(1, "log", **_T),
    "beta_nms": Float(0.6, "NMS: DIoU exponent"),
    "track_history_size": Int(5, "tracking", **_T),
    "sim_thresh": Float(0.8, "tracking", **_T),
    "dets_for_track": Int(1, "tracking", **_T),
    "dets_for_show": Int(1, "tracking", **_T),
    "track_ciou_norm": Float(0.01, "tracking", **_T),
    "embedding_layer": Int(None, "tracking", **_T),
}


# Keys [yolo] and [Gaussian_yolo] share: the head geometry.
_YOLO_HEAD_KEYS = {
    "classes": Int(20, "number of classes", min=1),
    "num": Int(1, "number of anchors in anchors=", min=1),
    "mask": IntList(None, "which anchors this head uses"),
    "anchors": FloatList(None, "anchor w,h pairs in input pixels"),
    "max": Int(200, "max boxes per image", min=1),
    "scale_x_y": Float(1.0, "grid sensitivity", min=0),
}


class YoloBuffer(nn.Module):
    """Darknet's ``[yolo]``/``[Gaussian_yolo]`` inference buffer: logistic on some entries of each
    anchor's block and ``s*v - (s-1)/2`` on x and y.  Computed in float32 (also under autocast)."""

    def __init__(self, n_anchors: int, entries: int, logistic: tuple[int, ...], affine: tuple[int, ...],
                 scale_x_y: float, anchors: list[tuple[float, float]], classes: int, new_coords: bool,
                 net_size: tuple[int, int], kind: str, extra: dict | None = None) -> None:
        super().__init__()
        self.n_anchors = n_anchors
        self.entries = entries
        self.classes = classes
        self.scale_x_y = scale_x_y
        self.new_coords = new_coords
        self.anchors = anchors  # (w, h) in input pixels for each of this head's anchors
        self.net_size = net_size  # (width, height) the anchors are relative to
        self.kind = kind
        self.extra = extra or {}
        logistic_mask = torch.zeros(entries, dtype=torch.bool)
        logistic_mask[list(logistic)] = True
        affine_mask = torch.zeros(entries, dtype=torch.bool)
        affine_mask[list(affine)] = True
        # 3-D (entries, 1, 1), broadcast over (batch, anchors, entries, h, w): a 4-D or 5-D buffer would
        # make net.to(memory_format=torch.channels_last) fail.
        self.register_buffer("logistic_mask", logistic_mask.view(entries, 1, 1), persistent=False)
        self.register_buffer("affine_mask", affine_mask.view(entries, 1, 1), persistent=False)
        self.any_logistic = bool(logistic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        v = x.float().reshape(b, self.n_anchors, self.entries, h, w)
        if self.any_logistic:
            v = torch.where(self.logistic_mask, torch.sigmoid(v), v)
        s = self.scale_x_y
        if s != 1:
            v = torch.where(self.affine_mask, v * s - 0.5 * (s - 1), v)
        return v.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"anchors={len(self.anchors)}, classes={self.classes}, scale_x_y={self.scale_x_y}"

    decodes_boxes = True  # decode_boxes() is available (the hook detect and the ONNX export use)

    def decode_boxes(self, buf: torch.Tensor):
        """Every candidate box of this head (see :class:`netspec.sections.head_decode.HeadBoxes`)."""
        from .head_decode import decode_yolo

        return decode_yolo(self, buf)


def _anchor_pairs(p: Params, num: int, read_limit: int | None) -> list[tuple[float, float]]:
    values = list(p.anchors or ())
    if read_limit is not None:
        values = values[:read_limit]
    values += [0.5] * (2 * num - len(values))  # Darknet's default for anchors not given
    return [(values[2 * i], values[2 * i + 1]) for i in range(num)]


def _yolo_check(p: Params, ctx: Context) -> None:
    if p.mask is None:
        p.mask = tuple(range(p.num))
    n_values = len(p.anchors or ())
    p.anchor_limit = 2 * p.num
    for i, m in enumerate(p.mask):
        if m < 0 or (m >= p.num and not ctx.lenient):
            raise SpecError(f"mask={m} is not an anchor index (num={p.num} anchors: 0..{p.num - 1})", "mask", i)
        if m >= p.num:
            # Darknet reads past its num*2 anchor array here; the values the cfg wrote are the intent.
            ctx.warn(f"mask={m} is beyond num={p.num}; using anchor pair {m} of the anchors list", "mask")
            p.anchor_limit = max(p.anchor_limit, 2 * (m + 1))
            if n_values < 2 * (m + 1):
                raise SpecError(f"mask={m} needs at least {2 * (m + 1)} anchor values, anchors has {n_values}",
                                "mask", i)
    if p.anchors is not None and n_values < 2 * p.num:
        ctx.warn(f"anchors has {n_values} values but num={p.num} needs {2 * p.num}; the missing ones are 0.5 as in "
                 "Darknet", "anchors")
    elif n_values > 2 * p.num:
        ctx.warn(f"anchors has {n_values} values; only the first {2 * p.num} (num={p.num}) are used", "anchors")


class _YoloBase(Section):
    is_head = True
    entries_base = 5

    def check(self, p: Params, ctx: Context) -> None:
        _yolo_check(p, ctx)

    def anchors(self, spec: LayerSpec, module: YoloBuffer) -> list[tuple[float, float]]:
        return list(module.anchors)

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        need = len(p.mask) * (p.classes + self.entries_base)
        if c != need:
            raise SpecError(f"the previous layer has {c} channels but [{self.name}] with {len(p.mask)} anchors and "
                            f"classes={p.classes} needs {need}: set filters={need} in the layer before it", "classes")
        return Inference((c, h, w))


@register
class Yolo(_YoloBase):
    name = "yolo"
    keys = {
        **_YOLO_HEAD_KEYS,
        "new_coords": Flag(0, "YOLOv4-csp/v7 box encoding"),
        "nms_kind": Choice("default", "NMS used after the last head",
                           choices=("default", "greedynms", "diounms")),
        **_YOLO_TRAINING_KEYS,
    }

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        anchors = _anchor_pairs(p, p.anchor_limit // 2, p.anchor_limit)
        logistic = () if p.new_coords else (0, 1, *range(4, 5 + p.classes))
        return YoloBuffer(len(p.mask), 5 + p.classes, logistic, (0, 1), p.scale_x_y,
                          [anchors[m] for m in p.mask], p.classes, bool(p.new_coords),
                          (ctx.net.width, ctx.net.height), "yolo", {"nms_kind": p.nms_kind, "beta_nms": p.beta_nms})

    def loss(self, spec: LayerSpec, net_params: Params):
        """Darknet's training deltas for this layer (``netspec/sections/yolo_loss.py``)."""
        from .yolo_loss import YoloLoss

        return YoloLoss(spec, net_params, gaussian=False)


@register
class GaussianYolo(_YoloBase):
    name = "Gaussian_yolo"
    entries_base = 9
    keys = {
        **_YOLO_HEAD_KEYS,
        "uc_normalizer": Float(1.0, "loss", **_T),
        "yolo_point": Choice("center", "box reference point", choices=("center", "left_top", "right_bottom")),
        "nms_kind": Choice("default", "NMS used after the last head",
                           choices=("default", "greedynms", "diounms", "cornersnms")),
        **_YOLO_TRAINING_KEYS,
    }

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        # Darknet reads every anchor given here (no 2*num bound)
        anchors = _anchor_pairs(p, max(p.anchor_limit, len(p.anchors or ())) // 2, None)
        logistic = (0, 1, 2, 3, 5, 7, *range(8, 9 + p.classes))
        return YoloBuffer(len(p.mask), 9 + p.classes, logistic, (0, 2), p.scale_x_y,
                          [anchors[m] for m in p.mask], p.classes, False, (ctx.net.width, ctx.net.height),
                          "Gaussian_yolo", {"nms_kind": p.nms_kind, "beta_nms": p.beta_nms,
                                            "yolo_point": p.yolo_point})

    def loss(self, spec: LayerSpec, net_params: Params):
        """Gaussian YOLOv3's training deltas (``netspec/sections/yolo_loss.py``)."""
        from .yolo_loss import YoloLoss

        return YoloLoss(spec, net_params, gaussian=True)


def read_tree(path: str) -> list[tuple[int, int]]:
    """Groups ``(offset, size)`` of a Darknet hierarchy file (``name parent`` per line): a new group
    starts wherever the parent changes."""
    groups: list[tuple[int, int]] = []
    last_parent = None
    with open(path, encoding="utf-8") as fh:
        if not os.path.isfile(path):  # tree=/dev/zero would be read forever
            raise ValueError(f"{path} is not a regular file")
        for i, line in enumerate(fh):
            fields = line.split()
            if not fields:
                continue
            parent = int(fields[1]) if len(fields) > 1 else -1
            if parent != last_parent or not groups:
                groups.append((i, 0))
                last_parent = parent
            offset, size = groups[-1]
            groups[-1] = (offset, size + 1)
    return groups


def _tree_candidates(spec: LayerSpec) -> list[str]:
    """Where the ``tree=`` file is looked for: the working directory, then beside the cfg."""
    name = spec.p.tree
    candidates = [name]
    if spec.path and not os.path.isabs(name):
        candidates.append(os.path.join(os.path.dirname(spec.path), name))
    return candidates


def read_tree_parents(path: str) -> list[int]:
    """The parent of each class of a Darknet hierarchy file (-1 for a root), in file order."""
    if not os.path.isfile(path):  # as read_tree: a device would be read forever
        raise ValueError(f"{path} is not a regular file")
    parents = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if fields:
                parents.append(int(fields[1]) if len(fields) > 1 else -1)
    return parents


def load_tree(spec: LayerSpec, ctx: BuildContext) -> list[tuple[int, int]] | None:
    """The groups of the ``tree=`` file, looked up from the working directory and then beside the cfg.

    A missing file is a warning, and the layer falls back to one softmax over all classes."""
    name = spec.p.tree
    if name is None:
        return None
    candidates = _tree_candidates(spec)
    c, h, w = spec.in_shape
    expected = spec.p.classes if spec.type == "region" else c * h * w
    for candidate in candidates:
        try:
            groups = read_tree(candidate)
        except (OSError, ValueError, IndexError):
            continue
        covered = sum(size for _, size in groups)
        if covered == expected:
            return groups
        ctx.warnings.append(spec.problem(f"tree file {name!r} lists {covered} classes but the layer has {expected}: "
                                         "using one softmax over all classes", "tree", "warning"))
        return None
    ctx.warnings.append(spec.problem(f"tree file {name!r} not found or unreadable: using one softmax over all "
                                     "classes instead of Darknet's hierarchical softmax", "tree", "warning"))
    return None


def group_softmax(x: torch.Tensor, groups: list[tuple[int, int]], temperature: float = 1.0) -> torch.Tensor:
    """Softmax over each contiguous ``(offset, size)`` range of the last dimension."""
    if temperature != 1:
        x = x / temperature
    parts = [torch.softmax(x[..., o:o + n], dim=-1) for o, n in groups]
    return torch.cat(parts, dim=-1)


class RegionBuffer(nn.Module):
    """Darknet's ``[region]`` CPU buffer: transposed to ``(H, W, num, coords+1+classes)`` per sample,
    logistic on entry ``coords`` (objectness), softmax over the classes when ``softmax=1``."""

    def __init__(self, num: int, coords: int, classes: int, softmax: bool, anchors: list[tuple[float, float]],
                 tree: list[tuple[int, int]] | None, net_size: tuple[int, int]) -> None:
        super().__init__()
        self.num = num
        self.coords = coords
        self.classes = classes
        self.softmax = softmax
        self.anchors = anchors  # (w, h) in grid cells
        self.tree = tree
        self.net_size = net_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        e = self.coords + 1 + self.classes
        v = x.float().reshape(b, self.num, e, h, w).permute(0, 3, 4, 1, 2)
        # Darknet hard-codes objectness at entry 4 and classes from entry 5 (it assumes coords=4).
        parts = [v[..., :4], torch.sigmoid(v[..., 4:5])]
        cls = v[..., 5:]
        if self.tree is not None:
            cls = group_softmax(cls, self.tree)
        elif self.softmax:
            cls = torch.softmax(cls, dim=-1)
        return torch.cat(parts + [cls], dim=-1).contiguous()

    tree_parents: list[int] | None = None  # with tree=: each class's parent (Darknet's hierarchy)

    @property
    def decodes_boxes(self) -> bool:
        """A hierarchical (tree=) head decodes when its hierarchy was read."""
        return self.tree is None or self.tree_parents is not None

    def decode_boxes(self, buf: torch.Tensor):
        """Every candidate box of this head (see :class:`netspec.sections.head_decode.HeadBoxes`)."""
        from .head_decode import decode_region

        return decode_region(self, buf)


@register
class Region(Section):
    name = "region"
    is_head = True
    keys = {
        "coords": Int(4, "box coordinates per anchor", min=4, max=4),
        "classes": Int(20, "number of classes", min=1),
        "num": Int(1, "anchors", min=1),
        "anchors": FloatList(None, "anchor w,h pairs in grid cells"),
        "softmax": Flag(0, "softmax over the classes"),
        "max": Int(200, "max boxes per image", min=1),
        "tree": Text(None, "class hierarchy file for tree softmax"),
        "map": Text(None, "class map file", **_T),
        **{k: Float(d, "training", **_T) for k, d in {
            "log": 0, "sqrt": 0, "focal_loss": 0, "jitter": 0.2, "resize": 1, "rescore": 0, "thresh": 0.5,
            "classfix": 0, "absolute": 0, "random": 0, "coord_scale": 1, "object_scale": 1,
            "noobject_scale": 1, "mask_scale": 1, "class_scale": 1, "bias_match": 0}.items()},
    }

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        need = p.num * (p.classes + p.coords + 1)
        if c != need:
            raise SpecError(f"the previous layer has {c} channels but [region] with num={p.num} and "
                            f"classes={p.classes} needs {need}: set filters={need} in the layer before it", "classes")
        return Inference((c, h, w))

    def tensor_shape(self, spec: LayerSpec) -> tuple[int, ...]:
        p = spec.p
        _, h, w = spec.out_shape
        return (h, w, p.num, p.coords + 1 + p.classes)

    def loss(self, spec: LayerSpec, net_params: Params):
        """YOLOv2's training deltas (``netspec/sections/region_loss.py``)."""
        from .region_loss import RegionLoss

        return RegionLoss(spec, net_params)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        tree = load_tree(spec, ctx)
        module = RegionBuffer(p.num, p.coords, p.classes, bool(p.softmax), _anchor_pairs(p, p.num, 2 * p.num), tree,
                              (ctx.net.width, ctx.net.height))
        if tree is not None:  # the box decoding needs the hierarchy itself (hierarchy_predictions)
            for candidate in _tree_candidates(spec):
                try:
                    module.tree_parents = read_tree_parents(candidate)
                    break
                except (OSError, ValueError, IndexError):
                    continue
        return module


class DetectionBuffer(nn.Module):
    """YOLOv1's ``[detection]``: a copy of the flat input, class scores soft-maxed per cell if asked."""

    def __init__(self, side: int, classes: int, num: int, coords: int, softmax: bool, sqrt: bool) -> None:
        super().__init__()
        self.side = side
        self.classes = classes
        self.num = num
        self.coords = coords
        self.softmax = softmax
        self.sqrt = sqrt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.softmax:
            return x
        b = x.shape[0]
        flat = x.float().reshape(b, -1)
        n_cls = self.side * self.side * self.classes
        cls = torch.softmax(flat[:, :n_cls].reshape(b, self.side * self.side, self.classes), dim=-1)
        return torch.cat([cls.reshape(b, -1), flat[:, n_cls:]], 1).reshape(x.shape)

    decodes_boxes = True

    def decode_boxes(self, buf: torch.Tensor):
        """Every candidate box of this head (see :class:`netspec.sections.head_decode.HeadBoxes`)."""
        from .head_decode import decode_detection

        return decode_detection(self, buf)


@register
class Detection(Section):
    name = "detection"
    needs_image = False
    is_head = True
    keys = {
        "coords": Int(1, "box coordinates per box", min=1),
        "classes": Int(1, "number of classes", min=1),
        "num": Int(1, "boxes per cell", min=1),
        "side": Int(7, "grid size", min=1),
        "softmax": Flag(0, "softmax over the classes per cell"),
        "sqrt": Flag(0, "w,h are square roots"),
        "rescore": Flag(0, "training", **_T),
        "jitter": Float(0.2, "training", **_T),
        "random": Float(0, "training", **_T),
        "reorg": Flag(0, "training", **_T),
        "forced": Flag(0, "training", **_T),
        "object_scale": Float(1, "training", **_T),
        "noobject_scale": Float(1, "training", **_T),
        "class_scale": Float(1, "training", **_T),
        "coord_scale": Float(1, "training", **_T),
    }

    def loss(self, spec: LayerSpec, net_params: Params):
        """YOLOv1's training deltas (``netspec/sections/detection_loss.py``)."""
        from .detection_loss import YoloV1Loss

        return YoloV1Loss(spec, net_params)

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        need = p.side * p.side * ((1 + p.coords) * p.num + p.classes)
        if c * h * w != need:
            raise SpecError(f"the previous layer outputs {c * h * w} values but side={p.side}, num={p.num}, "
                            f"coords={p.coords}, classes={p.classes} need {need}", "side")
        return Inference((c, h, w), darknet_out=(0, 0, 0))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        return DetectionBuffer(p.side, p.classes, p.num, p.coords, bool(p.softmax), bool(p.sqrt))
