"""DetectionLoss: Darknet's l.delta as the gradient (checked on Darknet-made vectors), targets, keys, end to end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import netspec
from netspec.errors import CfgError, NetspecError
from netspec.loss import DetectionLoss, TargetError, format_stats, targets_from_darknet_truth

from .conftest import CFGS, DARKNET_CFGS, SHARED, need_shared

SHARED_VECTORS = SHARED / "loss-vectors"
# NETSPEC_LOSS_VECTORS points the Darknet-delta test at another folder of Darknet-made vectors (same layout)
VECTORS = Path(os.environ.get("NETSPEC_LOSS_VECTORS", SHARED_VECTORS))
VECTOR_NAMES = sorted(p.name for p in VECTORS.iterdir() if (p / "manifest.json").exists()) if VECTORS.exists() else []


def _f32(path, shape):
    import numpy as np

    return torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(shape).copy())


def _load_vector(name, vectors=VECTORS):
    folder = need_shared(vectors / name)
    manifest = json.loads((folder / "manifest.json").read_text())
    b = manifest["batch"]
    truth = _f32(folder / "truth.f32", (b, manifest["max_boxes"], manifest["truth_size"]))
    heads = []
    for h in manifest["heads"]:
        shape = (b, h["c"], h["h"], h["w"])
        heads.append((h, _f32(folder / f"head_{h['index']:03d}_input.f32", shape),
                      _f32(folder / f"head_{h['index']:03d}_delta.f32", shape)))
    return folder, manifest, truth, heads


@pytest.mark.parametrize("name", VECTOR_NAMES or ["(no vectors)"])
def test_gradient_is_darknets_delta(name):
    if not VECTOR_NAMES:
        pytest.skip(f"{VECTORS} is not present")
    folder, manifest, truth, heads = _load_vector(name)
    net = netspec.build(str(folder / "model.cfg"))
    loss_fn = DetectionLoss(net, layers=[h["index"] for h, _, _ in heads])
    inputs = [x.clone().requires_grad_() for _, x, _ in heads]
    loss, stats = loss_fn(inputs, targets_from_darknet_truth(truth))
    loss.backward()
    b = manifest["batch"]
    for (h, _, delta), x, figures in zip(heads, inputs, stats["heads"]):
        err = (b * x.grad + delta).abs()
        used = err / (1e-3 * delta.abs() + 1e-5)  # the share of the tolerance each element uses
        worst = int(used.flatten().argmax())
        where = tuple(int(v) for v in torch.unravel_index(torch.tensor(worst), delta.shape))
        print(f"{name} [{h['type']}] #{h['index']}: worst element {where}: darknet delta {delta[where]:.6g}, "
              f"-batch*grad {-b * x.grad[where]:.6g} (|diff| {err[where]:.3g}, {used[where]:.3g} of the tolerance)")
        assert (used <= 1).all(), f"{int((used > 1).sum())} elements differ from Darknet's delta"
        assert figures["cost"] == pytest.approx(h["cost"], rel=1e-4, abs=1e-3)
    costs = [f["cost"] for f in stats["heads"]]
    assert stats["loss"] == pytest.approx(sum(costs) / len(costs) / b, rel=1e-5)
    assert loss.item() == pytest.approx(stats["loss"], rel=1e-6)


def test_printed_figures_match_darknets_log():
    _, _, truth, heads = _load_vector("kitchen-sink", SHARED_VECTORS)
    net = netspec.build(str(SHARED_VECTORS / "kitchen-sink" / "model.cfg"))
    loss_fn = DetectionLoss(net, layers=[h["index"] for h, _, _ in heads])
    _, stats = loss_fn([x for _, x, _ in heads], targets_from_darknet_truth(truth))
    # the last lines of darknet_log.txt for layers 58 and 64
    yolo, gauss = stats["heads"][0], stats["heads"][2]
    assert yolo["avg_iou"] == pytest.approx(0.407719, abs=1e-5) and yolo["count"] == 12
    assert yolo["class_loss"] == pytest.approx(50.449501, rel=1e-5)
    assert yolo["iou_loss"] == pytest.approx(10.435535, rel=1e-4)
    assert yolo["total_loss"] == pytest.approx(60.885036, rel=1e-5)
    assert gauss["avg_iou"] == pytest.approx(0.040089, abs=1e-5) and gauss["count"] == 12
    assert (gauss["class_loss"], gauss["iou_loss"], gauss["uc_loss"], gauss["total_loss"]) == pytest.approx(
        (59.51, 36.32, 4751.49, 4847.32), abs=0.01)
    assert "Avg (IOU: 0.407719)" in format_stats(stats)


# ---------------------------------------------------------------------------------------------- small nets
def _yolo_cfg(extra: str = "", net_extra: str = "", classes: int = 2, size: int = 32) -> str:
    return (f"[net]\nwidth={size}\nheight={size}\nchannels=3\n{net_extra}\n"
            f"[convolutional]\nfilters={3 * (5 + classes)}\nsize=1\nstride=8\nactivation=linear\n"
            f"[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 16,16\nnum=3\nclasses={classes}\n{extra}\n")


def _targets(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_targets_from_darknet_truth_stops_at_the_first_empty_row():
    truth = torch.zeros(2, 4, 6)
    truth[0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.3, 1, 7])
    truth[0, 2] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0, 0])  # after an empty row: Darknet never reads it
    truth[1, 0] = torch.tensor([0.25, 0.75, 0.1, 0.2, 0, 0])
    t = targets_from_darknet_truth(truth)
    torch.testing.assert_close(t, _targets([0, 1, 0.5, 0.5, 0.2, 0.3], [1, 0, 0.25, 0.75, 0.1, 0.2]))


@pytest.mark.parametrize("row, why", [
    ([0, 5, 0.5, 0.5, 0.2, 0.2], "class id"),
    ([0, -1, 0.5, 0.5, 0.2, 0.2], "class id"),
    ([0, 0.5, 0.5, 0.5, 0.2, 0.2], "class id"),
    ([0, 1, 1.5, 0.5, 0.2, 0.2], "centre"),
    ([0, 1, 0.5, -0.1, 0.2, 0.2], "centre"),
    ([0, 1, 0.5, 0.5, 0.0, 0.2], "width or height"),
    ([0, 1, float("nan"), 0.5, 0.2, 0.2], "NaN"),
    ([0, 1, 0.5, 0.5, float("inf"), 0.2], "NaN or Inf"),
    ([2, 1, 0.5, 0.5, 0.2, 0.2], "image index"),
])
def test_bad_targets_name_the_row(row, why, capsys):
    net = netspec.build(_yolo_cfg()).train()
    heads = net(torch.rand(2, 3, 32, 32))
    good = [1, 0, 0.3, 0.3, 0.2, 0.2]
    with pytest.raises(TargetError, match=f"row 1 .*{why}") as info:
        DetectionLoss(net)(heads, _targets(good, row))
    assert isinstance(info.value, NetspecError) and isinstance(info.value, ValueError)
    loss, stats = DetectionLoss(net, strict=False)(heads, _targets(good, row))
    assert "row 1" in capsys.readouterr().err
    reference, _ = DetectionLoss(net)(heads, _targets(good))
    assert loss.item() == pytest.approx(reference.item())


def test_targets_of_the_wrong_shape():
    net = netspec.build(_yolo_cfg()).train()
    heads = net(torch.rand(1, 3, 32, 32))
    with pytest.raises(TargetError, match=r"\(M, 6\)"):
        DetectionLoss(net)(heads, torch.zeros(3, 5))


def test_no_targets_trains_objectness_down():
    net = netspec.build(_yolo_cfg()).train()
    heads = net(torch.rand(2, 3, 32, 32))
    loss, stats = DetectionLoss(net)(heads, torch.zeros(0, 6))
    loss.backward()
    assert stats["count"] == 0 and math.isfinite(stats["loss"]) and stats["loss"] > 0


@pytest.mark.parametrize("extra, key", [
    ("iou_loss=cioU", "iou_loss"),
    ("iou_thresh_kind=fiou", "iou_thresh_kind"),
    ("counters_per_class=10,20,30", "counters_per_class"),
    ("map=does-not-exist.map", "map"),
])
def test_keys_the_loss_cannot_honour_are_errors_at_their_line(extra, key):
    cfg = _yolo_cfg(extra)
    line = cfg.splitlines().index(extra) + 1
    net = netspec.build(cfg)
    with pytest.raises(CfgError, match=key) as info:
        DetectionLoss(net)
    assert info.value.line == line


def test_rolling_net_keys_are_refused():
    net = netspec.build(_yolo_cfg(net_extra="equidistant_point=1000"))
    with pytest.raises(CfgError, match="equidistant_point") as info:
        DetectionLoss(net)
    assert info.value.line == 5


def test_counters_per_class_scales_the_assigned_cell():
    x = torch.randn(1, 21, 4, 4)
    t = _targets([0, 1, 0.4, 0.4, 0.3, 0.3])
    plain = DetectionLoss(netspec.build(_yolo_cfg()))
    weighted = DetectionLoss(netspec.build(_yolo_cfg("counters_per_class=100,25")))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain([xa], t)[0].backward()
    weighted([xb], t)[0].backward()
    # the truth (class 1, multiplier 100/25 = 4) goes to anchor 1 (8x8 px, IoU 0.69) at cell (1, 1)
    obj = 1 * 7 + 4
    assert xb.grad[0, obj, 1, 1] == pytest.approx(4 * float(xa.grad[0, obj, 1, 1]), rel=1e-5)
    box = [1 * 7 + k for k in range(4)]
    torch.testing.assert_close(xb.grad[0, box, 1, 1], 4 * xa.grad[0, box, 1, 1])


def test_map_file_maps_truth_classes(tmp_path):
    (tmp_path / "swap.map").write_text("1\n0\n")
    cfg = tmp_path / "net.cfg"
    cfg.write_text(_yolo_cfg("map=swap.map"))
    x = torch.randn(1, 21, 4, 4)
    mapped = DetectionLoss(netspec.build(str(cfg)))
    plain = DetectionLoss(netspec.build(_yolo_cfg()))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    mapped([xa], _targets([0, 0, 0.4, 0.4, 0.3, 0.3]))[0].backward()
    plain([xb], _targets([0, 1, 0.4, 0.4, 0.3, 0.3]))[0].backward()
    torch.testing.assert_close(xa.grad, xb.grad)


def test_delta_normalizer_scales_the_gradient_as_darknets_gpu_backward():
    x = torch.randn(2, 21, 4, 4)
    t = _targets([0, 1, 0.4, 0.4, 0.3, 0.3])
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    DetectionLoss(netspec.build(_yolo_cfg()))([xa], t)[0].backward()
    DetectionLoss(netspec.build(_yolo_cfg("delta_normalizer=0.5")))([xb], t)[0].backward()
    torch.testing.assert_close(xb.grad, 0.5 * xa.grad)


def test_autocast_loss_is_float32_and_grads_match_the_input_dtype():
    net = netspec.build(_yolo_cfg()).train()
    x = torch.rand(2, 3, 32, 32)
    t = _targets([0, 1, 0.4, 0.4, 0.3, 0.3], [1, 0, 0.7, 0.2, 0.2, 0.5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        heads = net(x)
        loss, _ = DetectionLoss(net)(heads, t)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_multi_scale_input_uses_the_resized_network_size():
    net = netspec.build(_yolo_cfg()).train()
    loss_fn = DetectionLoss(net)
    t = _targets([0, 1, 0.4, 0.4, 0.3, 0.3])
    x = torch.randn(1, 21, 8, 8)  # a 64x64 input: the anchors stay in pixels of the resized network
    bigger = DetectionLoss(netspec.build(_yolo_cfg(size=64)))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss_fn([xa], t)[0].backward()
    bigger([xb], t)[0].backward()
    torch.testing.assert_close(xa.grad, xb.grad)


# ---------------------------------------------------------------------------------------------- end to end
def _train_step(cfg, size, strict=True, net=None):
    net = net if net is not None else netspec.build(str(cfg), width=size, height=size, strict=strict)
    net.train()
    c = net.input_shape[0]
    steps = int(getattr(net.spec.net, "time_steps", 1) or 1)  # recurrent nets read the batch as time steps
    x = torch.rand(2 * steps, c, size, size)
    loss_fn = DetectionLoss(net)
    classes = loss_fn.class_limit
    t = _targets([0, 0, 0.5, 0.5, 0.4, 0.3], [0, classes - 1, 0.2, 0.7, 0.1, 0.2], [1, 0, 0.8, 0.3, 0.3, 0.6])
    loss, stats = loss_fn(net(x), t)
    loss.backward()
    assert math.isfinite(loss.item())
    # the layers a head's gradient reaches (not dead branches, not behind stopbackward/onlyforward)
    reached, todo = set(), list(net.outputs)
    while todo:
        i = todo.pop()
        if i < 0 or i in reached:
            continue
        reached.add(i)
        layer = net.spec.layers[i]
        if not (layer.p.onlyforward or layer.p.stopbackward == 1) or i in net.outputs:
            todo.extend(layer.sources)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad and int(n.split(".")[1]) in reached]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    return stats


def test_end_to_end_yolov3_tiny():
    _train_step(CFGS / "yolov3-tiny.cfg", 64)


def test_end_to_end_every_head_kind(tmp_path):
    # the conformance cfg with [yolo], new_coords [yolo], [Gaussian_yolo] and [region] heads
    stats = _train_step(need_shared(SHARED_VECTORS / "kitchen-sink") / "model.cfg", 64)
    assert [h["type"] for h in stats["heads"]] == ["yolo", "yolo", "Gaussian_yolo", "region"]
    cfg = tmp_path / "v1.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=4\nsize=3\nstride=2\n"
                   "pad=1\nbatch_normalize=1\nactivation=leaky\n[connected]\noutput=117\nactivation=linear\n"
                   "[detection]\nside=3\nnum=2\nclasses=3\ncoords=4\nsqrt=1\nrescore=1\n")
    _train_step(cfg, 32)


def _official_detectors():
    if not DARKNET_CFGS.exists():
        return []
    names = []
    for path in sorted(DARKNET_CFGS.rglob("*.cfg")):
        text = path.read_text(errors="replace")
        if any(f"[{h}]" in text for h in ("yolo", "Gaussian_yolo", "region", "detection")):
            names.append(str(path.relative_to(DARKNET_CFGS)))
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", _official_detectors() or ["(none)"])
def test_end_to_end_official_detectors(name):
    path = need_shared(DARKNET_CFGS / name) if name != "(none)" else need_shared(DARKNET_CFGS / "missing")
    strict = True
    try:
        netspec.build_spec(str(path), width=128, height=128)
    except NetspecError as exc:
        if "--lenient" not in str(exc):  # a cfg netspec cannot build at all (e.g. recurrent sections)
            pytest.skip(f"does not build: {str(exc).splitlines()[0]}")
        strict = False  # Darknet accepts it: train it as Darknet would
    net = netspec.build(str(path), width=128, height=128, strict=strict)
    try:
        DetectionLoss(net)
    except CfgError as exc:
        if "not found" not in str(exc):  # a file the cfg names (tree=, map=) that ../shared does not hold
            raise
        pytest.skip(str(exc).splitlines()[0])
    _train_step(path, 128, net=net)


# ---------------------------------------------------------------------------------------------- [region], [detection]
# Plain loop re-computations of Darknet's forward_region_layer / forward_detection_layer (one cell, anchor and truth
# at a time, in Darknet's order), against which the vectorized losses are checked.
def _sig(v):
    return 1 / (1 + math.exp(-v))


def _iou(a, b):
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)
    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0 if w < 0 or h < 0 else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return 0 if inter == 0 or union == 0 else inter / union


def _region_reference(x, truths, p, seen):
    b_, _, hh, ww = x.shape
    n, classes = p["num"], p["classes"]
    e = 5 + classes
    raw = x.double().reshape(b_, n, e, hh, ww).permute(0, 3, 4, 1, 2).tolist()  # [b][j][i][a][entry]
    out = [[[[list(v) for v in cell] for cell in row] for row in img] for img in raw]
    for img in out:
        for row in img:
            for cell in row:
                for v in cell:
                    v[4] = _sig(v[4])
                    if p.get("parents"):
                        for g in set(p["groups"]):
                            idx = [k for k in range(classes) if p["groups"][k] == g]
                            ex = [math.exp(v[5 + k]) for k in idx]
                            for k, u in zip(idx, ex):
                                v[5 + k] = u / sum(ex)
                    elif p.get("softmax"):
                        m = max(v[5:])
                        ex = [math.exp(c - m) for c in v[5:]]
                        v[5:] = [c / sum(ex) for c in ex]
    delta = [[[[[0.0] * e for _ in range(n)] for _ in range(ww)] for _ in range(hh)] for _ in range(b_)]
    bias = p["anchors"]

    def box(b, j, i, a):
        v = out[b][j][i][a]
        return ((i + _sig(v[0])) / ww, (j + _sig(v[1])) / hh, math.exp(v[2]) * bias[a][0] / ww,
                math.exp(v[3]) * bias[a][1] / hh)

    def delta_box(t, b, j, i, a, scale):
        v, d = out[b][j][i][a], delta[b][j][i][a]
        sx, sy = _sig(v[0]), _sig(v[1])
        d[0] = scale * (t[0] * ww - i - sx) * sx * (1 - sx)
        d[1] = scale * (t[1] * hh - j - sy) * sy * (1 - sy)
        d[2] = scale * (math.log(t[2] * ww / bias[a][0]) - v[2])
        d[3] = scale * (math.log(t[3] * hh / bias[a][1]) - v[3])
        return _iou(box(b, j, i, a), t)

    def delta_class(b, j, i, a, c, scale):
        v, d = out[b][j][i][a], delta[b][j][i][a]
        if p.get("parents"):  # hierarchical: every group on the path to the root
            parents, group = p["parents"], p["groups"]
            while c >= 0:
                for k in range(classes):
                    if group[k] == group[c]:
                        d[5 + k] = scale * (0 - v[5 + k])
                d[5 + c] = scale * (1 - v[5 + c])
                c = parents[c]
            return
        focal = 1
        if p.get("focal_loss"):
            pt = v[5 + c] + 1e-15
            focal = 0.5 * -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
        for k in range(classes):
            d[5 + k] = scale * ((1 if k == c else 0) - v[5 + k]) * focal

    for b in range(b_):
        for j in range(hh):
            for i in range(ww):
                for a in range(n):
                    best, best_c = 0, -1
                    for t in truths[b]:
                        iou = _iou(box(b, j, i, a), t)
                        if iou > best:
                            best, best_c = iou, t[4]
                    o = out[b][j][i][a][4]
                    d = delta[b][j][i][a]
                    d[4] = p.get("noobject_scale", 1) * (0 - o) * o * (1 - o)
                    if p.get("classfix", 0) == -1:
                        d[4] = p.get("noobject_scale", 1) * (best - o) * o * (1 - o)
                    elif best > p.get("thresh", 0.5):
                        d[4] = 0
                        if p.get("classfix", 0) > 0:
                            delta_class(b, j, i, a, best_c,
                                        p.get("class_scale", 1) * (o if p["classfix"] == 2 else 1))
                    if seen < 12800:
                        prior = ((i + .5) / ww, (j + .5) / hh, bias[a][0] / ww, bias[a][1] / hh)
                        delta_box(prior, b, j, i, a, .01)
        for t in truths[b]:
            i, j = int(t[0] * ww), int(t[1] * hh)
            best, best_n = 0, 0
            for a in range(n):
                pw, ph = box(b, j, i, a)[2:]
                if p.get("bias_match"):
                    pw, ph = bias[a][0] / ww, bias[a][1] / hh
                iou = _iou((0, 0, pw, ph), (0, 0, t[2], t[3]))
                if iou > best:
                    best, best_n = iou, a
            iou = delta_box(t, b, j, i, best_n, p.get("coord_scale", 1))
            o = out[b][j][i][best_n][4]
            target = iou if p.get("rescore") else 1
            delta[b][j][i][best_n][4] = p.get("object_scale", 1) * (target - o) * o * (1 - o)
            delta_class(b, j, i, best_n, t[4], p.get("class_scale", 1))
    return torch.tensor(delta).permute(0, 3, 4, 1, 2).reshape(x.shape)


def _truth_rows(truths):
    return torch.tensor([[b, t[4], *t[:4]] for b, img in enumerate(truths) for t in img], dtype=torch.float32)


_REGION_TRUTHS = [
    [(0.31, 0.42, 0.30, 0.45, 1), (0.33, 0.40, 0.20, 0.25, 2), (0.81, 0.12, 0.10, 0.12, 0)],  # two in a cell
    [],
    [(0.55, 0.55, 0.62, 0.70, 2), (0.05, 0.93, 0.08, 0.05, 1)],
]


@pytest.mark.parametrize("keys, seen", [
    ({"softmax": 1}, 0),
    ({"softmax": 1, "rescore": 1, "bias_match": 1, "object_scale": 5, "noobject_scale": 0.5, "class_scale": 2,
      "coord_scale": 1.5}, 0),
    ({"classfix": 2, "thresh": 0.1}, 20000),
    ({"classfix": -1, "focal_loss": 1, "softmax": 1}, 20000),
])
def test_region_loss_is_darknets_loop(keys, seen):
    anchors = [(1.0, 1.5), (2.5, 2.0), (3.5, 4.0)]
    p = {"num": 3, "classes": 3, "anchors": anchors, **keys}
    lines = "".join(f"{k}={v}\n" for k, v in keys.items())
    cfg = ("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=24\nsize=1\nstride=16\n"
           "activation=linear\n[region]\nanchors=" + ",".join(f"{w},{h}" for w, h in anchors) +
           f"\nnum=3\nclasses=3\ncoords=4\n{lines}")
    loss_fn = DetectionLoss(netspec.build(cfg))
    torch.manual_seed(0)
    x = torch.randn(3, 24, 4, 4).requires_grad_()
    loss, stats = loss_fn([x], _truth_rows(_REGION_TRUTHS), seen=seen - 3)
    loss.backward()
    expected = _region_reference(x.detach(), _REGION_TRUTHS, p, seen)
    torch.testing.assert_close(-3 * x.grad, expected.float(), rtol=1e-4, atol=1e-6)
    assert stats["heads"][0]["cost"] == pytest.approx(float((expected ** 2).sum()), rel=1e-4)
    assert stats["count"] == 5


def _detection_reference(x, truths, p):
    b_ = x.shape[0]
    s, n, classes = p["side"], p["num"], p["classes"]
    loc = s * s
    out = x.double().reshape(b_, -1).tolist()
    if p.get("softmax"):
        for v in out:
            for c in range(loc):
                m = max(v[c * classes:(c + 1) * classes])
                ex = [math.exp(u - m) for u in v[c * classes:(c + 1) * classes]]
                v[c * classes:(c + 1) * classes] = [u / sum(ex) for u in ex]
    delta = [[0.0] * len(v) for v in out]
    for b in range(b_):
        cell_truth = {}
        for t in truths[b]:  # Darknet's fill_truth_region: the first box of a cell wins
            if t[2] < .001 or t[3] < .001:
                continue
            col, row = int(t[0] * s), int(t[1] * s)
            cell_truth.setdefault(col + row * s, (t[0] * s - col, t[1] * s - row, t[2], t[3], t[4]))
        v, d = out[b], delta[b]
        for i in range(loc):
            for j in range(n):
                pi = loc * classes + i * n + j
                d[pi] = p.get("noobject_scale", 1) * (0 - v[pi])
            if i not in cell_truth:
                continue
            tx, ty, tw, th, tc = cell_truth[i]
            for j in range(classes):
                d[i * classes + j] = p.get("class_scale", 1) * ((1 if j == tc else 0) - v[i * classes + j])
            truth = (tx / s, ty / s, tw, th)
            best_index, best_iou, best_rmse = -1, 0, 20

            def out_box(j, i=i, v=v):
                bi = loc * (classes + n) + (i * n + j) * 4
                bx = [v[bi] / s, v[bi + 1] / s, v[bi + 2], v[bi + 3]]
                if p.get("sqrt"):
                    bx[2], bx[3] = bx[2] ** 2, bx[3] ** 2
                return bi, bx

            for j in range(n):
                _, bx = out_box(j)
                iou = _iou(bx, truth)
                rmse = math.sqrt(sum((u - w) ** 2 for u, w in zip(bx, truth)))
                if best_iou > 0 or iou > 0:
                    if iou > best_iou:
                        best_iou, best_index = iou, j
                elif rmse < best_rmse:
                    best_rmse, best_index = rmse, j
            if p.get("forced"):
                best_index = 1 if tw * th < .1 else 0
            bi, bx = out_box(best_index)
            iou = _iou(bx, truth)
            pi = loc * classes + i * n + best_index
            d[pi] = p.get("object_scale", 1) * ((iou if p.get("rescore") else 1) - v[pi])
            target = [tx, ty, math.sqrt(tw) if p.get("sqrt") else tw, math.sqrt(th) if p.get("sqrt") else th]
            for k in range(4):
                d[bi + k] = p.get("coord_scale", 1) * (target[k] - v[bi + k])
    return torch.tensor(delta).reshape(x.shape)


_DETECTION_TRUTHS = [
    [(0.31, 0.42, 0.30, 0.45, 1), (0.33, 0.40, 0.20, 0.25, 2), (0.81, 0.12, 0.10, 0.12, 0),
     (0.6, 0.6, 0.0005, 0.3, 1)],
    [],
    [(0.55, 0.55, 0.62, 0.70, 2), (0.05, 0.93, 0.08, 0.05, 1)],
]


@pytest.mark.parametrize("keys", [
    {"sqrt": 1, "rescore": 1, "object_scale": 1, "noobject_scale": 0.5, "class_scale": 1, "coord_scale": 5},
    {"softmax": 1},
    {"forced": 1, "sqrt": 1},
])
def test_detection_loss_is_darknets_loop(keys):
    side, num, classes = 3, 2, 3
    p = {"side": side, "num": num, "classes": classes, **keys}
    lines = "".join(f"{k}={v}\n" for k, v in keys.items())
    cfg = (f"[net]\nwidth=8\nheight=8\nchannels=3\n[connected]\noutput={side * side * (5 * num + classes)}\n"
           f"activation=linear\n[detection]\nside={side}\nnum={num}\nclasses={classes}\ncoords=4\n{lines}")
    loss_fn = DetectionLoss(netspec.build(cfg))
    torch.manual_seed(1)
    x = (0.5 + 0.3 * torch.randn(3, side * side * (5 * num + classes))).requires_grad_()
    loss, stats = loss_fn([x], _truth_rows(_DETECTION_TRUTHS))
    loss.backward()
    expected = _detection_reference(x.detach(), _DETECTION_TRUTHS, p)
    torch.testing.assert_close(-3 * x.grad, expected.float(), rtol=1e-4, atol=1e-6)
    assert stats["heads"][0]["cost"] == pytest.approx(float((expected ** 2).sum()), rel=1e-4)
    assert stats["count"] == 4  # one truth per cell (the second box of the first cell is dropped, as is the tiny one)


def test_region_tree_loss_is_darknets_loop(tmp_path):
    # 5 classes: 0, 1 are roots; 2, 3 children of 0; 4 a child of 3
    (tmp_path / "t.tree").write_text("a -1\nb -1\nc 0\nd 0\ne 3\n")
    anchors = [(1.0, 1.5), (2.5, 2.0)]
    cfg = tmp_path / "r.cfg"
    cfg.write_text("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=20\nsize=1\nstride=16\n"
                   "activation=linear\n[region]\nanchors=1,1.5,2.5,2\nnum=2\nclasses=5\ncoords=4\nsoftmax=1\n"
                   "tree=t.tree\nclassfix=1\nthresh=0.2\n")
    truths = [[(0.31, 0.42, 0.30, 0.45, 4), (0.33, 0.40, 0.28, 0.4, 2), (0.81, 0.12, 0.10, 0.12, 1)], []]
    p = {"num": 2, "classes": 5, "anchors": anchors, "classfix": 1, "thresh": 0.2,
         "parents": [-1, -1, 0, 0, 3], "groups": [0, 0, 1, 1, 2]}
    torch.manual_seed(2)
    x = torch.randn(2, 20, 4, 4).requires_grad_()
    loss, _ = DetectionLoss(netspec.build(str(cfg)))([x], _truth_rows(truths))
    loss.backward()
    expected = _region_reference(x.detach(), truths, p, 3)
    torch.testing.assert_close(-2 * x.grad, expected.float(), rtol=1e-4, atol=1e-6)


def _yolo_reference(x, truths, p, net_size):
    """forward_yolo_layer's loops for [yolo] with iou_loss=mse (the cell / truth bookkeeping of every variant)."""
    b_, _, hh, ww = x.shape
    mask, anchors, classes = p["mask"], p["anchors"], p["classes"]
    n, e = len(mask), 5 + classes
    s = p.get("scale_x_y", 1.0)
    out = x.double().reshape(b_, n, e, hh, ww).permute(0, 1, 3, 4, 2).tolist()  # [b][a][j][i][entry]
    for img in out:
        for anchor in img:
            for row in anchor:
                for v in row:
                    for k in range(e):
                        if k not in (2, 3):
                            v[k] = _sig(v[k])
                    v[0], v[1] = v[0] * s - 0.5 * (s - 1), v[1] * s - 0.5 * (s - 1)
    delta = [[[[[0.0] * e for _ in range(ww)] for _ in range(hh)] for _ in range(n)] for _ in range(b_)]
    obj_norm, iou_norm = p.get("obj_normalizer", 1.0), p.get("iou_normalizer", 0.75)
    cls_norm, eps = p.get("cls_normalizer", 1.0), p.get("label_smooth_eps", 0.0)
    smooth, mults = p.get("objectness_smooth", 0), p.get("multipliers")
    iou_thresh = p.get("iou_thresh", 1.0)

    def y_true(positive):
        y = 1.0 if positive else 0.0
        return y * (1 - eps) + 0.5 * eps if eps else y

    def box(b, a_pos, anchor, j, i):
        v = out[b][a_pos][j][i]
        return ((i + v[0]) / ww, (j + v[1]) / hh, math.exp(v[2]) * anchors[anchor][0] / net_size,
                math.exp(v[3]) * anchors[anchor][1] / net_size)

    def delta_box(t, b, a_pos, anchor, j, i, norm):
        v, d = out[b][a_pos][j][i], delta[b][a_pos][j][i]
        scale = 2 - t[2] * t[3]
        target = (t[0] * ww - i, t[1] * hh - j, math.log(t[2] * net_size / anchors[anchor][0]),
                  math.log(t[3] * net_size / anchors[anchor][1]))
        for k in range(4):
            d[k] += scale * (target[k] - v[k]) * norm
        return _iou(box(b, a_pos, anchor, j, i), t)

    def delta_class(v, d, c):
        if d[5 + c]:
            d[5 + c] = y_true(True) - v[5 + c]
            if mults:
                d[5 + c] *= mults[c]
            return
        for k in range(classes):
            d[5 + k] = y_true(k == c) - v[5 + k]
            if mults and k == c:
                d[5 + k] *= mults[c] * cls_norm

    def assign(t, b, a_pos, anchor, j, i):
        m = mults[t[4]] if mults else 1.0
        delta_box(t, b, a_pos, anchor, j, i, iou_norm * m)
        v, d = out[b][a_pos][j][i], delta[b][a_pos][j][i]
        if smooth:
            if d[4] == 0:
                d[4] = m * obj_norm * (1 - v[4])
        else:
            d[4] = m * obj_norm * (1 - v[4])
        delta_class(v, d, t[4])

    for b in range(b_):
        for j in range(hh):
            for i in range(ww):
                for a in range(n):
                    v, d = out[b][a][j][i], delta[b][a][j][i]
                    pred = box(b, a, mask[a], j, i)
                    match = any(c > 0.25 for c in v[5:])
                    best_match = best = 0
                    best_t = 0
                    for k, t in enumerate(truths[b]):
                        iou = _iou(pred, t)
                        if iou > best_match and match:
                            best_match = iou
                        if iou > best:
                            best, best_t = iou, k
                    d[4] = obj_norm * (0 - v[4])
                    if best_match > p.get("ignore_thresh", 0.5):
                        if smooth:
                            d[4] = max(d[4], obj_norm * (best_match - v[4]))
                        else:
                            d[4] = 0
                    if best > p.get("truth_thresh", 1.0):
                        t = truths[b][best_t]
                        d[4] = obj_norm * ((best * best if smooth else 1) - v[4])
                        delta_class(v, d, t[4])
                        m = mults[t[4]] if mults else 1.0
                        if smooth:
                            d[5 + t[4]] = m * (best * best - v[5 + t[4]])
                        delta_box(t, b, a, mask[a], j, i, iou_norm * m)
        for t in truths[b]:
            i, j = int(t[0] * ww), int(t[1] * hh)
            fits = [_iou((0, 0, aw / net_size, ah / net_size), (0, 0, t[2], t[3])) for aw, ah in anchors]
            best_n = max(range(len(anchors)), key=lambda k: (fits[k], -k))
            if best_n in mask:
                assign(t, b, mask.index(best_n), best_n, j, i)
            for k in range(len(anchors)):
                if k in mask and k != best_n and iou_thresh < 1 and fits[k] > iou_thresh:
                    assign(t, b, mask.index(k), k, j, i)
        if iou_thresh < 1:
            for a in range(n):
                for j in range(hh):
                    for i in range(ww):
                        d = delta[b][a][j][i]
                        positive = sum(1 for c in d[5:] if c > 0)
                        if d[4] != 0 and positive:
                            for k in range(4):
                                d[k] /= positive
    return torch.tensor(delta).permute(0, 1, 4, 2, 3).reshape(x.shape)


# many truths sharing cells and anchors, of several classes (the order-dependent cases of Darknet's loops)
_CROWD = [
    [(0.30, 0.30, 0.20, 0.22, 0), (0.32, 0.31, 0.22, 0.20, 1), (0.31, 0.29, 0.21, 0.21, 1), (0.34, 0.33, 0.5, 0.45, 2),
     (0.70, 0.70, 0.10, 0.12, 2), (0.72, 0.71, 0.12, 0.10, 0), (0.05, 0.95, 0.3, 0.6, 1)],
    [],
    [(0.55, 0.45, 0.6, 0.6, 0), (0.56, 0.44, 0.58, 0.62, 0), (0.12, 0.14, 0.05, 0.07, 2)],
]


@pytest.mark.parametrize("keys", [
    {},
    {"iou_thresh": 0.2, "objectness_smooth": 1, "label_smooth_eps": 0.1, "obj_normalizer": 0.4},
    {"iou_thresh": 0.2, "counters_per_class": "100,50,10", "cls_normalizer": 0.5, "scale_x_y": 1.1},
    {"truth_thresh": 0.3, "ignore_thresh": 0.2, "objectness_smooth": 1, "iou_thresh": 0.3},
])
def test_yolo_crowded_cells_follow_darknets_loop_order(keys):
    anchors = [(4, 5), (7, 6), (9, 11), (14, 12), (20, 22), (30, 28)]
    mask = [1, 2, 4]
    lines = "".join(f"{k}={v}\n" for k, v in keys.items())
    cfg = ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=24\nsize=1\nstride=8\n"
           "activation=linear\n[yolo]\nmask=1,2,4\nanchors=" + ",".join(f"{w},{h}" for w, h in anchors) +
           f"\nnum=6\nclasses=3\n{lines}")
    p = {"mask": mask, "anchors": anchors, "classes": 3, **keys}
    if "counters_per_class" in keys:
        p["multipliers"] = [1.0, 2.0, 10.0]
    torch.manual_seed(3)
    x = torch.randn(3, 24, 4, 4)
    x[:, [5, 13, 21]] += 2  # confident classes, so ignore_thresh / truth_thresh cells occur
    x = x.requires_grad_()
    loss, _ = DetectionLoss(netspec.build(cfg))([x], _truth_rows(_CROWD))
    loss.backward()
    expected = _yolo_reference(x.detach(), _CROWD, p, 32)
    torch.testing.assert_close(-3 * x.grad, expected.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_gradient():
    _, _, truth, heads = _load_vector("kitchen-sink", SHARED_VECTORS)
    net = netspec.build(str(SHARED_VECTORS / "kitchen-sink" / "model.cfg"))
    layers = [h["index"] for h, _, _ in heads]
    grads = []
    for device in ("cpu", "cuda"):
        inputs = [x.to(device).requires_grad_() for _, x, _ in heads]
        loss, _ = DetectionLoss(net, layers=layers)(inputs, targets_from_darknet_truth(truth).to(device))
        loss.backward()
        grads.append([x.grad.cpu() for x in inputs])
    for cpu, cuda in zip(*grads):
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-6)


def test_xnor_layers_train_straight_through():
    # Darknet trains binary/xnor convolutions with the binarized tensors' gradient applied to the real ones
    cfg = ("[net]\nwidth=16\nheight=16\nchannels=3\n[convolutional]\nfilters=8\nsize=3\npad=1\nbatch_normalize=1\n"
           "activation=leaky\n[convolutional]\nfilters=8\nsize=3\npad=1\nxnor=1\nbatch_normalize=1\nactivation=leaky\n"
           "[convolutional]\nfilters=21\nsize=1\nstride=4\nactivation=linear\n"
           "[yolo]\nmask=0,1,2\nanchors=2,2,4,4,8,8\nnum=3\nclasses=2\n")
    net = netspec.build(cfg).train()
    x = torch.rand(2, 3, 16, 16)
    loss, _ = DetectionLoss(net)(net(x), _targets([0, 1, 0.5, 0.5, 0.3, 0.3]))
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_truths_compared_in_chunks_give_the_same_loss(monkeypatch):
    from netspec.sections import yolo_loss

    net = netspec.build(_yolo_cfg("truth_thresh=0.3\nignore_thresh=0.2", classes=3))
    torch.manual_seed(4)
    x = torch.randn(3, 24, 4, 4)
    x[:, [5, 13, 21]] += 2
    results = []
    for chunk in (1 << 23, 1):  # all truths at once, then one truth at a time
        monkeypatch.setattr(yolo_loss, "_IOU_CHUNK_ELEMENTS", chunk)
        xi = x.clone().requires_grad_()
        DetectionLoss(net)([xi], _truth_rows(_CROWD))[0].backward()
        results.append(xi.grad)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_a_one_cell_grid_does_not_alias_the_head_input():
    # new_coords heads apply no activation; on a 1x1 grid the loss's rows once shared the head input's memory
    cfg = ("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=21\nsize=1\nstride=8\n"
           "activation=logistic\n[yolo]\nmask=0,1,2\nanchors=2,2,4,4,8,8\nnum=3\nclasses=2\nnew_coords=1\n"
           "scale_x_y=2\n")
    net = netspec.build(cfg).train()
    heads = net(torch.rand(2, 3, 8, 8))
    before = heads[0].detach().clone()
    loss, _ = DetectionLoss(net)(heads, _targets([0, 1, 0.5, 0.5, 0.3, 0.3]))
    torch.testing.assert_close(heads[0].detach(), before, rtol=0, atol=0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def _gaussian_reference(x, truths, p, net_size):
    """forward_gaussian_yolo_layer's loops with iou_loss=mse."""
    b_, _, hh, ww = x.shape
    mask, anchors, classes = p["mask"], p["anchors"], p["classes"]
    n, e = len(mask), 9 + classes
    s = p.get("scale_x_y", 1.0)
    point = p.get("yolo_point", "center")
    out = x.double().reshape(b_, n, e, hh, ww).permute(0, 1, 3, 4, 2).tolist()  # [b][a][j][i][entry]
    for img in out:
        for anchor in img:
            for row in anchor:
                for v in row:
                    for k in range(e):
                        if k not in (4, 6):
                            v[k] = _sig(v[k])
                    v[0], v[2] = v[0] * s - 0.5 * (s - 1), v[2] * s - 0.5 * (s - 1)
    delta = [[[[[0.0] * e for _ in range(ww)] for _ in range(hh)] for _ in range(n)] for _ in range(b_)]
    obj_norm, iou_norm, uc_norm = p.get("obj_normalizer", 1.0), p.get("iou_normalizer", 0.75), p.get("uc_normalizer", 1)
    eps, smooth = p.get("label_smooth_eps", 0.0), p.get("objectness_smooth", 0)
    iou_thresh = p.get("iou_thresh", 1.0)
    shift = {"center": 0, "left_top": -1, "right_bottom": 1}[point]

    def box(b, a_pos, anchor, j, i):
        v = out[b][a_pos][j][i]
        w, h = math.exp(v[4]) * anchors[anchor][0] / net_size, math.exp(v[6]) * anchors[anchor][1] / net_size
        return ((i + v[0]) / ww - shift * w / 2, (j + v[2]) / hh - shift * h / 2, w, h)

    def delta_box(t, b, a_pos, anchor, j, i, norm):
        v, d = out[b][a_pos][j][i], delta[b][a_pos][j][i]
        scale = 2 - t[2] * t[3]
        target = ((t[0] + shift * t[2] / 2) * ww - i, (t[1] + shift * t[3] / 2) * hh - j,
                  math.log(t[2] * net_size / anchors[anchor][0]), math.log(t[3] * net_size / anchors[anchor][1]))
        for k in range(4):
            mu, sigma = v[2 * k], v[2 * k + 1]
            in_exp = (target[k] - mu) / sigma
            nd = math.exp(-in_exp * in_exp / 2) / (math.sqrt(2 * math.pi) * (sigma + 0.3))
            temp = 0.5 / (nd + 1e-9) * nd * scale
            d[2 * k] += temp * in_exp / sigma * norm
            d[2 * k + 1] += temp * (in_exp * in_exp / sigma - 1 / (sigma + 0.3)) * uc_norm
        return _iou(box(b, a_pos, anchor, j, i), t)

    def y_true(positive):
        y = 1.0 if positive else 0.0
        return y * (1 - eps) + 0.5 * eps if eps else y

    def delta_class(v, d, c):
        if d[9]:  # Darknet checks the first class entry, whatever the class
            d[9 + c] = y_true(True) - v[9 + c]
            return
        for k in range(classes):
            d[9 + k] = y_true(k == c) - v[9 + k]

    def assign(t, b, a_pos, anchor, j, i):
        delta_box(t, b, a_pos, anchor, j, i, iou_norm)
        v, d = out[b][a_pos][j][i], delta[b][a_pos][j][i]
        d[8] = obj_norm * (1 - v[8])
        delta_class(v, d, t[4])

    for b in range(b_):
        for j in range(hh):
            for i in range(ww):
                for a in range(n):
                    v, d = out[b][a][j][i], delta[b][a][j][i]
                    pred = box(b, a, mask[a], j, i)
                    match = any(c > 0.25 for c in v[9:])
                    best_match = best = 0
                    best_t = best_match_t = 0
                    for k, t in enumerate(truths[b]):
                        iou = _iou(pred, t)
                        if iou > best_match and match:
                            best_match, best_match_t = iou, k
                        if iou > best:
                            best, best_t = iou, k
                    d[8] = obj_norm * (0 - v[8])
                    if best_match > p.get("ignore_thresh", 0.5):
                        if smooth:
                            d[8] = obj_norm * (best_match * best_match - v[8])
                            delta_class(v, d, truths[b][best_match_t][4])
                        else:
                            d[8] = 0
                    if best > p.get("truth_thresh", 1.0):
                        t = truths[b][best_t]
                        d[8] = obj_norm * ((best * best if smooth else 1) - v[8])
                        delta_class(v, d, t[4])
                        if smooth:
                            d[9 + t[4]] = best * best - v[9 + t[4]]
                        delta_box(t, b, a, mask[a], j, i, iou_norm)
        for t in truths[b]:
            i, j = int(t[0] * ww), int(t[1] * hh)
            if point != "center":
                i = int(min(ww - 1, max(0, (t[0] + shift * t[2] / 2) * ww)))
                j = int(min(hh - 1, max(0, (t[1] + shift * t[3] / 2) * hh)))
            fits = [_iou((0, 0, aw / net_size, ah / net_size), (0, 0, t[2], t[3])) for aw, ah in anchors]
            best_n = max(range(len(anchors)), key=lambda k: (fits[k], -k))
            if best_n in mask:
                assign(t, b, mask.index(best_n), best_n, j, i)
            for k in range(len(anchors)):
                if k in mask and k != best_n and iou_thresh < 1 and fits[k] > iou_thresh:
                    assign(t, b, mask.index(k), k, j, i)
        for a in range(n):
            for j in range(hh):
                for i in range(ww):
                    d = delta[b][a][j][i]
                    positive = sum(1 for c in d[9:] if c > 0)
                    if positive:
                        for k in range(8):
                            d[k] /= positive
    return torch.tensor(delta).permute(0, 1, 4, 2, 3).reshape(x.shape)


@pytest.mark.parametrize("keys", [
    {"iou_thresh": 0.2, "scale_x_y": 1.1},
    {"objectness_smooth": 1, "ignore_thresh": 0.2, "truth_thresh": 0.4, "label_smooth_eps": 0.1,
     "uc_normalizer": 0.5, "yolo_point": "left_top"},
    {"yolo_point": "right_bottom", "iou_thresh": 0.3, "obj_normalizer": 2},
])
def test_gaussian_yolo_follows_darknets_loop(keys):
    anchors = [(4, 5), (7, 6), (9, 11), (14, 12), (20, 22), (30, 28)]
    lines = "".join(f"{k}={v}\n" for k, v in keys.items())
    cfg = ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=36\nsize=1\nstride=8\n"
           "activation=linear\n[Gaussian_yolo]\nmask=1,2,4\nanchors=" + ",".join(f"{w},{h}" for w, h in anchors) +
           f"\nnum=6\nclasses=3\n{lines}")
    p = {"mask": [1, 2, 4], "anchors": anchors, "classes": 3, **keys}
    torch.manual_seed(5)
    x = torch.randn(3, 36, 4, 4)
    x[:, [9, 21, 33]] += 2
    x = x.requires_grad_()
    loss, _ = DetectionLoss(netspec.build(cfg))([x], _truth_rows(_CROWD))
    loss.backward()
    expected = _gaussian_reference(x.detach(), _CROWD, p, 32)
    torch.testing.assert_close(-3 * x.grad, expected.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("iou_loss", ["giou", "diou", "ciou", "iou"])
def test_gaussian_box_deltas_equal_yolos_for_iou_losses(iou_loss):
    # Darknet's Gaussian YOLO trains x, y, w, h with the same dx_box_iou deltas as [yolo]
    anchors = "4,5, 7,6, 9,11, 14,12, 20,22, 30,28"
    head = f"mask=1,2,4\nanchors={anchors}\nnum=6\nclasses=3\niou_loss={iou_loss}\niou_thresh=0.3\nmax_delta=2\n"
    net_cfg = "[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nsize=1\nstride=8\nactivation=linear\n"
    yolo = netspec.build(net_cfg.replace("size=1", "filters=24\nsize=1") + "[yolo]\n" + head)
    gauss = netspec.build(net_cfg.replace("size=1", "filters=36\nsize=1") + "[Gaussian_yolo]\n" + head)
    torch.manual_seed(6)
    xy = torch.randn(3, 3, 8, 4, 4)
    xg = torch.randn(3, 3, 12, 4, 4)
    xg[:, :, [0, 2, 4, 6, 8, 9, 10, 11]] = xy  # x, y, w, h, objectness, classes at Gaussian YOLO's entries
    xy, xg = xy.reshape(3, 24, 4, 4).requires_grad_(), xg.reshape(3, 36, 4, 4).requires_grad_()
    DetectionLoss(yolo)([xy], _truth_rows(_CROWD))[0].backward()
    DetectionLoss(gauss)([xg], _truth_rows(_CROWD))[0].backward()
    gy, gg = xy.grad.reshape(3, 3, 8, 4, 4), xg.grad.reshape(3, 3, 12, 4, 4)
    assert gy[:, :, :4].abs().sum() > 0
    torch.testing.assert_close(gg[:, :, [0, 2, 4, 6]], gy[:, :, :4], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gg[:, :, 8:], gy[:, :, 4:], rtol=1e-5, atol=1e-7)


def test_detection_random_box_until_64000_images_and_the_seen_counter():
    side, num, classes = 3, 2, 3
    base = (f"[net]\nwidth=8\nheight=8\nchannels=3\n[connected]\noutput={side * side * (5 * num + classes)}\n"
            f"activation=linear\n[detection]\nside={side}\nnum={num}\nclasses={classes}\ncoords=4\n")
    torch.manual_seed(7)
    x = 0.5 + 0.3 * torch.randn(3, side * side * (5 * num + classes))
    t = _truth_rows(_DETECTION_TRUTHS)

    def grad(cfg, seen):
        xi = x.clone().requires_grad_()
        loss_fn = DetectionLoss(netspec.build(cfg))
        loss_fn([xi], t, seen=seen)[0].backward()
        assert loss_fn.seen == seen + 3  # Darknet counts the batch before the forward
        return xi.grad

    random = base + "random=1\n"
    torch.testing.assert_close(grad(random, 64000), grad(base, 64000))
    early = grad(random, 0).reshape(3, -1)[:, side * side * (classes + num):].reshape(3, side * side, num, 4)
    trained = (early != 0).any(-1).sum(-1)  # boxes with a coordinate delta, per cell
    assert trained.max() == 1 and trained.sum() == 4  # one (random) box in each of the 4 cells with a truth
