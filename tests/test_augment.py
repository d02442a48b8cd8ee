"""Detector-training data (netspec/augment.py, netspec/detection_data.py): every augmentation key's box geometry
against a direct computation or against where the object's pixels land, flips, determinism across workers and
resumes, multi-scale sizes, and cfg data keys netspec does not honour being errors at their line."""

from __future__ import annotations

import colorsys
import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

import netspec
from netspec.augment import (
    AugmentSettings,
    Crop,
    augment_one,
    blend_truth,
    crop_resize,
    distort_hsv,
    draw_crop,
    fill_truth,
)
from netspec.datasets import LabelledSet
from netspec.detection_data import DetectionDataset, make_loader, multiscale_size
from netspec.errors import CfgError

from .conftest import CFGS

BG, FG = (40, 90, 60), (250, 20, 200)


def settings(**kw) -> AugmentSettings:
    base = dict(width=96, height=64, classes=3, jitter=0.0, flip=False)
    base.update(kw)
    return AugmentSettings(**base)


def painted(ow=200, oh=150, boxes=((1, 0.4, 0.5, 0.3, 0.4),), bg=BG):
    """A flat picture with each labelled box painted in FG: the label is exactly where the object is."""
    a = np.empty((oh, ow, 3), np.uint8)
    a[:] = bg
    for _, x, y, w, h in boxes:
        a[round((y - h / 2) * oh):round((y + h / 2) * oh), round((x - w / 2) * ow):round((x + w / 2) * ow)] = FG
    return Image.fromarray(a), np.asarray(boxes, np.float32).reshape(-1, 5)


def object_box(pixels: np.ndarray) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels of the FG-coloured region of an output image."""
    ys, xs = np.nonzero(np.abs(pixels.astype(int) - FG).sum(-1) < 150)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def truth_box(t, w, h):
    x, y, bw, bh = t[:4]
    return (x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h


def run(s: AugmentSettings, pictures, seed=0, w=None, h=None):
    rng = np.random.Generator(np.random.PCG64(seed))
    return augment_one(rng, 0, len(pictures), lambda i: pictures[i], s, w or s.width, h or s.height)


# ---------------------------------------------------------------- box geometry
def darknet_box(label, crop: Crop):
    """correct_boxes written out in picture pixels: the box's edges move with the crop, mirror, clip to [0, 1]."""
    _, x, y, w, h = label
    left = ((x - w / 2) * crop.ow - crop.pleft) / crop.swidth
    right = ((x + w / 2) * crop.ow - crop.pleft) / crop.swidth
    top = ((y - h / 2) * crop.oh - crop.ptop) / crop.sheight
    bottom = ((y + h / 2) * crop.oh - crop.ptop) / crop.sheight
    if crop.flip:
        left, right = 1 - right, 1 - left
    left, right, top, bottom = (min(max(v, 0.0), 1.0) for v in (left, right, top, bottom))
    return (left + right) / 2, (top + bottom) / 2, right - left, bottom - top


@pytest.mark.parametrize("key", [{"jitter": 0.3}, {"resize": 1.5}, {"resize": 0.6}, {"letter_box": True},
                                 {"flip": True, "jitter": 0.2}])
def test_fill_truth_is_darknets_correct_boxes(key):
    s = settings(**key)
    rng = np.random.Generator(np.random.PCG64(7))
    labels = np.array([[0, 0.3, 0.4, 0.2, 0.3], [1, 0.7, 0.6, 0.4, 0.2], [2, 0.5, 0.5, 0.9, 0.9]], np.float32)
    for _ in range(40):
        crop = draw_crop(rng, 200, 150, s.width, s.height, s)
        truth, _ = fill_truth(labels, crop, s.width, s.height, 3, 200, np.random.Generator(np.random.PCG64(0)))
        expected = {int(lab[0]): darknet_box(lab, crop) for lab in labels}
        for x, y, w, h, c in truth:
            assert np.allclose((x, y, w, h), expected[int(c)], atol=2e-6)
        kept = {int(c) for c in truth[:, 4]}
        for c, (x, y, w, h) in expected.items():
            assert (c in kept) == (w >= 1 / s.width and h >= 1 / s.height and 0 < x <= 1 and 0 < y <= 1)


def test_jitter_and_resize_bound_the_crop_as_darknet():
    rng = np.random.Generator(np.random.PCG64(1))
    for kw, lo, hi in [({"jitter": 0.25}, -50, 50), ({"resize": 2.0}, -100, 50), ({"resize": 0.5}, -100, 0)]:
        s = settings(**kw)
        sides = []
        for _ in range(300):
            c = draw_crop(rng, 200, 150, 96, 64, s)
            sides += [c.pleft, c.pright]
            assert c.swidth == 200 - c.pleft - c.pright and c.sheight == 150 - c.ptop - c.pbot
        assert lo <= min(sides) < lo * 0.8 if lo else min(sides) == 0
        assert hi * 0.8 < max(sides) <= hi if hi else max(sides) == 0
    # resize keeps the picture's aspect: the left/top and right/bottom shifts share their random numbers
    for seed in range(10):
        c = draw_crop(np.random.Generator(np.random.PCG64(seed)), 200, 100, 96, 64, settings(resize=3.0))
        assert abs(c.pleft - 2 * c.ptop) <= 2 and abs(c.pright - 2 * c.pbot) <= 2


def test_letter_box_widens_the_crop_to_the_network_aspect():
    s = settings(letter_box=True)
    for ow, oh in [(200, 150), (100, 300), (96, 64)]:
        c = draw_crop(np.random.Generator(np.random.PCG64(0)), ow, oh, 96, 64, s)
        assert abs(c.swidth / c.sheight - 96 / 64) < 0.02
        assert min(c.swidth - ow, c.sheight - oh) in (0, -1, 1) and c.swidth >= ow - 1 and c.sheight >= oh - 1


@pytest.mark.parametrize("key", [{}, {"jitter": 0.3}, {"flip": True}, {"resize": 1.5, "jitter": 0.1},
                                 {"letter_box": True, "jitter": 0.1}])
def test_boxes_are_where_the_object_lands(key):
    """Whatever the crop, the truth box covers the painted object's pixels in the output (to a pixel)."""
    s = settings(**key)
    pic = painted()
    for seed in range(12):
        pixels, truth = run(s, [pic], seed)
        if len(truth) == 0:
            continue
        assert len(truth) == 1 and truth[0, 4] == 1
        got = object_box(pixels)
        want = truth_box(truth[0], s.width, s.height)
        assert np.allclose(got, want, atol=1.6), (seed, got, want)


def test_flip_mirrors_image_and_boxes():
    pic = painted(boxes=((0, 0.2, 0.3, 0.2, 0.2),))
    plain = crop_resize(pic[0], Crop(200, 150, 0, 0, 0, 0, 200, 150), 96, 64)
    flipped = crop_resize(pic[0], Crop(200, 150, 0, 0, 0, 0, 200, 150, flip=True), 96, 64)
    assert np.array_equal(np.asarray(flipped), np.asarray(plain)[:, ::-1])
    crop = Crop(200, 150, 10, 5, -20, 8, 210, 137, flip=True)
    (x, y, w, h, _), = fill_truth(pic[1], crop, 96, 64, 3, 200, np.random.Generator(np.random.PCG64(0)))[0]
    (x0, y0, w0, h0, _), = fill_truth(pic[1], dataclasses.replace(crop, flip=False), 96, 64, 3, 200,
                                      np.random.Generator(np.random.PCG64(0)))[0]
    assert np.allclose((x, y, w, h), (1 - x0, y0, w0, h0), atol=1e-6)
    seen = {bool(draw_crop(np.random.Generator(np.random.PCG64(i)), 200, 150, 96, 64, settings(flip=True)).flip)
            for i in range(20)}
    assert seen == {True, False}
    assert not any(draw_crop(np.random.Generator(np.random.PCG64(i)), 200, 150, 96, 64, settings()).flip
                   for i in range(20))


def test_crop_outside_the_picture_is_filled_with_its_mean_colour():
    img = Image.fromarray(np.array([[[0, 0, 0], [200, 100, 50]]], np.uint8).repeat(4, 0).repeat(5, 1))  # 4x10
    out = np.asarray(crop_resize(img, Crop(10, 4, -10, 0, 0, 0, 20, 4), 20, 4))
    assert (out[:, :10] == (100, 50, 25)).all()
    assert np.array_equal(out[:, 10:], np.asarray(img))


def test_crop_resize_is_bilinear_with_half_pixel_centres():
    a = np.random.Generator(np.random.PCG64(0)).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    crop = Crop(53, 37, 3, 4, 10, 3, 40, 30)
    out = np.asarray(crop_resize(Image.fromarray(a), crop, 64, 48)).astype(float)
    src = torch.tensor(a[4:34, 3:43]).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(src, size=(48, 64), mode="bilinear", align_corners=False)
    assert np.abs(out - ref[0].permute(1, 2, 0).numpy()).max() <= 1.0


@pytest.mark.parametrize("flip", [False, True])
def test_a_region_renders_as_that_part_of_the_whole(flip):
    a = np.random.Generator(np.random.PCG64(1)).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    for crop in (Crop(200, 150, -20, 10, 15, -30, 205, 170, flip), Crop(200, 150, 0, 0, 0, 0, 200, 150, flip),
                 Crop(96, 64, 0, 0, 0, 0, 96, 64, flip)):
        img = Image.fromarray(a[:crop.oh, :crop.ow])
        whole = np.asarray(crop_resize(img, crop, 96, 64)).astype(int)
        for region in ((0, 0, 96, 64), (10, 5, 40, 30), (50, 20, 46, 44)):
            x, y, w, h = region
            part = np.asarray(crop_resize(img, crop, 96, 64, region)).astype(int)
            assert part.shape == (h, w, 3)
            assert np.abs(part - whole[y:y + h, x:x + w]).max() <= 1


def test_small_boxes_are_dropped_and_max_boxes_cuts_before_filtering():
    labels = np.array([[0, 0.5, 0.5, 0.004, 0.3], [1, 0.3, 0.3, 0.2, 0.2], [2, 0.7, 0.7, 0.2, 0.2]], np.float32)
    crop = Crop(200, 150, 0, 0, 0, 0, 200, 150)
    truth, min_side = fill_truth(labels, crop, 96, 64, 3, 200, np.random.Generator(np.random.PCG64(0)))
    assert sorted(truth[:, 4].tolist()) == [1, 2]  # 0.004 * 96 < 1 pixel: dropped
    assert min_side == math.trunc(0.2 * 64)
    counts = {len(fill_truth(labels, crop, 96, 64, 3, 2, np.random.Generator(np.random.PCG64(i)))[0])
              for i in range(30)}
    assert counts == {1, 2}  # two of the shuffled three are kept, then the thin one (if among them) is dropped
    bad = np.array([[0, 0, 0, 0.2, 0.2], [1, 1.5, 0.5, 0.2, 0.2], [2, 0.5, 0.5, 0.2, 0.2]], np.float32)
    truth, _ = fill_truth(bad, crop, 96, 64, 3, 200, np.random.Generator(np.random.PCG64(0)))
    assert truth[:, 4].tolist() == [2]  # x=y=0 and a box wholly outside are Darknet's "wrong annotations"


@pytest.mark.parametrize("letter_box", [False, True])
def test_mosaic_tiles_and_boxes(letter_box):
    s = settings(mosaic=True, jitter=0.2, width=128, height=128, letter_box=letter_box)
    backgrounds = [(40, 90, 60), (90, 40, 60), (60, 60, 140)]
    pics = [painted(160 if i else 200, 160 if i else 120, ((i, 0.5, 0.5, 0.3, 0.3),), bg)
            for i, bg in enumerate(backgrounds)]
    mosaics = 0
    for seed in range(16):
        pixels, truth = run(s, pics, seed)
        assert pixels.shape == (128, 128, 3)
        shown = [(np.abs(pixels.astype(int) - bg).sum(-1) < 12).mean() > 0.03 for bg in backgrounds]
        mosaics += sum(shown) > 1
        for t in truth:
            left, top, right, bottom = truth_box(t, 128, 128)
            if min(right - left, bottom - top) < 6:
                continue  # a sliver at a tile's edge (Darknet keeps those; too thin to look inside)
            inside = pixels[int(top) + 2:int(bottom) - 1, int(left) + 2:int(right) - 1]
            # each kept box is (mostly) the painted object: with Darknet's rules a box may cross into a tile
            # that shows another picture, but its own object fills most of it
            assert (np.abs(inside.astype(int) - FG).sum(-1) < 150).mean() > 0.2
    assert 3 <= mosaics <= 13  # mosaic is used for about half of the images


def test_mosaic_bound_keeps_boxes_in_their_tile():
    s = settings(mosaic=True, mosaic_bound=True, jitter=0.3, width=128, height=128)
    pics = [painted(160, 160, ((0, 0.3, 0.3, 0.6, 0.6), (1, 0.7, 0.7, 0.6, 0.6)))]
    rng = np.random.Generator(np.random.PCG64(5))
    for _ in range(10):
        pixels, truth = augment_one(rng, 0, 1, lambda i: pics[0], s, 128, 128)
        assert ((truth[:, :4] >= 0) & (truth[:, :4] <= 1)).all()
        assert (truth[:, 2] < 1).all() and (truth[:, 3] < 1).all()


def test_mosaic_bound_boxes_are_the_objects_in_their_tiles():
    """Without jitter each tile shows its picture's corner nearest the cut; a bound box is its object's pixels."""
    s = settings(mosaic=True, mosaic_bound=True, width=128, height=128)
    pics = [painted(128, 128, ((0, 0.5, 0.5, 0.3, 0.4), (1, 0.15, 0.8, 0.2, 0.2)))]
    checked = 0
    for seed in range(20):
        rng = np.random.Generator(np.random.PCG64(seed))
        pixels, truth = augment_one(rng, 0, 1, lambda i: pics[0], s, 128, 128)
        fg = np.abs(pixels.astype(int) - FG).sum(-1) < 150
        if len(truth) == 0 or fg.all():
            continue
        for t in truth:
            left, top, right, bottom = truth_box(t, 128, 128)
            cx, cy = int((left + right) / 2), int((top + bottom) / 2)
            # the connected FG run through the box centre, inside the box's tile
            row, col = fg[cy], fg[:, cx]
            x0 = cx - np.argmin(row[cx::-1]) + 1 if not row[cx::-1].all() else 0
            x1 = cx + (np.argmin(row[cx:]) if not row[cx:].all() else 128 - cx)
            y0 = cy - np.argmin(col[cy::-1]) + 1 if not col[cy::-1].all() else 0
            y1 = cy + (np.argmin(col[cy:]) if not col[cy:].all() else 128 - cy)
            assert fg[cy, cx]
            assert abs(x0 - left) <= 1 and abs(x1 - right) <= 1 and abs(y0 - top) <= 1 and abs(y1 - bottom) <= 1
            checked += 1
    assert checked >= 10


def test_mosaic_tile_copy_and_box_shift_agree():
    """For any cut point and border shifts, a box moved by mosaic_truth lands on the pixels place_mosaic_tile
    copied from under it (pieces whose pixels hold their own coordinates)."""
    from netspec.augment import mosaic_truth, place_mosaic_tile

    w = h = 128
    yy, xx = np.mgrid[0:h, 0:w]
    piece = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    rng = np.random.Generator(np.random.PCG64(0))
    for _ in range(40):
        cut_x, cut_y = (int(v) for v in rng.integers(26, 103, 2))
        k = int(rng.integers(0, 4))
        shifts = (int(rng.integers(0, cut_x // 2 + 1)), int(rng.integers(0, (w - cut_x) // 2 + 1)),
                  int(rng.integers(0, cut_y // 2 + 1)), int(rng.integers(0, (h - cut_y) // 2 + 1)))
        left_shift, right_shift, top_shift, bot_shift = shifts
        # the piece's region that lands in tile k, and a small box at its centre
        x0 = w - cut_x - right_shift if k in (0, 2) else left_shift
        y0 = h - cut_y - bot_shift if k < 2 else top_shift
        tw, th = (cut_x if k in (0, 2) else w - cut_x), (cut_y if k < 2 else h - cut_y)
        px, py = x0 + tw // 2, y0 + th // 2
        box = np.array([[(px + 0.5) / w, (py + 0.5) / h, 4 / w, 4 / h, 1]], np.float32)
        canvas = np.zeros_like(piece)
        place_mosaic_tile(canvas, piece, k, cut_x, cut_y, shifts)
        (nx, ny, nw, nh, c), = mosaic_truth(np.zeros((0, 5), np.float32), box, k, w, h, cut_x, cut_y, shifts, 200,
                                            False)
        assert (nw, nh, c) == pytest.approx((4 / w, 4 / h, 1))
        assert tuple(canvas[int(ny * h), int(nx * w), :2]) == (px, py)


def test_mixup_averages_two_pictures_and_keeps_both_boxes():
    s = settings(mixup=True)
    a = painted(boxes=((0, 0.25, 0.5, 0.3, 0.4),))
    b = painted(boxes=((2, 0.75, 0.5, 0.3, 0.4),))
    mixed = 0
    for seed in range(12):
        pixels, truth = run(s, [a, b], seed)
        if pixels.dtype == np.float32:
            mixed += 1
            assert len(truth) >= 1 and len(truth) <= 2
            assert np.allclose(pixels[0, 0], BG, atol=1)  # background: the mean of two backgrounds
    assert 2 <= mixed <= 10
    first = np.zeros((3, 5), np.float32)
    second = np.ones((4, 5), np.float32)
    assert np.array_equal(blend_truth(first, second, 5), np.concatenate([first, second[:2]]))


def test_hsv_jitter_matches_a_direct_hsv_computation():
    img = Image.fromarray(np.array([[[200, 80, 40], [30, 120, 220]]], np.uint8))
    out = np.asarray(distort_hsv(img, 0.1, 0.5, 1.2)).astype(float) / 255
    for (r, g, b), got in zip(np.asarray(img)[0] / 255.0, out[0]):
        hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)
        want = colorsys.hsv_to_rgb((hh + 0.1) % 1, ss * 0.5, min(vv * 1.2, 1))
        assert np.allclose(got, want, atol=0.025)
    grey = Image.fromarray(np.array([[10, 100, 250]], np.uint8))
    assert np.asarray(distort_hsv(grey, 0.3, 2.0, 1.5)).tolist() == [[15, 150, 255]]
    assert distort_hsv(img, 0, 1, 1) is img


def test_hsv_keys_draw_darknets_factors():
    s = settings(hue=0.1, saturation=1.5, exposure=2.0)
    crops = [draw_crop(np.random.Generator(np.random.PCG64(i)), 200, 150, 96, 64, s) for i in range(200)]
    assert all(-0.1 <= c.dhue <= 0.1 for c in crops)
    assert all(1 / 1.5 <= c.dsat <= 1.5 and 0.5 <= c.dexp <= 2 for c in crops)
    assert sum(c.dexp < 1 for c in crops) > 50 and sum(c.dexp > 1 for c in crops) > 50  # x or 1/x


def test_blur_background_keeps_objects_sharp():
    rng = np.random.Generator(np.random.PCG64(0))
    a = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    pic = (Image.fromarray(a), np.array([[0, 0.5, 0.5, 0.5, 0.5]], np.float32))
    s = settings(blur=1)
    kinds = set()
    for seed in range(12):
        pixels, truth = run(s, [pic], seed)
        inner = slice(17, 47), slice(25, 71)
        same_inside = np.array_equal(pixels[inner], a[inner])
        same_outside = np.array_equal(pixels[:8], a[:8])
        kinds.add((same_inside, same_outside))
    assert kinds == {(True, True), (True, False)}  # no blur, or background only (blur=1 never blurs objects)
    s = settings(blur=9)
    kinds = {tuple(np.array_equal(run(s, [pic], i)[0][r], a[r]) for r in ((slice(20, 40), slice(30, 60)),
                                                                          (slice(0, 8),)))
             for i in range(15)}
    assert (False, False) in kinds  # blur=9 blurs the whole image sometimes


def test_gaussian_noise_only_brightens():
    pic = painted()
    s = settings(gaussian_noise=20)
    noisy = 0
    for seed in range(10):
        pixels, _ = run(s, [pic], seed)
        clean, _ = run(settings(), [pic], seed)
        d = pixels.astype(int) - clean.astype(int)
        assert (d >= 0).all()
        if d.any():
            noisy += 1
            assert 5 < d[d > 0].mean() < 30
    assert 2 <= noisy <= 9


# ---------------------------------------------------------------- cfg keys
def _cfg(extra_net: str = "", extra_head: str = "") -> str:
    """The demo cfg with more [net] lines (a "key = value" without a newline replaces that key's line)."""
    text = (CFGS / "shapes-tiny.cfg").read_text()
    if extra_net and not extra_net.endswith("\n"):
        key = extra_net.split("=")[0].strip()
        text = "\n".join(extra_net if line.startswith(f"{key} =") else line for line in text.splitlines()) + "\n"
    else:
        text = text.replace("hue = .05\n", "hue = .05\n" + extra_net)
    return text.replace("random = 0\n", "random = 0\n" + extra_head) if extra_head else text


def test_settings_from_the_demo_cfg():
    s, warnings = AugmentSettings.from_spec(netspec.build_spec(CFGS / "shapes-tiny.cfg"))
    assert (s.width, s.height, s.classes, s.max_boxes, s.stride) == (128, 128, 3, 200, 16)
    assert (s.hue, s.saturation, s.exposure, s.flip, s.jitter) == (0.05, 1.5, 1.5, True, 0.2)
    assert warnings == []


@pytest.mark.parametrize("extra, key, words", [
    ("angle = 5\n", "angle", "never rotates"),
    ("cutmix = 1\n", "cutmix", "not supported for detectors"),
    ("mosaic = 1\nmixup = 1\n", "mixup", "no effect with mosaic"),
    ("mosaic_bound = 1\n", "mosaic_bound", "without mosaic"),
    ("flip = 0.5", "flip", "integer"),
    ("contrastive = 1\n", "contrastive", "not implemented"),
    ("track = 1\n", "track", "not implemented"),
    ("aspect = 1.2\n", "aspect", "classifier"),
    ("saturation = 0", "saturation", "> 0"),
])
def test_data_keys_not_honoured_are_errors_at_their_line(extra, key, words):
    text = _cfg(extra)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(f"{key} ="))
    with pytest.raises(CfgError) as info:
        AugmentSettings.from_spec(netspec.build_spec(text))
    problem = next(p for p in info.value.problems if f"{key}" in p.message)
    assert problem.line == line and words in problem.message, str(info.value)


def test_head_keys_use_the_last_head_and_warn_when_heads_differ():
    text = _cfg()
    first = text.index("jitter = .2")
    text = text[:first] + "jitter = .3" + text[first + len("jitter = .2"):]
    s, warnings = AugmentSettings.from_spec(netspec.build_spec(text))
    assert s.jitter == 0.2 and len(warnings) == 1 and "jitter=0.3" in warnings[0].message
    with pytest.raises(CfgError, match="jitter must be in"):
        AugmentSettings.from_spec(netspec.build_spec(text.replace("jitter = .3", "jitter = .6")
                                                     .replace("jitter = .2", "jitter = .6")))


def test_resize_step_must_be_a_multiple_of_the_stride():
    text = _cfg("resize_step = 24\n").replace("random = 0", "random = 1")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("resize_step"))
    with pytest.raises(CfgError, match="multiple of the network's stride 16") as info:
        AugmentSettings.from_spec(netspec.build_spec(text))
    assert info.value.line == line


# ---------------------------------------------------------------- multi-scale
def test_multiscale_sizes_follow_darknets_rule():
    s = settings(width=128, height=96, random=1.0, resize_step=32)
    top = (round(1.4 * 128 / 32 + 1) * 32, round(1.4 * 96 / 32 + 1) * 32)
    assert multiscale_size(s, 0, 1000, 0) == multiscale_size(s, 9, 1000, 0) == top  # first 10: the largest
    assert multiscale_size(s, 910, 1000, 0) == top  # the last 100 too
    sizes = [multiscale_size(s, k, 1000, 0) for k in range(10, 900)]
    assert all(sizes[i] == sizes[i - i % 10] for i in range(len(sizes)))  # changes every 10 iterations only
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in sizes)
    assert all(32 <= w <= top[0] and 32 <= h <= top[1] for w, h in sizes)
    assert len(set(sizes)) >= 4
    assert sizes == [multiscale_size(s, k, 1000, 0) for k in range(10, 900)]  # a function of (seed, iteration)
    assert multiscale_size(settings(), 50, 1000, 0) == (96, 64)  # random=0: the cfg's size


# ---------------------------------------------------------------- loader: determinism across workers/resume
@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    from netspec.datasets import labelled_set
    from netspec.demo_shapes import make_shapes_dataset

    ds = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), train=12, valid=1, seed=2)
    return labelled_set(ds.root / "train.txt", 3)


def test_batches_are_the_same_for_any_worker_count_and_resume(shapes_set):
    s = settings(width=64, height=64, jitter=0.2, flip=True, hue=0.1, saturation=1.5, exposure=1.5, mosaic=True,
                 random=1.0, resize_step=32, stride=32)
    ds = DetectionDataset(shapes_set, s, seed=4)
    full = list(make_loader(ds, 4, stop=4, chunks=2, workers=0, max_batches=200))
    parallel = list(make_loader(ds, 4, stop=4, chunks=2, workers=2, max_batches=200))
    resumed = list(make_loader(ds, 4, start=2, stop=4, chunks=2, workers=1, max_batches=200))
    assert len(full) == 8
    for (a, ta), (b, tb) in zip(full, parallel):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    for (a, ta), (b, tb) in zip(full[4:], resumed):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    images, targets = full[0]
    assert images.dtype == torch.float32 and images.shape == (2, 3, 128, 128) and 0 <= images.min() <= images.max() <= 1
    assert targets.shape[1] == 6 and set(targets[:, 0].tolist()) <= {0.0, 1.0}
    assert ((targets[:, 2:] > 0) & (targets[:, 2:] <= 1)).all() and set(targets[:, 1].tolist()) <= {0.0, 1.0, 2.0}
    other = list(make_loader(DetectionDataset(shapes_set, s, seed=5), 4, stop=1, chunks=2, workers=0))
    assert not torch.equal(other[0][0], full[0][0])


def test_one_channel_cfgs_get_grey_images(shapes_set):
    s = settings(width=64, height=64, channels=1, jitter=0.2, hue=0.1, exposure=1.5, mosaic=True)
    images, targets = next(iter(make_loader(DetectionDataset(shapes_set, s), 4, stop=1, workers=0)))
    assert images.shape == (4, 1, 64, 64) and len(targets)


def test_ranks_split_each_iteration(shapes_set):
    ds = DetectionDataset(shapes_set, settings(width=64, height=64), seed=1)
    whole = list(make_loader(ds, 4, stop=2, workers=0))
    halves = [list(make_loader(ds, 4, stop=2, workers=0, rank=r, world=2)) for r in (0, 1)]
    for k in range(2):
        assert torch.equal(torch.cat([halves[0][k][0], halves[1][k][0]]), whole[k][0])
    with pytest.raises(ValueError, match="does not split"):
        make_loader(ds, 4, stop=1, world=3)


def test_every_picture_once_per_epoch(shapes_set):
    ds = DetectionDataset(shapes_set, settings(width=64, height=64), seed=1)
    sampler = make_loader(ds, 4, stop=3, workers=0).batch_sampler
    pictures = [k.picture for it in range(3) for chunk in sampler.keys(it) for k in chunk]
    assert sorted(pictures) == list(range(12))


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_pictures_and_labels_are_clean_errors_from_workers(tmp_path, workers):
    from netspec.datasets import labelled_set
    from netspec.demo_shapes import make_shapes_dataset
    from netspec.errors import DataError
    from netspec.images import ImageError

    made = make_shapes_dataset(tmp_path, train=2, valid=1)
    label = made.root / "labels" / "train_00001.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    ds = DetectionDataset(labelled_set(made.root / "train.txt", 3), settings(width=64, height=64))
    with pytest.raises(DataError) as info:
        list(make_loader(ds, 2, stop=1, workers=workers))
    assert str(info.value).startswith(f"{label}:2: class id 7") and "Traceback" not in str(info.value)
    label.write_text("")
    made.train[0].write_bytes(b"not a picture")
    with pytest.raises(ImageError, match="not an image Pillow can read") as info:
        list(make_loader(ds, 2, stop=1, workers=workers))
    assert "Traceback" not in str(info.value)


def test_from_data_checks_classes(tmp_path):
    from netspec.demo_shapes import make_shapes_dataset
    from netspec.errors import DataError

    made = make_shapes_dataset(tmp_path, train=2, valid=1)
    ds = DetectionDataset.from_data(made.data, settings())
    assert isinstance(ds.pictures, LabelledSet) and len(ds) == 2
    with pytest.raises(DataError, match="classes=3 but the cfg's heads have classes=2"):
        DetectionDataset.from_data(made.data, settings(classes=2))
