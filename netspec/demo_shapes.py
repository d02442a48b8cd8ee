"""A small labelled detection dataset made on the spot, with no download: coloured shapes (circle, square,
triangle) pasted onto textured, noisy backgrounds at various sizes and positions, in Darknet's layout.

``make_shapes_dataset(out_dir)`` writes::

    out_dir/images/train_00000.jpg ...   the pictures
    out_dir/labels/train_00000.txt ...   YOLO labels: "class x y w h" (centre and size relative to the image)
    out_dir/train.txt, valid.txt         absolute image paths, one a line (Darknet's list files)
    out_dir/obj.names, obj.data          class names; classes/train/valid/names/backup for ``--data``

Every image is a pure function of (seed, split, index), so the same seed gives the same files (with the same
Pillow), and generation is vectorized: a few hundred images take a few seconds.  The class of a shape depends
on its outline only (colours are random), so a detector must learn shape, not colour.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

CLASS_NAMES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ShapesDataset:
    """Where :func:`make_shapes_dataset` put things."""

    root: Path
    data: Path  # obj.data
    train: list[Path]
    valid: list[Path]
    names: tuple[str, ...] = CLASS_NAMES


def _rng(seed: int, split: str, index: int):
    import numpy as np

    digest = hashlib.sha256(f"shapes:{seed}:{split}:{index}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def _background(rng, width: int, height: int):
    """Low-frequency colour blobs + stripes + per-pixel noise, as uint8 (H, W, 3)."""
    import numpy as np
    from PIL import Image

    grid = rng.integers(0, 256, size=(rng.integers(3, 7), rng.integers(3, 7), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 30)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period))
    img = smooth + stripes[..., None] * rng.uniform(0, 40) + rng.normal(0, rng.uniform(4, 20), (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _outline(cls: int, cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of the shape (a 48-gon for the circle/ellipse), rotated by ``angle`` about its centre."""
    if cls == 0:
        pts = [(math.cos(t) / 2, math.sin(t) / 2) for t in (2 * math.pi * k / 48 for k in range(48))]
    elif cls == 1:
        pts = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    else:
        pts = [(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x * w) * c - (y * h) * s, cy + (x * w) * s + (y * h) * c) for x, y in pts]


def _overlaps(box: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + 2 and b[0] - 2 < x1 and y0 < b[3] + 2 and b[1] - 2 < y1 for b in boxes)


def make_image(seed: int, split: str, index: int, width: int = 160, height: int = 160,
               min_size: int = 14, max_size: int = 56, max_objects: int = 4):
    """One picture (a PIL RGB image) and its labels ``[(class, x, y, w, h), ...]`` relative to the image."""
    from PIL import Image, ImageDraw

    rng = _rng(seed, split, index)
    img = Image.fromarray(_background(rng, width, height))
    draw = ImageDraw.Draw(img)
    labels: list[tuple[int, float, float, float, float]] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # rejection sampling: objects never overlap
            cls = int(rng.integers(0, len(CLASS_NAMES)))
            size = float(rng.uniform(min_size, max_size))
            aspect = float(rng.uniform(0.75, 1.33))
            w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
            angle = float(rng.uniform(-0.5, 0.5)) if cls else 0.0
            pts = _outline(cls, float(rng.uniform(0, width)), float(rng.uniform(0, height)), w, h, angle)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            box = (min(xs), min(ys), max(xs), max(ys))
            if box[0] < 1 or box[1] < 1 or box[2] > width - 1 or box[3] > height - 1 or _overlaps(box, placed):
                continue
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            outline = tuple(255 - v for v in fill) if rng.random() < 0.5 else None
            draw.polygon(pts, fill=fill, outline=outline)
            placed.append(box)
            labels.append((cls, (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height,
                           (box[2] - box[0]) / width, (box[3] - box[1]) / height))
            break
    return img, labels


def _write_split(root: Path, split: str, count: int, seed: int, width: int, height: int) -> list[Path]:
    paths = []
    for index in range(count):
        img, labels = make_image(seed, split, index, width, height)
        image_path = root / "images" / f"{split}_{index:05d}.jpg"
        img.save(image_path, quality=92)
        lines = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
        (root / "labels" / f"{split}_{index:05d}.txt").write_text(lines)
        paths.append(image_path)
    (root / f"{split}.txt").write_text("".join(f"{p}\n" for p in paths))
    return paths


def make_shapes_dataset(out_dir: str | os.PathLike, train: int = 400, valid: int = 100, seed: int = 0,
                        width: int = 160, height: int = 160) -> ShapesDataset:
    """Write the dataset under ``out_dir`` (created if needed; existing files of the same names are replaced)."""
    if train < 1 or valid < 1:
        raise ValueError("train and valid need at least one image each")
    if width < 64 or height < 64:
        raise ValueError("images must be at least 64x64 (the shapes are up to 56 pixels)")
    root = Path(out_dir).resolve()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "backup").mkdir(exist_ok=True)
    train_paths = _write_split(root, "train", train, seed, width, height)
    valid_paths = _write_split(root, "valid", valid, seed, width, height)
    (root / "obj.names").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    data = root / "obj.data"
    data.write_text(f"classes = {len(CLASS_NAMES)}\ntrain = {root / 'train.txt'}\nvalid = {root / 'valid.txt'}\n"
                    f"names = {root / 'obj.names'}\nbackup = {root / 'backup'}\n")
    return ShapesDataset(root, data, train_paths, valid_paths)
