"""What ``darknet detector test`` reports for an image's detections: its ``-out`` JSON objects, its text
lines, and the picture with the boxes and labels drawn (``predictions.jpg``), from :class:`~netspec.detection.Dets`.
"""

from __future__ import annotations

import math
from typing import Any

from .detection import Dets

JSON_MIN_CONFIDENCE = 0.005  # detection_to_json lists probabilities above this (thresholding happened before)

# Darknet's colour ramp (image.c get_color): magenta, blue, cyan, green, yellow, red
_RAMP = ((1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0))


def _shown(name: str) -> bool:
    return not name.startswith("dont_show")  # Darknet hides classes whose name starts with dont_show


def json_objects(dets: Dets, names: list[str], image_size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """The ``objects`` of a Darknet ``-out`` JSON frame: one per (box, class) with a probability above
    0.005, coordinates relative to the image, six decimals as Darknet prints them.

    Given the ``image_size``, boxes Darknet reports in pixels (YOLOv1 ``[detection]`` heads: its
    ``get_detection_detections`` scales them by the image size and nothing scales them back) are written so,
    as Darknet writes them, so that the files compare equal."""
    objects = []
    boxes = dets.boxes.clone()
    if image_size is not None and dets.darknet_pixels is not None and bool(dets.darknet_pixels.any()):
        img_w, img_h = image_size
        scale = boxes.new_tensor([img_w, img_h, img_w, img_h])
        boxes[dets.darknet_pixels] *= scale
    boxes = boxes.tolist()
    for i, row in enumerate(dets.probs.tolist()):
        x, y, w, h = boxes[i]
        for k, p in enumerate(row):
            if p > JSON_MIN_CONFIDENCE and _shown(names[k]):
                objects.append({"class_id": k, "name": names[k],
                                "relative_coordinates": {"center_x": round(x, 6), "center_y": round(y, 6),
                                                         "width": round(w, 6), "height": round(h, 6)},
                                "confidence": round(p, 6)})
    return objects


def _selected(dets: Dets, names: list[str], thresh: float) -> list[tuple[int, int]]:
    """(box index, best class) of each box with a shown class above ``thresh`` (get_actual_detections)."""
    out = []
    for i, row in enumerate(dets.probs.tolist()):
        best, best_p = -1, thresh
        for k, p in enumerate(row):
            if p > best_p and _shown(names[k]):
                best, best_p = k, p
        if best >= 0:
            out.append((i, best))
    return out


def _c_round(value: float) -> int:
    """C's round(): halves away from zero (Python's round() goes to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def text_lines(dets: Dets, names: list[str], image_size: tuple[int, int], thresh: float) -> list[str]:
    """Darknet's printed lines, boxes ordered by their left edge: ``dog: 98%  (left_x: ... height: ...)``."""
    img_w, img_h = image_size
    boxes = dets.boxes.tolist()
    probs = dets.probs.tolist()
    chosen = sorted(_selected(dets, names, thresh), key=lambda s: boxes[s[0]][0] - boxes[s[0]][2] / 2)
    lines = []
    for i, best in chosen:
        x, y, w, h = boxes[i]
        where = (f"(left_x: {_c_round((x - w / 2) * img_w):4d}   top_y: {_c_round((y - h / 2) * img_h):4d}   "
                 f"width: {_c_round(w * img_w):4d}   height: {_c_round(h * img_h):4d})")
        classes = [best] + [k for k, p in enumerate(probs[i]) if p > thresh and k != best]
        for k in classes:
            lines.append(f"{names[k]}: {probs[i][k] * 100:.0f}%\t{where}")
    return lines


def _color(channel: int, x: int, top: int) -> float:
    ratio = x / top * 5
    i, j = math.floor(ratio), math.ceil(ratio)
    ratio -= i
    return (1 - ratio) * _RAMP[i][channel] + ratio * _RAMP[j][channel]


def class_color(class_id: int, classes: int) -> tuple[int, int, int]:
    """Darknet's box colour for a class (``offset = class * 123457 % classes`` on its colour ramp)."""
    offset = class_id * 123457 % classes
    return tuple(int(round(255 * _color(c, offset, classes))) for c in (2, 1, 0))


def draw_detections(image, dets: Dets, names: list[str], thresh: float):
    """A copy of ``image`` (a PIL image) with each detected box and its label drawn as Darknet draws them
    (``draw_detections_v3``: line width ``height * 0.002``, label ``name: 0.98, other names``)."""
    from PIL import ImageDraw, ImageFont

    img = image.convert("RGB")
    draw = ImageDraw.Draw(img)
    img_w, img_h = img.size
    width = max(1, int(img_h * 0.002))
    try:
        font = ImageFont.load_default(size=max(10, int(img_h * 0.025)))
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        font = ImageFont.load_default()
    boxes = dets.boxes.tolist()
    probs = dets.probs.tolist()
    classes = len(names)
    # lowest probability first, so that the most confident boxes are drawn on top (Darknet's order)
    for i, best in sorted(_selected(dets, names, thresh), key=lambda s: probs[s[0]][s[1]]):
        x, y, w, h = boxes[i]
        left, right = max(int((x - w / 2) * img_w), 0), min(int((x + w / 2) * img_w), img_w - 1)
        top, bottom = max(int((y - h / 2) * img_h), 0), min(int((y + h / 2) * img_h), img_h - 1)
        color = class_color(best, classes)
        draw.rectangle([left, top, max(right, left), max(bottom, top)], outline=color, width=width)
        label = f"{names[best]}: {probs[i][best]:.2f}" + "".join(
            f", {names[k]}" for k, p in enumerate(probs[i]) if p > thresh and k != best)
        tl, tt, tr, tb = draw.textbbox((0, 0), label, font=font)
        label_top = max(top - (tb - tt) - 2 * width, 0)
        draw.rectangle([left, label_top, left + (tr - tl) + 2 * width, label_top + (tb - tt) + 2 * width], fill=color)
        draw.text((left + width - tl, label_top + width - tt), label, fill=(0, 0, 0), font=font)
    return img
