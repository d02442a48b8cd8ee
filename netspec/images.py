"""Images as Darknet's ``detector test`` sees them: decoded to RGB floats in [0, 1], then stretched with
Darknet's ``resize_image`` or fitted with its ``letterbox_image``.

Both resizers reproduce Darknet's float32 arithmetic (a bilinear pass along the rows, then one along the
columns, corner pixels aligned), vectorized in torch on the image's device.  Decoding goes through Pillow
(PNG, JPEG, BMP, WebP, ...), with stb_image's conversions: alpha is dropped, grey is replicated to three
channels and 16-bit samples keep their high byte.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
import torch

from .errors import NetspecError

ImageSource = Union[str, "os.PathLike[str]", Any]  # a path, a PIL image or a uint8 HWC/HW array


class ImageError(NetspecError, ValueError):
    """An image cannot be read or has an unusable shape/type (the message names it)."""


def _pil_to_array(img, name: str) -> np.ndarray:
    """Pillow image → uint8 (H, W, 3) as stb_image would decode it with 3 requested channels."""
    mode = img.mode
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        # 16-bit grey (Pillow keeps the full range): stb keeps the high byte of each sample
        grey = np.asarray(img).astype(np.int64)
        grey = np.clip(grey >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "I":  # 32-bit integer samples (TIFF, ...): taken as 8-bit values
        grey = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageError(f"{name}: floating-point images are not supported (expected 8- or 16-bit samples)")
    if mode != "RGB":
        img = img.convert("RGB")  # L/LA/P/PA replicated, RGBA's alpha dropped (no compositing, as stb)
    return np.asarray(img, dtype=np.uint8)


def _array_to_tensor(array: np.ndarray, name: str) -> torch.Tensor:
    if array.dtype != np.uint8:
        raise ImageError(f"{name}: expected a uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"{name}: expected an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape "
                         f"{tuple(array.shape)}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{name}: the image is empty ({array.shape[1]}x{array.shape[0]})")
    if array.shape[2] in (1, 2):  # grey (+ alpha)
        array = np.repeat(array[:, :, :1], 3, axis=2)
    array = np.array(array[:, :, :3], order="C")  # a writable copy
    # Darknet divides in double and stores float: the same values as float64 / 255 rounded to float32
    return (torch.from_numpy(array).permute(2, 0, 1).double() / 255.0).float()


def load_image(source: ImageSource) -> torch.Tensor:
    """Decode ``source`` (a path, a ``PIL.Image`` or a uint8 HWC/HW array) to a float32 (3, H, W) RGB tensor
    with values ``byte / 255``, as Darknet's ``load_image(..., 3)``.  Raises :class:`ImageError`."""
    if isinstance(source, np.ndarray):
        return _array_to_tensor(source, "image array")
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError as exc:  # Pillow is a runtime dependency; say so if it is missing anyway
            raise ImageError("reading images needs Pillow: pip install Pillow") from exc
        if os.path.isdir(name):
            raise ImageError(f"{name}: is a directory, not an image")
        try:
            with Image.open(name) as img:
                img.load()
                return _array_to_tensor(_pil_to_array(img, name), name)
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, BMP, WebP, ...)") from None
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files, permissions
            raise ImageError(f"{name}: cannot read the image ({exc})") from None
    if hasattr(source, "mode") and hasattr(source, "size") and hasattr(source, "convert"):  # a PIL image
        return _array_to_tensor(_pil_to_array(source, "PIL image"), "PIL image")
    raise ImageError(f"cannot read an image from {type(source).__name__} (expected a path, a PIL image or a "
                     "uint8 array)")


def _check_image(img: torch.Tensor, w: int, h: int) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() not in (3, 4) or img.shape[-1] < 1 or img.shape[-2] < 1:
        raise ImageError("expected an image tensor (C, H, W) or (N, C, H, W)")
    if int(w) < 1 or int(h) < 1:
        raise ImageError(f"cannot resize to {w}x{h}")


def resize_image(img: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Darknet's ``resize_image``: ``img`` (C, H, W) (or (N, C, H, W)) stretched to ``w`` x ``h``.

    Columns first (for each output column ``c``: ``sx = c * (W-1)/(w-1)`` in float32, the last column
    copies the input's last), then rows (``sy = r * (H-1)/(h-1)``; the last row takes only the
    ``(1 - dy)`` term, as Darknet does).  Same size: a copy."""
    _check_image(img, w, h)
    in_h, in_w = img.shape[-2], img.shape[-1]
    if (in_w, in_h) == (w, h):
        return img.clone()
    src = img.float()
    dev = src.device
    # Pass 1, along each row: columns 0..w-2 interpolate, column w-1 (and any column when the input is
    # one pixel wide) is the input's last column.
    if w > 1 and in_w > 1:
        w_scale = torch.tensor(np.float32(in_w - 1) / np.float32(w - 1), device=dev)
        sx = torch.arange(w - 1, device=dev, dtype=torch.float32) * w_scale
        ix = sx.long()
        dx = sx - ix.float()
        inner = (1 - dx) * src[..., ix] + dx * src[..., ix + 1]
        part = torch.cat([inner, src[..., in_w - 1:]], -1)
    else:
        part = src[..., in_w - 1:].expand(*src.shape[:-1], w)
    # Pass 2, along each column.
    if h > 1 and in_h > 1:
        h_scale = torch.tensor(np.float32(in_h - 1) / np.float32(h - 1), device=dev)
        sy = torch.arange(h, device=dev, dtype=torch.float32) * h_scale
    else:  # one input row (h_scale 0), or one output row (Darknet's 0*inf: we take row 0)
        sy = torch.zeros(h, device=dev, dtype=torch.float32)
    iy = sy.long().clamp(max=in_h - 1)
    dy = sy - iy.float()
    out = (1 - dy)[:, None] * part[..., iy, :]
    if in_h > 1 and h > 1:
        below = (dy[:-1, None] * part[..., iy[:-1] + 1, :])  # every row but the last adds the row below
        out = torch.cat([out[..., :-1, :] + below, out[..., -1:, :]], -2)
    return out.contiguous()


def letterbox_geometry(image_w: int, image_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """Darknet's letterbox size ``(new_w, new_h)``: the image scaled to fit the network, in integers."""
    if np.float32(net_w) / np.float32(image_w) < np.float32(net_h) / np.float32(image_h):
        return net_w, (image_h * net_w) // image_w
    return (image_w * net_h) // image_h, net_h


def letterbox(img: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Darknet's ``letterbox_image``: ``img`` resized (keeping its aspect ratio, integer new size) with
    :func:`resize_image`, centred at ``((w - new_w) // 2, (h - new_h) // 2)`` on grey 0.5."""
    _check_image(img, w, h)
    in_h, in_w = img.shape[-2], img.shape[-1]
    new_w, new_h = letterbox_geometry(in_w, in_h, w, h)
    if new_w < 1 or new_h < 1:
        raise ImageError(f"a {in_w}x{in_h} image letterboxed into {w}x{h} would be {new_w}x{new_h} pixels")
    resized = resize_image(img, new_w, new_h)
    boxed = torch.full((*img.shape[:-2], h, w), 0.5, dtype=torch.float32, device=img.device)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    # Darknet's embed_image drops pixels that fall outside the destination
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + new_w, w), min(dy + new_h, h)
    if x1 > x0 and y1 > y0:
        boxed[..., y0:y1, x0:x1] = resized[..., y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return boxed
