"""Detector training for :class:`netspec.train.Trainer`: what differs from a classifier is the data and the loss.

Data: the ``train=`` list of a Darknet ``obj.data`` (or a COCO json there), Darknet's augmentation from the cfg
(:mod:`netspec.augment`), decoded in DataLoader workers, a pure function of (seed, iteration, image)
(:mod:`netspec.detection_data`).  Loss: :class:`netspec.DetectionLoss` (each head's Darknet delta as the
gradient).  Evaluation (``--map``): mAP@0.5 on the ``valid=`` list, computed as ``netspec map`` computes it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network


class DetectionTask:
    """The data and loss of detector training (see :class:`netspec.train.TrainingTask`)."""

    metric = "mAP@0.5"
    evaluate_at_end = False  # mAP over the valid list only with --map (as Darknet's -map)

    def __init__(self, net: Network, data: str | os.PathLike, *, seed: int = 0, workers: int = 2) -> None:
        from .augment import AugmentSettings
        from .datasets import read_data_config
        from .detection_data import DetectionDataset
        from .errors import DataWarning
        from .loss import DetectionLoss

        settings, self.warnings = AugmentSettings.from_spec(net.spec)
        self.loss_fn = DetectionLoss(net)
        self.config = read_data_config(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            self.dataset = DetectionDataset.from_data(data, settings, seed)
        self.warnings += [str(w.message) for w in caught]
        self.name = os.fspath(data)
        self.images = len(self.dataset)
        self.batch, self.workers = net.net.batch, workers
        self.letterbox = settings.letter_box
        self.seen0 = int(net.net.seen or 0)
        self._seen, self._per_minibatch = self.seen0, self.batch
        self._valid = None

    def steps(self, first: int, last: int, rank: int, world: int, subdivisions: int
              ) -> Iterator[list[tuple[Any, Any]]]:
        from .detection_data import make_loader

        # Darknet's net.seen before this mini-batch (the [region]/[detection] losses' early-training rules read it),
        # counted in images of the whole step whatever this process's share, so a resumed run counts the same
        self._seen = self.seen0 + (first - 1) * self.batch
        self._per_minibatch = self.batch // subdivisions
        # the loader counts iterations from 0; the trainer's steps from 1
        loader = make_loader(self.dataset, self.batch, start=first - 1, stop=last, max_batches=last,
                             chunks=subdivisions, rank=rank, world=world, workers=self.workers)
        batches = iter(loader)
        for _ in range(first, last + 1):
            yield [next(batches) for _ in range(subdivisions)]

    def loss(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats = self.loss_fn(outputs, targets, seen=self._seen)
        self._seen += self._per_minibatch
        return loss, {k: v for k, v in stats.items() if k != "loss" and isinstance(v, (int, float))}

    def _valid_set(self):
        if self._valid is None:
            from .datasets import labelled_set
            from .errors import DataWarning

            if not self.config.valid:
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)  # reported once by netspec map; not every evaluation
                self._valid = labelled_set(self.config.valid, self.config.classes, self.config.names)
        return self._valid

    def evaluate(self, net: Network) -> dict[str, float]:
        """mAP@0.5 (Darknet's ``detector map``: AUC, thresh 0.25 for the TP/FP counts) on the ``valid=`` list."""
        import copy

        from .evaluate import MapAccumulator, evaluate_set

        valid = self._valid_set()
        if valid is None:
            return {}
        was_training = net.training
        # Darknet's map runs the fused network; the training net stays as it is
        fused = copy.deepcopy(net).to(memory_format=torch.contiguous_format).fuse()
        acc = MapAccumulator(self.config.classes, self.config.names, iou_thresh=0.5)
        evaluate_set(fused, valid, acc, letterbox=self.letterbox, workers=0)
        net.train(was_training)
        result = acc.result()
        return {"mAP@0.5": float(result.map)}


__all__ = ["DetectionTask"]
