"""Darknet's resize_image / letterbox_image against a direct per-pixel re-computation of its formulas
(float32 scalars, one loop iteration per pixel), and image decoding as stb_image does it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import netspec
from netspec.images import ImageError, letterbox_geometry, load_image, resize_image

f32 = np.float32


def reference_resize(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """image.c resize_image, pixel by pixel in float32."""
    c_n, in_h, in_w = im.shape
    if (in_w, in_h) == (w, h):
        return im.copy()
    part = np.zeros((c_n, in_h, w), np.float32)
    w_scale = f32(in_w - 1) / f32(w - 1) if w > 1 else f32(np.inf)
    h_scale = f32(in_h - 1) / f32(h - 1) if h > 1 else f32(0)
    for k in range(c_n):
        for r in range(in_h):
            for c in range(w):
                if c == w - 1 or in_w == 1:
                    val = im[k, r, in_w - 1]
                else:
                    sx = f32(c) * w_scale
                    ix = int(sx)
                    dx = f32(sx - f32(ix))
                    val = f32(f32(f32(1) - dx) * im[k, r, ix]) + f32(dx * im[k, r, ix + 1])
                part[k, r, c] = val
    out = np.zeros((c_n, h, w), np.float32)
    for k in range(c_n):
        for r in range(h):
            sy = f32(f32(r) * h_scale)
            iy = int(sy)
            dy = f32(sy - f32(iy))
            for c in range(w):
                out[k, r, c] = f32(f32(1) - dy) * part[k, iy, c]
            if r == h - 1 or in_h == 1:
                continue
            for c in range(w):
                out[k, r, c] = f32(out[k, r, c] + f32(dy * part[k, iy + 1, c]))
    return out


def reference_letterbox(im: np.ndarray, w: int, h: int) -> np.ndarray:
    _, in_h, in_w = im.shape
    if f32(w) / f32(in_w) < f32(h) / f32(in_h):
        new_w, new_h = w, (in_h * w) // in_w
    else:
        new_w, new_h = (in_w * h) // in_h, h
    resized = reference_resize(im, new_w, new_h)
    boxed = np.full((im.shape[0], h, w), 0.5, np.float32)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    for k in range(im.shape[0]):
        for y in range(new_h):
            for x in range(new_w):
                if 0 <= dx + x < w and 0 <= dy + y < h:
                    boxed[k, dy + y, dx + x] = resized[k, y, x]
    return boxed


def _image(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (3, h, w)) / 255.0).astype(np.float32)


@pytest.mark.parametrize("size,target", [((13, 7), (9, 11)), ((5, 6), (16, 4)), ((17, 9), (17, 20)),
                                         ((1, 4), (3, 5)), ((6, 1), (3, 4)), ((8, 8), (1, 3)),
                                         ((7, 7), (7, 7)), ((31, 23), (29, 31))])
def test_resize_image_equals_darknet_per_pixel(size, target):
    im = _image(*size)
    expected = reference_resize(im, *target)
    got = resize_image(torch.from_numpy(im), *target).numpy()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_resize_image_last_row_quirk_is_reproduced():
    # 480 -> 416 rows: 415 * (479/415 in float32) rounds below 479, so Darknet's last row is (1 - dy) of
    # the row above it, nearly black; we reproduce what Darknet computes, not what it meant.
    sy = f32(415) * (f32(479) / f32(415))
    im = np.ones((1, 480, 2), np.float32)
    got = resize_image(torch.from_numpy(im), 2, 416).numpy()
    np.testing.assert_array_equal(got[0, -1], reference_resize(im, 2, 416)[0, -1])
    if int(sy) < 479:
        assert got[0, -1, 0] < 0.01


@pytest.mark.parametrize("size,target", [((13, 7), (16, 16)), ((7, 13), (16, 12)), ((20, 10), (10, 10)),
                                         ((9, 9), (12, 8)), ((50, 8), (8, 8))])
def test_letterbox_equals_darknet_per_pixel(size, target):
    im = _image(*size, seed=1)
    expected = reference_letterbox(im, *target)
    got = netspec.letterbox(torch.from_numpy(im), *target).numpy()
    np.testing.assert_array_equal(got, expected)


def test_letterbox_geometry_is_integer_and_centred():
    assert letterbox_geometry(640, 480, 416, 416) == (416, 312)
    assert letterbox_geometry(480, 640, 416, 416) == (312, 416)
    out = netspec.letterbox(torch.zeros(3, 480, 640), 416, 416)
    assert out.shape == (3, 416, 416)
    assert (out[:, :52] == 0.5).all() and (out[:, 52:364] == 0).all() and (out[:, 364:] == 0.5).all()


def test_batched_resize_equals_per_image():
    batch = torch.rand(2, 3, 10, 12)
    both = resize_image(batch, 7, 9)
    assert torch.equal(both[1], resize_image(batch[1], 7, 9))


def test_load_image_formats_and_conversions(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).double().div(255).float()
    for ext in ("png", "bmp", "webp"):
        path = tmp_path / f"x.{ext}"
        Image.fromarray(rgb).save(path, **({"lossless": True} if ext == "webp" else {}))
        assert torch.equal(load_image(path), expected), ext
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    assert load_image(str(tmp_path / "x.jpg")).shape == (3, 5, 7)
    # RGBA: alpha dropped (stb_image with 3 channels), not composited
    rgba = np.concatenate([rgb, np.zeros((5, 7, 1), np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png"), expected)
    # grey: replicated; arrays and PIL images accepted directly
    grey = rgb[:, :, 0]
    assert torch.equal(load_image(grey), expected[:1].expand(3, -1, -1))
    assert torch.equal(load_image(Image.fromarray(rgb)), expected)
    assert torch.equal(load_image(rgba), expected)
    # 16-bit grey PNG: stb keeps the high byte
    deep = (grey.astype(np.uint16) << 8) | 0x7F
    Image.fromarray(deep.astype(np.uint16)).save(tmp_path / "d.png")
    assert torch.equal(load_image(tmp_path / "d.png"), expected[:1].expand(3, -1, -1))


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for path, text in ((bad, "not an image"), (tmp_path / "missing.png", "no such file"), (tmp_path, "directory")):
        with pytest.raises(ImageError, match=text):
            load_image(path)
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError):
        load_image(42)
    assert issubclass(ImageError, netspec.NetspecError)
