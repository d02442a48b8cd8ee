"""Darknet's detector-training augmentation (``load_data_detection``, the OpenCV build that every YOLO recipe
uses), driven by the cfg: one picture becomes a network-sized training image and its truth boxes.

What each cfg key does (Darknet's meaning; the numbers below are Darknet's integer rules, kept exactly so that
boxes land where Darknet puts them):

* ``jitter`` (last head): each side of the crop moves by a random ``[-jitter, jitter]`` fraction of the picture
  (negative = the crop reaches outside the picture, filled with the picture's mean colour).
* ``resize`` (last head): the crop grows or shrinks by up to that factor (``resize < 1``: only shrinks the
  picture, i.e. the crop grows).
* ``letter_box``: the crop is widened (or heightened) to the network's aspect ratio, keeping the picture's.
* ``flip``: a left-right mirror with probability 1/2.
* ``hue`` / ``saturation`` / ``exposure``: HSV jitter, hue shifted by ``[-hue, hue]`` of the colour circle,
  saturation and value scaled by ``1/s..s`` (8-bit, as OpenCV does it).
* ``blur``: with probability 1/3 the background is blurred (17x17 Gaussian, boxes kept sharp), with 1/3 the
  whole image (kernel ``blur``, reduced to an eighth of the smallest box side).
* ``gaussian_noise``: with probability 1/2, 8-bit Gaussian noise of that standard deviation (as OpenCV's
  ``randn`` into an 8-bit image: negative draws clip to 0, so the noise only brightens).
* ``mosaic`` (+ ``mosaic_bound``): with probability 1/2, four pictures, each augmented as above, tiled around a
  random cut point; ``mosaic_bound`` clips boxes to their tile.  With ``letter_box`` too, each tile is
  letterboxed first: Darknet supported the pair from June 2020 (the scaled-YOLOv4 cfgs, yolov4-csp/p5/p6, use
  it) until a 2023 clean-up turned its commented-out refusal back into an error.
* ``mixup``: with probability 1/2, the average of two augmented pictures with both sets of boxes.

Truth boxes follow ``fill_truth_detection``/``correct_boxes``: shuffled, moved with the crop offsets and the
flip, clipped to the image, limited to the head's ``max`` (before filtering, as Darknet does), and boxes
thinner than one network pixel dropped.  Images are 8-bit (H, W, C) numpy arrays until the very end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import CfgError, Problem

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .specs import NetSpec

# [net] keys this module implements; DATA_KEYS_REFUSED lists the [net] data keys it knows but does not do.
NET_DATA_KEYS = ("letter_box", "hue", "saturation", "exposure", "flip", "mosaic", "mosaic_bound", "mixup",
                 "blur", "gaussian_noise", "resize_step", "cutmix")
HEAD_DATA_KEYS = ("jitter", "resize", "random", "max")
# key -> (default that means "off", why it is refused when set otherwise)
DATA_KEYS_REFUSED = {
    "angle": (0, "Darknet's detector training never rotates (angle is read by classifier training only)"),
    "aspect": (1, "Darknet's detector training ignores aspect (classifier training only)"),
    "max_crop": (None, "Darknet's detector training ignores max_crop (classifier training only)"),
    "min_crop": (None, "Darknet's detector training ignores min_crop (classifier training only)"),
    "contrastive": (0, "contrastive training is not implemented by netspec"),
    "contrastive_jit_flip": (0, "contrastive training is not implemented by netspec"),
    "contrastive_color": (0, "contrastive training is not implemented by netspec"),
    "unsupervised": (0, "unsupervised training is not implemented by netspec"),
    "track": (0, "tracking (sequential) training is not implemented by netspec"),
    "augment_speed": (None, "tracking (sequential) training is not implemented by netspec"),
    "sequential_subdivisions": (0, "tracking (sequential) training is not implemented by netspec"),
    "mini_batch": (0, "tracking (sequential) training is not implemented by netspec"),
    "random": (0, "[net] random is not a Darknet detector key; multi-scale training is random= in the heads"),
}


@dataclass(frozen=True)
class AugmentSettings:
    """The cfg's data settings for detector training (the last head's values, as Darknet takes them)."""

    width: int
    height: int
    channels: int = 3
    classes: int = 1
    max_boxes: int = 200
    jitter: float = 0.2
    resize: float = 1.0
    letter_box: bool = False
    flip: bool = True
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    blur: int = 0
    gaussian_noise: int = 0
    mosaic: bool = False
    mosaic_bound: bool = False
    mixup: bool = False
    random: float = 0.0  # multi-scale: 0 off, 1 means Darknet's 1.4, other values are the factor itself
    resize_step: int = 32
    stride: int = 32  # the network's largest head stride: every multi-scale size is a multiple of it

    @classmethod
    def from_spec(cls, spec: NetSpec) -> tuple[AugmentSettings, list[Problem]]:
        """Settings from a built spec, and warnings.  Raises :class:`CfgError` naming the line of every data key
        that netspec does not honour (never silently ignored) or that Darknet itself rejects."""
        net = spec.net
        errors: list[Problem] = []
        warnings: list[Problem] = []

        def at(key: str | None, message: str, severity: str = "error") -> Problem:
            opt = net.option(key) if key else None
            line, col = (opt.line, opt.col) if opt else (None, None)
            return Problem(f"[net]: {message}", spec.path, line, col, severity)

        def whole(key: str, allowed: tuple[int, ...] | None = None, low: int = 0) -> int:
            value = getattr(net, key)
            if value != int(value) or value < low or (allowed is not None and int(value) not in allowed):
                want = "/".join(map(str, allowed)) if allowed else f"a whole number >= {low}"
                errors.append(at(key, f"{key}={value:g} must be {want} (Darknet reads it as an integer)"))
                return 0
            return int(value)

        for key, (off, why) in DATA_KEYS_REFUSED.items():
            if net.given(key) and (off is None or getattr(net, key) != off):
                errors.append(at(key, f"{key}={getattr(net, key):g}: {why}; remove it"))
        if net.given("cutmix") and net.cutmix:
            errors.append(at("cutmix", "cutmix=1 is not supported for detectors (Darknet's detector prints "
                                       "\"isn't supported\" and ignores it); remove it, or use mosaic=1 / mixup=1"))
        flags = {k: whole(k, (0, 1)) for k in ("letter_box", "flip", "mosaic", "mosaic_bound", "mixup")}
        blur, noise = whole("blur"), whole("gaussian_noise")
        step = whole("resize_step", low=1)
        if flags["mosaic"] and flags["mixup"]:
            errors.append(at("mixup", "mixup=1 has no effect with mosaic=1 (Darknet then does mosaic only); "
                                      "remove one of them"))
        if flags["mosaic_bound"] and not flags["mosaic"]:
            errors.append(at("mosaic_bound", "mosaic_bound=1 does nothing without mosaic=1"))
        for key in ("saturation", "exposure"):
            if getattr(net, key) <= 0:
                errors.append(at(key, f"{key} must be > 0 (a scale factor: 1 is off, 1.5 means 1/1.5..1.5)"))
        if not 0 <= net.hue <= 1:
            errors.append(at("hue", "hue must be in [0, 1] (a fraction of the colour circle)"))

        heads = [s for s in spec.layers if s.section.is_head]
        if not heads:
            raise CfgError(at(None, "detector training needs a detection head ([yolo], [region], ...)"))
        last = heads[-1]
        values = {}
        for key in HEAD_DATA_KEYS:
            if not hasattr(last.p, key):
                values[key] = None
                continue
            values[key] = getattr(last.p, key)
            for other in heads[:-1]:
                if getattr(other.p, key, values[key]) != values[key]:
                    warnings.append(other.problem(
                        f"{key}={getattr(other.p, key):g} differs from the last head's {key}={values[key]:g}; "
                        f"training uses the last head's value, as Darknet does", key, "warning"))
        jitter = values["jitter"] if values["jitter"] is not None else 0.2
        resize = values["resize"] if values["resize"] is not None else 1.0
        random = values["random"] or 0.0
        if not 0 <= jitter < 0.5:
            errors.append(last.problem("jitter must be in [0, 0.5) (each side moves by up to jitter of the "
                                       "picture; 0.5 or more can leave no picture)", "jitter"))
        if resize <= 0:
            errors.append(last.problem("resize must be > 0 (1 is off, 1.5 means 1/1.5..1.5)", "resize"))
        if random < 0:
            errors.append(last.problem("random must be >= 0 (0 off, 1 multi-scale by 1.4, x: by x)", "random"))
        c, h, w = spec.input_shape
        if c not in (1, 3):
            errors.append(at("channels", f"detector training reads 1- or 3-channel pictures, channels={c}"))
        stride = max(w // max(1, s.out_shape[2]) for s in heads)
        if random and step and step % stride:
            key = "resize_step" if net.given("resize_step") else None
            errors.append(at(key, f"resize_step={step} is not a multiple of the network's stride {stride}: "
                                  f"multi-scale sizes (random= on line {last.block.line}) must be multiples of "
                                  f"{stride}; set resize_step={stride * max(1, round(step / stride))}"))
        classes = max(getattr(s.p, "classes", 1) for s in heads)
        if errors:
            raise CfgError(errors)
        settings = cls(width=w, height=h, channels=c, classes=classes, max_boxes=int(values["max"] or 200),
                       jitter=jitter, resize=resize, letter_box=bool(flags["letter_box"]), flip=bool(flags["flip"]),
                       hue=net.hue, saturation=net.saturation, exposure=net.exposure, blur=blur,
                       gaussian_noise=noise, mosaic=bool(flags["mosaic"]), mosaic_bound=bool(flags["mosaic_bound"]),
                       mixup=bool(flags["mixup"]), random=random, resize_step=step, stride=stride)
        return settings, warnings


# ----------------------------------------------------------------- random numbers (Darknet's helpers)
def rand_scale(rng, s: float) -> float:
    """Darknet's ``rand_scale``: uniform in [1, s] (or [s, 1]), then its reciprocal with probability 1/2."""
    lo, hi = (1.0, s) if s >= 1 else (s, 1.0)
    scale = lo + rng.random() * (hi - lo)
    return scale if rng.integers(0, 2) else 1.0 / scale


def _precalc(lo: float, hi: float, r: float) -> float:
    """Darknet's ``rand_precalc_random``."""
    if hi < lo:
        lo, hi = hi, lo
    return r * (hi - lo) + lo


def _trunc(v: float) -> int:
    """C's float-to-int conversion (toward zero)."""
    return int(math.trunc(v))


# ----------------------------------------------------------------- one picture's crop and colour
@dataclass(frozen=True)
class Crop:
    """Where the training image comes from: the picture's rect ``(pleft, ptop, swidth, sheight)`` (may reach
    outside it), the picture's own size, the flip, HSV factors, blur and noise for one picture."""

    ow: int
    oh: int
    pleft: int
    ptop: int
    pright: int
    pbot: int
    swidth: int
    sheight: int
    flip: bool = False
    dhue: float = 0.0
    dsat: float = 1.0
    dexp: float = 1.0
    blur: int = 0
    noise: int = 0


def draw_crop(rng, ow: int, oh: int, w: int, h: int, s: AugmentSettings, mosaic_piece: int | None = None) -> Crop:
    """Darknet's random crop for a picture of ``ow x oh`` going into a ``w x h`` image.  ``mosaic_piece``
    (0..3) applies mosaic's "move every second picture to its corner" rule."""
    r1, r2, r3, r4, resize_r1, resize_r2 = (float(v) for v in rng.random(6))
    flip = bool(s.flip and rng.integers(0, 2))
    dhue = -s.hue + rng.random() * 2 * s.hue
    dsat, dexp = rand_scale(rng, s.saturation), rand_scale(rng, s.exposure)
    blur = 0
    if s.blur:
        choice = int(rng.integers(0, 3))  # 0: none, 1: blur the background, 2: blur everything
        blur = 0 if choice == 0 else (1 if choice == 1 else s.blur)
    noise = s.gaussian_noise if s.gaussian_noise and rng.integers(0, 2) else 0

    dw, dh = _trunc(ow * s.jitter), _trunc(oh * s.jitter)
    resize_down = 1 / s.resize if s.resize > 1 else s.resize
    resize_up = 1 / s.resize if s.resize < 1 else s.resize
    min_rdw, min_rdh = _trunc(ow * (1 - 1 / resize_down) / 2), _trunc(oh * (1 - 1 / resize_down) / 2)
    max_rdw, max_rdh = _trunc(ow * (1 - 1 / resize_up) / 2), _trunc(oh * (1 - 1 / resize_up) / 2)
    pleft, pright = _trunc(_precalc(-dw, dw, r1)), _trunc(_precalc(-dw, dw, r2))
    ptop, pbot = _trunc(_precalc(-dh, dh, r3)), _trunc(_precalc(-dh, dh, r4))
    hi_w, hi_h = (0, 0) if s.resize < 1 else (max_rdw, max_rdh)
    pleft = _trunc(pleft + _precalc(min_rdw, hi_w, resize_r1))
    pright = _trunc(pright + _precalc(min_rdw, hi_w, resize_r2))
    ptop = _trunc(ptop + _precalc(min_rdh, hi_h, resize_r1))
    pbot = _trunc(pbot + _precalc(min_rdh, hi_h, resize_r2))

    if s.letter_box:
        net_ar = w / h
        if (ow / oh) / net_ar > 1:  # the picture is wider: grow the crop's height
            delta_h = (ow / net_ar - oh) / 2
            ptop, pbot = _trunc(ptop - delta_h), _trunc(pbot - delta_h)
        else:
            delta_w = (oh * net_ar - ow) / 2
            pleft, pright = _trunc(pleft - delta_w), _trunc(pright - delta_w)

    if mosaic_piece is not None and rng.integers(0, 2):
        # move the picture towards the mosaic's corner so that most of it stays visible
        k = mosaic_piece
        if flip:
            k = (1, 0, 3, 2)[k]
        if k in (0, 2):
            pright, pleft = pright + pleft, 0
        else:
            pleft, pright = pleft + pright, 0
        if k in (0, 1):
            pbot, ptop = pbot + ptop, 0
        else:
            ptop, pbot = ptop + pbot, 0

    swidth, sheight = ow - pleft - pright, oh - ptop - pbot
    if swidth <= 0 or sheight <= 0 or ow - pleft <= 0 or oh - ptop <= 0:
        swidth, sheight, pleft, ptop = ow, oh, 0, 0  # Darknet's "invalid resize" fallback (pright/pbot kept)
    return Crop(ow, oh, pleft, ptop, pright, pbot, swidth, sheight, flip, dhue, dsat, dexp, blur, noise)


def crop_resize(img, crop: Crop, w: int, h: int, region: tuple[int, int, int, int] | None = None):
    """The crop rect of a PIL picture (outside it: the picture's mean colour) resized bilinearly to ``w x h``
    (OpenCV's INTER_LINEAR: half-pixel centres, edge pixels repeated, no antialiasing), then flipped.
    ``region`` ``(x, y, width, height)``: only that part of the result (each output pixel is computed on its own,
    so it equals the same part of the whole, up to a rounding of one level in rare pixels)."""
    from PIL import Image, ImageStat

    src = (crop.pleft, crop.ptop, crop.pleft + crop.swidth, crop.ptop + crop.sheight)
    if src != (0, 0, crop.ow, crop.oh):
        inside = (max(0, src[0]), max(0, src[1]), min(crop.ow, src[2]), min(crop.oh, src[3]))
        mean = tuple(int(math.floor(v + 0.5)) for v in ImageStat.Stat(img).mean)
        canvas = Image.new(img.mode, (crop.swidth, crop.sheight), mean if len(mean) > 1 else mean[0])
        if inside[2] > inside[0] and inside[3] > inside[1]:
            canvas.paste(img.crop(inside), (inside[0] - src[0], inside[1] - src[1]))
        img = canvas
    x0, y0, rw, rh = region or (0, 0, w, h)
    if crop.flip:
        x0 = w - x0 - rw  # the region before the mirror
    if img.size == (w, h):
        if (x0, y0, rw, rh) != (0, 0, w, h):
            img = img.crop((x0, y0, x0 + rw, y0 + rh))
    else:
        sx, sy = crop.swidth / w, crop.sheight / h
        img = img.transform((rw, rh), Image.Transform.AFFINE, (sx, 0, sx * x0, 0, sy, sy * y0),
                            resample=Image.BILINEAR)
    if crop.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def distort_hsv(img, dhue: float, dsat: float, dexp: float):
    """8-bit HSV jitter of a PIL image: hue shifted by ``dhue`` of the circle (wrapping), saturation and value
    scaled (saturating at 255).  One-channel images scale their value only."""
    import numpy as np
    from PIL import Image

    if dhue == 0 and dsat == 1 and dexp == 1:
        return img
    if img.mode == "L":
        return Image.fromarray(np.clip(np.asarray(img) * dexp + 0.5, 0, 255).astype(np.uint8))
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] += np.uint8(int(round(dhue * 256)) % 256)  # uint8 arithmetic wraps: the hue circle
    for ch, factor in ((1, dsat), (2, dexp)):
        if factor != 1:
            hsv[..., ch] = np.clip(hsv[..., ch] * np.float32(factor) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _gaussian_sigma(ksize: int) -> float:
    """The sigma OpenCV's GaussianBlur uses for a ``ksize`` kernel when sigma is 0."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def blur_image(img, blur: int, truth: np.ndarray):
    """Darknet's blur: ``blur == 1`` blurs the background only (17x17 kernel; the truth boxes stay sharp), larger
    values blur everything with a ``(blur // 2) * 2 + 1`` kernel."""
    from PIL import ImageFilter

    if not blur:
        return img
    ksize = 17 if blur == 1 else (blur // 2) * 2 + 1
    blurred = img.filter(ImageFilter.GaussianBlur(_gaussian_sigma(ksize)))
    if blur == 1:
        w, h = img.size
        for x, y, bw, bh in truth[:, :4].tolist():
            left, top = _trunc((x - bw / 2) * w), _trunc((y - bh / 2) * h)
            box = (max(0, left), max(0, top), min(w, left + _trunc(bw * w)), min(h, top + _trunc(bh * h)))
            if box[2] > box[0] and box[3] > box[1]:
                blurred.paste(img.crop(box), box[:2])
    return blurred


def add_noise(pixels: np.ndarray, sigma: int, rng) -> np.ndarray:
    """OpenCV's ``randn`` into an 8-bit image, added with saturation (Darknet's gaussian_noise)."""
    import numpy as np

    sigma = min(max(sigma, 0), 127)
    noise = np.clip(np.rint(rng.normal(0.0, sigma, pixels.shape)), 0, 255)
    return np.clip(pixels.astype(np.int16) + noise.astype(np.int16), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- truth boxes
def fill_truth(labels: np.ndarray, crop: Crop, w: int, h: int, classes: int, max_boxes: int, rng
               ) -> tuple[np.ndarray, int]:
    """Darknet's ``fill_truth_detection``: ``labels`` (N, 5) ``[class, x, y, w, h]`` of the picture → the image's
    truth (K, 5) ``[x, y, w, h, class]`` float32 in the crop's frame, and the smallest box side in pixels."""
    import numpy as np

    boxes = np.asarray(labels, dtype=np.float32).reshape(-1, 5)
    boxes = boxes[rng.permutation(len(boxes))] if len(boxes) > 1 else boxes
    cls, x, y, bw, bh = boxes.T
    f32 = np.float32
    invalid = ((x == 0) & (y == 0)) | (x + bw / 2 < 0) | (y + bh / 2 < 0) | (x - bw / 2 > 1) | (y - bh / 2 > 1)
    sx, sy = f32(crop.ow / crop.swidth), f32(crop.oh / crop.sheight)
    dx, dy = f32(crop.pleft / crop.swidth), f32(crop.ptop / crop.sheight)
    left, right = (x - bw / 2) * sx - dx, (x + bw / 2) * sx - dx
    top, bottom = (y - bh / 2) * sy - dy, (y + bh / 2) * sy - dy
    if crop.flip:
        left, right = 1 - right, 1 - left
    left, right, top, bottom = (np.clip(v, 0, 1) for v in (left, right, top, bottom))
    nx, ny = (left + right) / 2, (top + bottom) / 2
    nw, nh = np.clip(right - left, 0, 1), np.clip(bottom - top, 0, 1)
    n = min(len(boxes), max_boxes)  # Darknet truncates before it filters
    keep = ~invalid[:n] & (cls[:n] < classes) & (nw[:n] >= f32(1 / w)) & (nh[:n] >= f32(1 / h))
    keep &= (nx[:n] > 0) & (nx[:n] <= 1) & (ny[:n] > 0) & (ny[:n] <= 1)
    truth = np.stack([nx[:n], ny[:n], nw[:n], nh[:n], cls[:n]], 1)[keep].astype(np.float32)
    min_side = _trunc(float(np.minimum(truth[:, 2] * w, truth[:, 3] * h).min())) if len(truth) else 0
    return truth, min_side


def blend_truth(first: np.ndarray, second: np.ndarray, max_boxes: int) -> np.ndarray:
    """Darknet's ``blend_truth`` (mixup): the first image's boxes, then the second's, up to ``max_boxes``."""
    import numpy as np

    return np.concatenate([first, second])[:max_boxes]


def mosaic_shifts(crop: Crop, w: int, h: int, cut_x: int, cut_y: int) -> tuple[int, int, int, int]:
    """How far a mosaic tile skips the mean-colour border its crop added: (left, right, top, bottom) pixels."""
    pleft, pright = (crop.pright, crop.pleft) if crop.flip else (crop.pleft, crop.pright)

    def cdiv(a: int, b: int) -> int:  # C integer division (toward zero)
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b > 0) else -q

    return (min(cut_x, max(0, cdiv(-pleft * w, crop.ow))), min(w - cut_x, max(0, cdiv(-pright * w, crop.ow))),
            min(cut_y, max(0, cdiv(-crop.ptop * h, crop.oh))), min(h - cut_y, max(0, cdiv(-crop.pbot * h, crop.oh))))


def mosaic_tile_source(k: int, w: int, h: int, cut_x: int, cut_y: int, shifts: tuple[int, int, int, int]
                       ) -> tuple[int, int, int, int]:
    """The part ``(x, y, width, height)`` of tile ``k``'s augmented picture that the mosaic shows: the corner
    nearest the cut point, past the border its crop added (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)."""
    left_shift, right_shift, top_shift, bot_shift = shifts
    tw, th = (cut_x if k in (0, 2) else w - cut_x), (cut_y if k < 2 else h - cut_y)
    x0 = w - cut_x - right_shift if k in (0, 2) else left_shift
    y0 = h - cut_y - bot_shift if k < 2 else top_shift
    return x0, y0, tw, th


def place_mosaic_tile(canvas: np.ndarray, tile: np.ndarray, k: int, cut_x: int, cut_y: int,
                      shifts: tuple[int, int, int, int], whole: bool = True) -> None:
    """Copy tile ``k`` into ``canvas``: from the whole augmented picture, or (``whole=False``) ``tile`` is already
    just its :func:`mosaic_tile_source` part."""
    h, w = canvas.shape[:2]
    x0, y0, tw, th = mosaic_tile_source(k, w, h, cut_x, cut_y, shifts)
    top, left = (0 if k < 2 else cut_y), (0 if k in (0, 2) else cut_x)
    canvas[top:top + th, left:left + tw] = tile[y0:y0 + th, x0:x0 + tw] if whole else tile


def mosaic_truth(existing: np.ndarray, truth: np.ndarray, k: int, w: int, h: int, cut_x: int, cut_y: int,
                 shifts: tuple[int, int, int, int], max_boxes: int, bound: bool) -> np.ndarray:
    """Darknet's ``blend_truth_mosaic``: tile ``k``'s boxes moved into the mosaic, cut at the image (or, with
    ``mosaic_bound``, at the tile), kept if still inside and wider than a pixel; appended to ``existing``."""
    import numpy as np

    left_shift, right_shift, top_shift, bot_shift = shifts
    lowest_w, lowest_h = np.float32(1 / w), np.float32(1 / h)
    considered = truth[:max(0, max_boxes - len(existing))]
    out = []
    for xb, yb, wb, hb, cls in considered.tolist():
        xb = xb - (w - cut_x - right_shift) / w if k in (0, 2) else xb + (cut_x - left_shift) / w
        yb = yb - (h - cut_y - bot_shift) / h if k < 2 else yb + (cut_y - top_shift) / h
        left, right = _trunc((xb - wb / 2) * w), _trunc((xb + wb / 2) * w)
        top, bot = _trunc((yb - hb / 2) * h), _trunc((yb + hb / 2) * h)
        if bound:
            lb, rb = (0, cut_x) if k in (0, 2) else (cut_x, w)
            tb, bb = (0, cut_y) if k < 2 else (cut_y, h)
            left, right, top, bot = max(left, lb), min(right, rb), max(top, tb), min(bot, bb)
            xb, wb = (right + left) / 2 / w, (right - left) / w
            yb, hb = (bot + top) / 2 / h, (bot - top) / h
        else:
            if left < 0:
                xb, wb = xb - left / w / 2, wb + left / w
            if right > w:
                diff = (right - w) / w
                xb, wb = xb - diff / 2, wb - diff
            if top < 0:
                yb, hb = yb - top / h / 2, hb + top / h
            if bot > h:
                diff = (bot - h) / h
                yb, hb = yb - diff / 2, hb - diff
            left, right = _trunc((xb - wb / 2) * w), _trunc((xb + wb / 2) * w)
            top, bot = _trunc((yb - hb / 2) * h), _trunc((yb + hb / 2) * h)
        if (left >= 0 and right <= w and top >= 0 and bot <= h and 0 < wb < 1 and 0 < hb < 1 and 0 < xb < 1
                and 0 < yb < 1 and wb > lowest_w and hb > lowest_h):
            out.append((xb, yb, wb, hb, cls))
    new = np.asarray(out, dtype=np.float32).reshape(-1, 5)
    return np.concatenate([existing, new]) if len(existing) else new


# ----------------------------------------------------------------- one training image
Picture = Callable[[int], tuple]  # index -> (PIL image in the cfg's mode, labels (N, 5) [class, x, y, w, h])


def augment_one(rng, primary: int, n_pictures: int, picture: Picture, s: AugmentSettings, w: int, h: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """One training image (H, W, C) uint8 — or float32 in [0, 255] after mixup — and its truth (K, 5)
    ``[x, y, w, h, class]``.  Extra pictures for mosaic and mixup are drawn from ``rng``."""
    import numpy as np

    use_mosaic = s.mosaic and bool(rng.integers(0, 2))
    use_mixup = s.mixup and not use_mosaic and bool(rng.integers(0, 2))
    if use_mosaic:
        cut_x = int(rng.integers(_trunc(w * 0.2), _trunc(w * 0.8) + 1))
        cut_y = int(rng.integers(_trunc(h * 0.2), _trunc(h * 0.8) + 1))
        canvas = np.zeros((h, w, s.channels), np.uint8)
        truth = np.zeros((0, 5), np.float32)
        for k in range(4):
            index = primary if k == 0 else int(rng.integers(0, n_pictures))
            img, crop, tile_truth, blur = _prepare(rng, picture(index), s, w, h, k)
            shifts = mosaic_shifts(crop, w, h, cut_x, cut_y)
            # only the part the mosaic shows is rendered (a quarter of the work on average); blur needs the
            # whole picture around it
            region = None if blur else mosaic_tile_source(k, w, h, cut_x, cut_y, shifts)
            tile = _render(rng, img, crop, tile_truth, blur, w, h, region)
            place_mosaic_tile(canvas, tile, k, cut_x, cut_y, shifts, whole=region is None)
            truth = mosaic_truth(truth, tile_truth, k, w, h, cut_x, cut_y, shifts, s.max_boxes, s.mosaic_bound)
        return canvas, truth
    pixels, truth, _ = _one_picture(rng, picture(primary), s, w, h, None)
    if use_mixup:
        other, other_truth, _ = _one_picture(rng, picture(int(rng.integers(0, n_pictures))), s, w, h, None)
        pixels = pixels.astype(np.float32) * 0.5 + other.astype(np.float32) * 0.5
        truth = blend_truth(truth, other_truth, s.max_boxes)
    return pixels, truth


def _one_picture(rng, loaded: tuple, s: AugmentSettings, w: int, h: int, mosaic_piece: int | None):
    img, crop, truth, blur = _prepare(rng, loaded, s, w, h, mosaic_piece)
    return _render(rng, img, crop, truth, blur, w, h), truth, crop


def _prepare(rng, loaded: tuple, s: AugmentSettings, w: int, h: int, mosaic_piece: int | None):
    """A picture's crop, its truth and the blur to use (Darknet's order of decisions)."""
    import numpy as np

    img, labels = loaded
    ow, oh = img.size
    crop = draw_crop(rng, ow, oh, w, h, s, mosaic_piece)
    truth, min_side = fill_truth(np.asarray(labels, np.float32), crop, w, h, s.classes, s.max_boxes, rng)
    blur = crop.blur
    if blur > 1 and min_side // 8 < blur:
        blur = min_side // 8  # Darknet: no strong blur when an object is small (0 → none, 1 → background only)
    return img, crop, truth, blur


def _render(rng, img, crop: Crop, truth: np.ndarray, blur: int, w: int, h: int,
            region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The augmented picture (or its ``region``) as uint8 (H, W, C): crop, resize, flip, HSV, blur, noise."""
    import numpy as np

    out = crop_resize(img, crop, w, h, region)
    out = distort_hsv(out, crop.dhue, crop.dsat, crop.dexp)
    out = blur_image(out, blur, truth)
    pixels = np.asarray(out)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if crop.noise:
        pixels = add_noise(pixels, crop.noise, rng)
    return pixels
