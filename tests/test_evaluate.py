"""netspec.evaluate: Darknet's mAP arithmetic on hand-made cases and against a literal port of its loops."""

from __future__ import annotations

import random

import pytest
import torch

from netspec.evaluate import MapAccumulator, average_precision, coco_metrics, darknet_box_iou


@pytest.mark.parametrize("flags, truths, points, expected", [
    ([1, 0, 1], 2, 0, 0.5 * 1 + 0.5 * (2 / 3)),
    ([1, 0, 1], 2, 11, (6 * 1 + 5 * (2 / 3)) / 11),
    ([1, 0, 1], 2, 101, (51 * 1 + 50 * (2 / 3)) / 101),
    ([0, 1], 1, 0, 0.5),
    ([0, 1], 1, 11, 0.5),
    ([1, 1, 1], 4, 0, 0.75),  # a truth never found: recall stops at 0.75
    ([1, 1, 1], 4, 11, 8 / 11),  # recall points 0 .. 0.7 reached with precision 1, 0.8 .. 1 not
    ([1, 1, 1], 4, 101, 76 / 101),
    ([0, 0, 1, 0, 1], 2, 0, 0.5 * (2 / 5) + 0.5 * (2 / 5)),  # envelope: the 1/3 at recall 0.5 is raised to 2/5
    ([0, 0, 1, 0, 1], 2, 11, 11 * (2 / 5) / 11),
    ([], 3, 0, 0.0),
    ([0, 0], 0, 11, 0.0),  # a class without truth: 0, and still counted in the mean
])
def test_average_precision_by_hand(flags, truths, points, expected):
    assert average_precision(torch.tensor(flags, dtype=torch.bool), truths, points) == pytest.approx(expected,
                                                                                                      abs=1e-12)


def test_average_precision_rejects_other_points():
    with pytest.raises(ValueError, match="points must be one of"):
        average_precision(torch.ones(2, dtype=torch.bool), 2, 7)


def test_iou_is_darknets_float32_formula():
    a = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.0, 0.0]])
    b = torch.tensor([[0.55, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    iou = darknet_box_iou(a, b)
    assert iou.dtype == torch.float32 and iou.shape == (2, 2)
    assert float(iou[0, 0]) == pytest.approx(0.15 * 0.2 / (0.08 - 0.03), rel=1e-6)
    assert iou[0, 1] == 0 and iou[1, 0] == 0  # disjoint; zero-size box


def one_hot(probs_by_class: list[tuple[int, float]], classes: int) -> torch.Tensor:
    p = torch.zeros(len(probs_by_class), classes)
    for i, (c, v) in enumerate(probs_by_class):
        p[i, c] = v
    return p


def test_hand_made_set():
    # image 1: two truths of class 0, one of class 1; image 2: one truth of class 1.
    acc = MapAccumulator(3, ["a", "b", "c"], conf_thresh=0.25)
    truth1 = torch.tensor([[0, 0.2, 0.2, 0.2, 0.2], [0, 0.7, 0.7, 0.2, 0.2], [1, 0.5, 0.5, 0.4, 0.4]])
    boxes1 = torch.tensor([[0.2, 0.2, 0.2, 0.2],  # exact hit on truth 0 (class 0, 0.9)
                           [0.21, 0.2, 0.2, 0.2],  # second hit on truth 0 (class 0, 0.8): FP
                           [0.5, 0.5, 0.4, 0.4],  # class 1 hit at 0.2 (below conf_thresh)
                           [0.9, 0.1, 0.1, 0.1]])  # nothing there (class 0, 0.3): FP
    probs1 = one_hot([(0, 0.9), (0, 0.8), (1, 0.2), (0, 0.3)], 3)
    acc.add(boxes1, probs1, truth1)
    acc.add(torch.tensor([[0.5, 0.5, 0.1, 0.1]]), one_hot([(1, 0.004)], 3),  # below 0.005: not a detection
            torch.tensor([[1, 0.5, 0.5, 0.1, 0.1]]))
    r = acc.result()
    # class 0 ranks: 0.9 TP, 0.8 FP (truth already taken), 0.3 FP; 2 truths → AUC = 0.5 * 1
    assert r.classes[0].ap == pytest.approx(0.5)
    # class 1 ranks: 0.2 TP; 2 truths → 0.5
    assert r.classes[1].ap == pytest.approx(0.5)
    assert r.classes[2].ap == 0
    assert r.map == pytest.approx(1 / 3)
    assert [(c.tp, c.fp) for c in r.classes] == [(1, 2), (0, 0), (0, 0)]
    assert (r.tp, r.fp, r.fn, r.truths, r.detections) == (1, 2, 3, 4, 4)
    assert r.precision == pytest.approx(1 / 3) and r.recall == pytest.approx(1 / 4)
    assert r.f1 == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    assert r.avg_iou == pytest.approx(1 / 3)  # one TP of IoU 1 over TP + FP = 3
    out = r.to_json()
    assert list(out) == ["map", "classes", "at_conf_0.25"]
    assert out["classes"][0] == {"class_id": 0, "name": "a", "ap": pytest.approx(0.5), "tp": 1, "fp": 2}
    assert set(out["at_conf_0.25"]) == {"precision", "recall", "f1", "tp", "fp", "fn", "avg_iou"}
    assert any("mean average precision (mAP@0.50) = 0.333333" in line for line in r.darknet_lines())


def test_at_threshold_tp_goes_to_the_first_box_in_image_order_like_darknet():
    # Two boxes on the same truth: the first (in box order) is below conf_thresh, the second above.  Darknet
    # counts the second as an FP at the threshold (an earlier detection took the truth), though it ranks first.
    truth = torch.tensor([[0, 0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2]])
    acc = MapAccumulator(1)
    acc.add(boxes, one_hot([(0, 0.1), (0, 0.9)], 1), truth)
    r = acc.result()
    assert (r.tp, r.fp) == (0, 1)
    assert r.classes[0].ap == pytest.approx(1.0)  # in the ranking the 0.9 box comes first and is the TP


def test_difficult_detections_leave_the_ranking_but_count_at_threshold():
    acc = MapAccumulator(1)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    acc.add(boxes, one_hot([(0, 0.9), (0, 0.5)], 1), torch.tensor([[0, 0.2, 0.2, 0.1, 0.1]]),
            difficult=torch.tensor([[0, 0.5, 0.5, 0.2, 0.2]]))
    r = acc.result()
    assert r.detections == 1 and r.classes[0].ap == 1.0 and (r.tp, r.fp) == (1, 1)


def darknet_reference(images, classes, iou_thresh, points, conf_thresh):
    """A literal, slow port of validate_detector_map's loops (box.c IoU in float32 through torch)."""
    detections = []
    unique_truth_count = 0
    truth_classes_count = [0] * classes
    tp_at, fp_at = [0] * classes, [0] * classes
    avg_iou = 0.0
    for image_index, (boxes, probs, truth) in enumerate(images):
        for t in truth:
            truth_classes_count[int(t[0])] += 1
        checkpoint = len(detections)
        for i in range(boxes.shape[0]):
            for class_id in range(classes):
                prob = float(probs[i, class_id])
                if not prob > 0.005:
                    continue
                truth_index, max_iou = -1, 0.0
                for j in range(truth.shape[0]):
                    iou = float(darknet_box_iou(boxes[i:i + 1], truth[j:j + 1, 1:])[0, 0])
                    if torch.tensor(iou) > iou_thresh and class_id == int(truth[j, 0]) and iou > max_iou:
                        max_iou, truth_index = iou, unique_truth_count + j
                detections.append((prob, image_index, class_id, truth_index))
                if torch.tensor(prob) > conf_thresh:
                    found = any(d[3] == truth_index for d in detections[checkpoint:-1])
                    if truth_index > -1 and not found:
                        avg_iou += max_iou
                        tp_at[class_id] += 1
                    else:
                        fp_at[class_id] += 1
        unique_truth_count += truth.shape[0]
    detections.sort(key=lambda d: -d[0])  # Python's sort is stable, as glibc's merge-sort qsort
    n = len(detections)
    pr = [[None] * n for _ in range(classes)]
    tp, fp = [0] * classes, [0] * classes
    truth_flags = [0] * unique_truth_count
    for rank, (_, _, class_id, truth_index) in enumerate(detections):
        if truth_index >= 0 and not truth_flags[truth_index]:
            truth_flags[truth_index] = 1
            tp[class_id] += 1
        else:
            fp[class_id] += 1
        for c in range(classes):
            fn = truth_classes_count[c] - tp[c]
            precision = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
            recall = tp[c] / (tp[c] + fn) if tp[c] + fn else 0.0
            pr[c][rank] = (precision, recall)
    aps = []
    for c in range(classes):
        ap = 0.0
        if n and points == 0:
            last_recall, last_precision = pr[c][n - 1][1], pr[c][n - 1][0]
            for rank in range(n - 2, -1, -1):
                delta = last_recall - pr[c][rank][1]
                last_recall = pr[c][rank][1]
                last_precision = max(last_precision, pr[c][rank][0])
                ap += delta * last_precision
            ap += last_recall * last_precision
        elif n:
            for point in range(points):
                r = point * 1.0 / (points - 1)
                ap += max([p for p, rec in pr[c] if rec >= r], default=0.0)
            ap /= points
        aps.append(ap)
    return aps, tp_at, fp_at, avg_iou


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("points", [0, 11, 101])
def test_matches_a_literal_port_of_darknets_loops(seed, points):
    rng = random.Random(seed)
    classes = 3
    images = []
    for _ in range(4):
        truth = torch.tensor([[rng.randrange(classes), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8),
                               rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4)] for _ in range(rng.randrange(4))])
        truth = truth.reshape(-1, 5)
        boxes = []
        for _ in range(rng.randrange(1, 9)):
            if truth.shape[0] and rng.random() < 0.7:  # near a truth
                t = truth[rng.randrange(truth.shape[0]), 1:].tolist()
                boxes.append([v + rng.uniform(-0.03, 0.03) for v in t])
            else:
                boxes.append([rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.4),
                              rng.uniform(0.05, 0.4)])
        probs = torch.tensor([[rng.choice([0.0, rng.random(), round(rng.random(), 1)]) for _ in range(classes)]
                              for _ in boxes])
        images.append((torch.tensor(boxes), probs, truth))
    iou_thresh = rng.choice([0.5, 0.75, 0.3])
    acc = MapAccumulator(classes, iou_thresh=iou_thresh, points=points, conf_thresh=0.25)
    for boxes, probs, truth in images:
        acc.add(boxes, probs, truth)
    result = acc.result()
    aps, tp_at, fp_at, iou_sum = darknet_reference(images, classes, iou_thresh, points, 0.25)
    assert [c.ap for c in result.classes] == pytest.approx(aps, abs=1e-12)
    assert [c.tp for c in result.classes] == tp_at and [c.fp for c in result.classes] == fp_at
    assert result.map == pytest.approx(sum(aps) / classes, abs=1e-12)
    total = sum(tp_at) + sum(fp_at)
    assert result.avg_iou == pytest.approx(iou_sum / total if total else 0.0, abs=1e-6)


def test_bad_shapes_and_classes():
    acc = MapAccumulator(2)
    with pytest.raises(ValueError, match=r"probs must be \(K, 2\)"):
        acc.add(torch.zeros(1, 4), torch.zeros(1, 3), torch.zeros(0, 5))
    with pytest.raises(ValueError, match="truth class ids"):
        acc.add(torch.zeros(1, 4), torch.zeros(1, 2), torch.tensor([[2, 0.5, 0.5, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="points must be one of"):
        MapAccumulator(2, points=5)


def test_coco_metrics_equal_cocoeval_on_the_same_json():
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    acc = MapAccumulator(2, ["a", "b"], coco=True)
    gen = torch.Generator().manual_seed(0)
    for n in range(5):
        truth = torch.cat([torch.randint(0, 2, (3, 1)).float(), 0.3 + 0.4 * torch.rand(3, 2, generator=gen),
                           0.1 + 0.3 * torch.rand(3, 2, generator=gen)], 1)
        boxes = torch.cat([truth[:, 1:] + 0.02 * torch.randn(3, 4, generator=gen), torch.rand(4, 4) * 0.5 + 0.2])
        probs = torch.rand(7, 2, generator=gen)
        acc.add(boxes, probs, truth, image_size=(320 + 10 * n, 240))
    result = acc.result()
    gt, dets = acc.coco_json()
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert list(result.coco.values()) == pytest.approx(list(ev.stats), abs=1e-12)
    assert coco_metrics(gt, dets) == result.coco
    assert 0 < result.coco["ap50"] <= 1 and "coco" in result.to_json()


def test_evaluate_map_is_the_accumulator_over_an_iterable():
    from netspec.evaluate import evaluate_map

    truth = torch.tensor([[0, 0.5, 0.5, 0.2, 0.2]])
    samples = [(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), one_hot([(0, 0.9)], 2), truth),
               (torch.tensor([[0.1, 0.1, 0.1, 0.1]]), one_hot([(1, 0.6)], 2), truth)]
    result = evaluate_map(samples, 2, points=11)
    assert result.classes[0].ap == pytest.approx(6 / 11) and result.map == pytest.approx(3 / 11)  # recall 0 .. 0.5
    assert (result.tp, result.fp, result.fn, result.images) == (1, 1, 1, 2)


def test_coco_without_pycocotools_is_a_clear_error(monkeypatch):
    import sys

    from netspec.errors import NetspecError

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as when it is not installed
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(NetspecError, match=r"pip install 'netspec\[coco\]'"):
        coco_metrics({"images": [], "annotations": [], "categories": []}, [{"image_id": 1}])
