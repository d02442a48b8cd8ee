"""Darknet's NMS (do_nms_sort / diounms_sort) re-computed with its own loops, against the vectorized one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from netspec.nms import darknet_nms

f32 = np.float32


def _iou(a, b):
    def overlap(x1, w1, x2, w2):
        left = max(f32(x1 - w1 / f32(2)), f32(x2 - w2 / f32(2)))
        right = min(f32(x1 + w1 / f32(2)), f32(x2 + w2 / f32(2)))
        return f32(right - left)
    w = overlap(a[0], a[2], b[0], b[2])
    h = overlap(a[1], a[3], b[1], b[3])
    inter = f32(0) if (w < 0 or h < 0) else f32(w * h)
    union = f32(f32(a[2] * a[3]) + f32(b[2] * b[3]) - inter)
    return f32(0) if inter == 0 or union == 0 else f32(inter / union)


def _diou(a, b, beta):
    top = min(f32(a[1] - a[3] / f32(2)), f32(b[1] - b[3] / f32(2)))
    bot = max(f32(a[1] + a[3] / f32(2)), f32(b[1] + b[3] / f32(2)))
    left = min(f32(a[0] - a[2] / f32(2)), f32(b[0] - b[2] / f32(2)))
    right = max(f32(a[0] + a[2] / f32(2)), f32(b[0] + b[2] / f32(2)))
    w, h = f32(right - left), f32(bot - top)
    c = f32(f32(w * w) + f32(h * h))
    iou = _iou(a, b)
    if c == 0:
        return iou
    d = f32(f32(f32(a[0] - b[0]) * f32(a[0] - b[0])) + f32(f32(a[1] - b[1]) * f32(a[1] - b[1])))
    return f32(iou - f32(math.pow(float(f32(d / c)), beta)))


def reference_nms(boxes: np.ndarray, probs: np.ndarray, thresh: float, kind: str, beta: float) -> np.ndarray:
    """box.c: for each class, sort the detections by prob (glibc's qsort: a stable merge sort, of the order the
    previous class's sort left), each live entry zeroes the later overlapping ones."""
    probs = probs.copy()
    n, classes = probs.shape
    order = list(range(n))
    for k in range(classes):
        order = sorted(order, key=lambda i: -probs[i, k])
        for a_pos, i in enumerate(order):
            if probs[i, k] == 0:
                continue
            for j in order[a_pos + 1:]:
                if kind == "greedynms":
                    hit = _diou(boxes[i], boxes[j], 0.6) > thresh
                elif kind == "diounms":
                    hit = _diou(boxes[i], boxes[j], beta) > thresh
                else:
                    hit = _iou(boxes[i], boxes[j]) > thresh
                if hit:
                    probs[j, k] = 0
    return probs


def _scene(seed: int, n: int, classes: int, zero_fraction: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, (max(n // 8, 1), 2))
    pick = rng.integers(0, len(centres), n)
    xy = centres[pick] + rng.normal(0, 0.02, (n, 2))
    wh = rng.uniform(0.05, 0.3, (len(centres), 2))[pick] * rng.uniform(0.8, 1.25, (n, 2))
    boxes = np.concatenate([xy, wh], 1).astype(np.float32)
    probs = rng.uniform(0, 1, (n, classes)).astype(np.float32)
    probs[rng.uniform(0, 1, probs.shape) < zero_fraction] = 0
    return boxes, probs


@pytest.mark.parametrize("kind", ["default", "greedynms", "diounms", "cornersnms"])
@pytest.mark.parametrize("seed", range(4))
def test_vectorized_nms_equals_darknet_loops(kind, seed):
    boxes, probs = _scene(seed, 60, 3)
    for thresh in (0.45, 0.0, 0.7):
        want = reference_nms(boxes, probs, thresh, kind, 0.7)
        got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(probs), thresh, kind, 0.7).numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"thresh={thresh}")


def test_negative_threshold_and_degenerate_boxes_take_the_dense_path():
    boxes, probs = _scene(7, 30, 2)
    boxes[3, 2] = 0.0  # zero width
    for kind, thresh in (("diounms", -0.2), ("default", 0.3), ("greedynms", -0.05)):
        want = reference_nms(boxes, probs, thresh, kind, 0.6)
        got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(probs), thresh, kind, 0.6).numpy()
        np.testing.assert_array_equal(got, want)


def test_chains_of_suppression_resolve_in_order():
    # each box overlaps the next one only: kept, suppressed, kept, suppressed, ...
    n = 9
    boxes = torch.tensor([[0.1 + 0.05 * i, 0.5, 0.1, 0.1] for i in range(n)])
    probs = torch.linspace(0.9, 0.5, n)[:, None]
    got = darknet_nms(boxes, probs, 0.3)
    assert (got[:, 0] > 0).tolist() == [i % 2 == 0 for i in range(n)]


def test_nms_unknown_kind():
    with pytest.raises(ValueError, match="nms_kind"):
        darknet_nms(torch.zeros(2, 4), torch.ones(2, 1), 0.5, "fancy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nms_stays_on_the_device():
    boxes, probs = _scene(1, 200, 4)
    got = darknet_nms(torch.from_numpy(boxes).cuda(), torch.from_numpy(probs).cuda(), 0.45)
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), reference_nms(boxes, probs, 0.45, "default", 0.6))


def test_pairs_in_bounded_chunks_give_the_same_result(monkeypatch):
    import netspec.nms

    boxes, probs = _scene(5, 80, 4, zero_fraction=0.2)
    want = reference_nms(boxes, probs, 0.45, "default", 0.6)
    monkeypatch.setattr(netspec.nms, "_PAIR_BUDGET", 37)
    got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(probs), 0.45).numpy()
    np.testing.assert_array_equal(got, want)
    got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(probs), -0.1).numpy()
    np.testing.assert_array_equal(got, reference_nms(boxes, probs, -0.1, "default", 0.6))


@pytest.mark.parametrize("kind", ["default", "diounms"])
@pytest.mark.parametrize("budget", [None, 41])
def test_many_classes_per_box_share_the_box_overlaps(kind, budget, monkeypatch):
    import netspec.nms

    if budget:
        monkeypatch.setattr(netspec.nms, "_PAIR_BUDGET", budget)
    boxes, probs = _scene(9, 50, 9, zero_fraction=0.1)  # ~8 classes per box: the box-pair path
    for thresh in (0.45, -0.1):
        want = reference_nms(boxes, probs, thresh, kind, 0.6)
        got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(probs), thresh, kind, 0.6).numpy()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rounds", [1, 3, 1000])
@pytest.mark.parametrize("classes_per_box", [1, 8])
def test_walking_rounds_then_resolving_the_rest_is_exact(rounds, classes_per_box, monkeypatch):
    import netspec.nms

    monkeypatch.setattr(netspec.nms, "_ROUNDS", rounds)
    monkeypatch.setattr(netspec.nms, "_crowded", lambda *args: True)  # take the rounds path whatever the scene
    boxes, probs = _scene(11, 120, 8, zero_fraction=0.0 if classes_per_box == 8 else 0.875)
    for kind in ("default", "greedynms"):
        want = reference_nms(boxes, probs, 0.45, kind, 0.6)
        got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(probs), 0.45, kind).numpy()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("crowded,classes,zero_fraction", [(False, 4, 0.3), (True, 4, 0.3), (False, 10, 0.05)])
def test_equal_probabilities_rank_as_darknets_chain_of_sorts(crowded, classes, zero_fraction, monkeypatch):
    import netspec.nms

    if crowded:
        monkeypatch.setattr(netspec.nms, "_crowded", lambda *args: True)
        monkeypatch.setattr(netspec.nms, "_ROUNDS", 2)
    boxes, probs = _scene(13, 80, classes, zero_fraction=zero_fraction)  # 10 classes: the box-pair path
    probs = (np.ceil(probs * 3) / 3).astype(np.float32)  # three values only: ties everywhere
    for kind in ("default", "diounms"):
        want = reference_nms(boxes, probs, 0.3, kind, 0.6)
        got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(probs), 0.3, kind).numpy()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("edges_per_item", [0, 10**9])  # 0: the bit-matrix sweep; 10**9: the sparse graph
@pytest.mark.parametrize("band,band_bytes", [(64, 1 << 23), (4, 1)])  # small: many bands, one class a group
def test_shared_box_overlaps_bit_sweep_and_sparse_graph_agree_with_darknet(edges_per_item, band, band_bytes,
                                                                           monkeypatch):
    import netspec.nms

    monkeypatch.setattr(netspec.nms, "_EDGES_PER_ITEM", edges_per_item)
    monkeypatch.setattr(netspec.nms, "_BAND", band)
    monkeypatch.setattr(netspec.nms, "_BAND_BYTES", band_bytes)
    calls = []
    shared = netspec.nms._shared_overlaps
    monkeypatch.setattr(netspec.nms, "_shared_overlaps", lambda *args: calls.append(1) or shared(*args))
    boxes, probs = _scene(17, 90, 12, zero_fraction=0.05)
    probs[:, 6] = 0  # a class without any detection
    tied = (np.ceil(probs * 4) / 4).astype(np.float32)  # ties everywhere: Darknet's chain of sorts decides
    for p in (probs, tied):
        for kind, thresh in (("default", 0.45), ("greedynms", 0.3), ("diounms", -0.1)):
            want = reference_nms(boxes, p, thresh, kind, 0.8)
            got = darknet_nms(torch.from_numpy(boxes), torch.from_numpy(p), thresh, kind, 0.8).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{kind} {thresh}")
    assert len(calls) == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("edges_per_item", [0, 10**9])
def test_shared_box_overlaps_stay_on_the_device(edges_per_item, monkeypatch):
    import netspec.nms

    monkeypatch.setattr(netspec.nms, "_EDGES_PER_ITEM", edges_per_item)
    boxes, probs = _scene(3, 120, 6, zero_fraction=0.0)
    got = darknet_nms(torch.from_numpy(boxes).cuda(), torch.from_numpy(probs).cuda(), 0.45, "greedynms")
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), reference_nms(boxes, probs, 0.45, "greedynms", 0.6))
