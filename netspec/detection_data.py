"""Detector training batches: pictures and labels from :mod:`netspec.datasets`, Darknet's augmentation from
:mod:`netspec.augment`, decoded with Pillow in DataLoader workers.

Exact resume needs no hidden state.  Image ``slot`` of iteration ``k`` (0-based; ``batch`` images an
iteration, as ``[net] batch``) is a pure function of ``(seed, k, slot)``: its picture is position
``k * batch + slot`` of a stream of per-epoch permutations seeded by ``(seed, epoch)``, its random numbers
(crop, flip, colours, mosaic partners, ...) come from a generator seeded by ``(seed, k, slot)``, and its size
from :func:`multiscale_size` ``(seed, k)``.  So the same iteration gives the same batch in any process, with any
number of workers, after any restart.

Batches are ``(images (B, C, H, W) float32 in [0, 1], targets (M, 6) [image_index, class, x, y, w, h])`` with
boxes relative to the image (centre and size).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .augment import AugmentSettings, augment_one, rand_scale
from .errors import NetspecError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .datasets import LabelledSet


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(*parts: Any):
    import numpy as np

    return np.random.Generator(np.random.PCG64(seed_of(*parts)))


def multiscale_size(s: AugmentSettings, iteration: int, max_batches: int, seed: int) -> tuple[int, int]:
    """The network size ``(w, h)`` of iteration ``iteration`` under ``random=`` (Darknet's ``detector train``):
    a new size every 10 iterations, ``round(f * size / step + 1) * step`` for ``f = rand_scale(random)``
    (``random=1`` means 1.4), never larger than the cfg's size when ``f < 1``, at least one step; the largest
    size for the first 10 iterations (Darknet's memory check) and for the last 100 (stable BN statistics).
    ``step`` is ``resize_step`` (a multiple of the net's stride, checked by :class:`AugmentSettings`)."""
    if not s.random:
        return s.width, s.height
    coef = 1.4 if s.random == 1 else s.random
    step = s.resize_step
    period = iteration // 10

    def dim(factor: float, size: int) -> int:
        return int(_round_half_away(factor * size / step + 1)) * step

    max_w, max_h = dim(coef, s.width), dim(coef, s.height)
    if period == 0 or period * 10 > max_batches - 100:
        w, h = max_w, max_h
    else:
        factor = rand_scale(_generator("size", seed, period), coef)
        w, h = dim(factor, s.width), dim(factor, s.height)
        if factor < 1 and (w > s.width or h > s.height):
            w, h = s.width, s.height
    return max(w, step), max(h, step)


def _round_half_away(v: float) -> float:
    """C's ``roundl``: halves away from zero (Python's ``round`` goes to even)."""
    import math

    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


class SampleKey(NamedTuple):
    """What one training image is made from: iteration, slot in the iteration, picture index, network size."""

    iteration: int
    slot: int
    picture: int
    width: int
    height: int


class DetectionDataset:
    """Training images from a :class:`netspec.datasets.LabelledSet`, augmented as ``settings`` say.

    Indexed by :class:`SampleKey` (``make_loader``'s sampler makes them); returns ``(image (C, H, W) float32,
    truth (K, 5) [class, x, y, w, h])``."""

    def __init__(self, pictures: LabelledSet, settings: AugmentSettings, seed: int = 0) -> None:
        if len(pictures) == 0:
            raise ValueError("the training set has no images")
        self.pictures, self.settings, self.seed = pictures, settings, seed

    @classmethod
    def from_data(cls, data: str | os.PathLike, settings: AugmentSettings, seed: int = 0,
                  split: str = "train") -> DetectionDataset:
        """From a Darknet ``obj.data`` (its ``train=`` or ``valid=`` list, or a COCO json there)."""
        from .datasets import labelled_set, read_data_config
        from .errors import DataError

        config = read_data_config(data)
        source = getattr(config, split)
        if not source:
            raise DataError(f"no {split}= entry (the images to train on)", config.path)
        if config.classes != settings.classes:
            path, line = config.where("classes")
            raise DataError(f"classes={config.classes} but the cfg's heads have classes={settings.classes}", path,
                            line)
        return cls(labelled_set(source, config.classes, config.names), settings, seed)

    def __len__(self) -> int:
        return len(self.pictures)

    def picture(self, index: int) -> tuple[Any, Any]:
        """Picture ``index`` decoded (PIL, RGB or L as the cfg's channels) and its labels (N, 5) numpy."""
        from PIL import Image, UnidentifiedImageError

        from .images import ImageError, _pil_to_array

        name = self.pictures.images[index]
        try:
            with Image.open(name) as img:
                img.load()
                if img.mode != "RGB":
                    img = Image.fromarray(_pil_to_array(img, name))
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, BMP, WebP, ...)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{name}: cannot read the image ({exc})") from None
        if self.settings.channels == 1:
            img = img.convert("L")
        return img, self.pictures.read_labels(index).numpy()

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        import torch

        rng = _generator("sample", self.seed, key.iteration, key.slot)
        try:
            pixels, truth = augment_one(rng, key.picture, len(self), self.picture, self.settings, key.width,
                                        key.height)
        except NetspecError as exc:  # a bad picture or label file: handed over whole (see DetectionLoader)
            return _Failed(exc)  # type: ignore[return-value]
        # numpy, not torch, for the conversion: torch's intra-op threads cost more than the work at this size
        image = torch.from_numpy(np.multiply(pixels.transpose(2, 0, 1), np.float32(1 / 255.0), dtype=np.float32))
        boxes = torch.from_numpy(np.ascontiguousarray(truth[:, [4, 0, 1, 2, 3]]))
        return image, boxes


@dataclass
class DetectionBatchSampler:
    """The keys of each mini-batch, in training order: iterations ``[start, stop)``, each split into
    ``chunks`` mini-batches (``[net] subdivisions``); with ``world`` processes this ``rank`` takes its
    contiguous share of each iteration's ``batch`` slots (so a run may resume on another number of processes)."""

    n_pictures: int
    settings: AugmentSettings
    batch: int
    start: int
    stop: int
    max_batches: int
    seed: int = 0
    chunks: int = 1
    rank: int = 0
    world: int = 1
    multiscale: bool = True

    def __post_init__(self) -> None:
        if self.batch % (self.world * self.chunks):
            raise ValueError(f"batch={self.batch} does not split into {self.world} process(es) x {self.chunks} "
                             f"subdivision(s)")
        self._perms: dict[int, Any] = {}

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.chunks

    def picture(self, position: int) -> int:
        """The picture at ``position`` of the stream of per-epoch permutations."""
        import torch

        epoch, offset = divmod(position, self.n_pictures)
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            gen = torch.Generator().manual_seed(seed_of("epoch", self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n_pictures, generator=gen).tolist()
        return self._perms[epoch][offset]

    def size(self, iteration: int) -> tuple[int, int]:
        if not self.multiscale:
            return self.settings.width, self.settings.height
        return multiscale_size(self.settings, iteration, self.max_batches, self.seed)

    def keys(self, iteration: int) -> list[list[SampleKey]]:
        """This rank's mini-batches of ``iteration``."""
        w, h = self.size(iteration)
        share = self.batch // self.world
        per_chunk = share // self.chunks
        first = self.rank * share
        slots = [first + i for i in range(share)]
        keys = [SampleKey(iteration, s, self.picture(iteration * self.batch + s), w, h) for s in slots]
        return [keys[i * per_chunk:(i + 1) * per_chunk] for i in range(self.chunks)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for iteration in range(self.start, self.stop):
            yield from self.keys(iteration)


@dataclass
class _Failed:
    """A sample that could not be made; carries the error (NetspecErrors pickle with their message)."""

    error: NetspecError


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images; targets (M, 6) ``[image_index, class, x, y, w, h]``."""
    import numpy as np
    import torch

    failed = next((s for s in samples if isinstance(s, _Failed)), None)
    if failed is not None:
        return failed  # type: ignore[return-value]

    # numpy's stack: torch.stack's intra-op threads fight the training process for the cores
    images = torch.from_numpy(np.stack([img.numpy() for img, _ in samples]))
    targets = [torch.cat([torch.full((len(t), 1), float(i)), t], 1) for i, (_, t) in enumerate(samples)]
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))


def _worker_init(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # the workers decode and augment; the training process owns the cores' BLAS


class DetectionLoader:
    """The DataLoader's batches in training order; a worker's :class:`NetspecError` (an unreadable picture, a bad
    label line) is raised here as itself, with its ``file:line`` message, not wrapped in a worker traceback."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.batch_sampler: DetectionBatchSampler = loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            if isinstance(batch, _Failed):
                raise batch.error
            yield batch


def make_loader(dataset: DetectionDataset, batch: int, *, start: int = 0, stop: int, max_batches: int | None = None,
                chunks: int = 1, rank: int = 0, world: int = 1, workers: int = 2, multiscale: bool = True,
                prefetch: int = 2) -> DetectionLoader:
    """A :class:`DetectionLoader` (around a ``torch.utils.data.DataLoader``) over iterations ``[start, stop)``:
    ``chunks`` mini-batches of ``batch // (world * chunks)`` images per iteration for this ``rank``, in training
    order, made by ``workers`` processes (0: in this process).  ``max_batches`` (default ``stop``) places multi-scale's
    last-100-iterations rule; the seed is the dataset's."""
    from torch.utils.data import DataLoader

    sampler = DetectionBatchSampler(len(dataset), dataset.settings, batch, start, stop,
                                    stop if max_batches is None else max_batches,
                                    dataset.seed, chunks, rank, world, multiscale)
    extra = {"prefetch_factor": prefetch, "persistent_workers": True, "worker_init_fn": _worker_init} if workers \
        else {}
    return DetectionLoader(DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                      **extra))
