"""DetectionLoss: Darknet's l.delta as the gradient (checked on Darknet-made vectors), targets, keys, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

import netspec
from netspec.errors import CfgError, NetspecError
from netspec.loss import DetectionLoss, TargetError, format_stats, targets_from_darknet_truth

from .conftest import CFGS, DARKNET_CFGS, SHARED, need_shared

VECTORS = SHARED / "loss-vectors"
VECTOR_NAMES = sorted(p.name for p in VECTORS.iterdir() if (p / "manifest.json").exists()) if VECTORS.exists() else []


def _f32(path, shape):
    import numpy as np

    return torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(shape).copy())


def _load_vector(name):
    folder = need_shared(VECTORS / name)
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
        excess = err - (1e-3 * delta.abs() + 1e-5)
        worst = int(excess.flatten().argmax())
        where = tuple(int(v) for v in torch.unravel_index(torch.tensor(worst), delta.shape))
        print(f"{name} [{h['type']}] #{h['index']}: worst element {where}: darknet delta {delta[where]:.6g}, "
              f"-batch*grad {-b * x.grad[where]:.6g} (|diff| {err[where]:.3g})")
        assert (excess <= 0).all(), f"{int((excess > 0).sum())} elements differ from Darknet's delta"
        assert figures["cost"] == pytest.approx(h["cost"], rel=1e-4, abs=1e-3)
    costs = [f["cost"] for f in stats["heads"]]
    assert stats["loss"] == pytest.approx(sum(costs) / len(costs) / b, rel=1e-5)
    assert loss.item() == pytest.approx(stats["loss"], rel=1e-6)


def test_printed_figures_match_darknets_log():
    _, _, truth, heads = _load_vector("kitchen-sink")
    net = netspec.build(str(VECTORS / "kitchen-sink" / "model.cfg"))
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
def _train_step(cfg, size):
    net = netspec.build(str(cfg), width=size, height=size)
    net.train()
    c = net.input_shape[0]
    x = torch.rand(2, c, size, size)
    classes = DetectionLoss(net).class_limit
    t = _targets([0, 0, 0.5, 0.5, 0.4, 0.3], [0, classes - 1, 0.2, 0.7, 0.1, 0.2], [1, 0, 0.8, 0.3, 0.3, 0.6])
    loss, stats = DetectionLoss(net)(net(x), t)
    loss.backward()
    assert math.isfinite(loss.item())
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    return stats


@pytest.mark.parametrize("cfg", ["yolov3-tiny.cfg", "yolov4-tiny.cfg", "yolov7-tiny.cfg"])
def test_end_to_end_shipped_cfgs(cfg):
    path = CFGS / cfg
    if not path.exists():
        path = need_shared(DARKNET_CFGS / cfg)
    _train_step(path, 64)


def _official_detectors():
    if not DARKNET_CFGS.exists():
        return []
    names = []
    for path in sorted(DARKNET_CFGS.glob("*.cfg")):
        text = path.read_text(errors="replace")
        if any(f"[{h}]" in text for h in ("yolo", "Gaussian_yolo", "region", "detection")):
            names.append(path.name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", _official_detectors() or ["(none)"])
def test_end_to_end_official_detectors(name):
    path = need_shared(DARKNET_CFGS / name) if name != "(none)" else need_shared(DARKNET_CFGS / "missing")
    try:
        net = netspec.build(str(path), width=128, height=128)
    except NetspecError as exc:
        pytest.skip(f"does not build: {str(exc).splitlines()[0]}")
    del net
    _train_step(path, 128)
