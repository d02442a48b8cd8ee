"""``netspec map DATA CFG --weights W``: what ``darknet detector map`` prints, on a labelled set.

The ``valid`` list of ``DATA`` (or a COCO ``instances_*.json`` given as ``valid``) streams through a DataLoader: each
image is read, resized as Darknet does (``resize_image``, or ``letterbox_image`` with ``--letter-box``), run through
the fused network in batches, and only its detections above 0.005 are kept (see netspec/evaluate.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..errors import DataError, DataWarning
from .common import add_cfg_arguments, add_weights_arguments, fraction, load_detector, positive_int, torch_device


def _points(text: str) -> int:
    if text not in ("0", "11", "101"):
        raise argparse.ArgumentTypeError(f"expected 0 (area under the curve), 11 or 101, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="Darknet .data file (classes, valid, names); valid may be a COCO instances json")
    add_cfg_arguments(parser)
    add_weights_arguments(parser, "the parameters", required=True)
    parser.add_argument("--points", type=_points, default=0,
                        help="0: area under the curve at each unique recall (default); 11 or 101 recall points")
    parser.add_argument("--iou-thresh", type=fraction, default=0.5, help="IoU for a match (default 0.5)")
    parser.add_argument("--thresh", type=fraction, default=0.25,
                        help="confidence for the precision/recall/F1/TP/FP line (default 0.25)")
    parser.add_argument("--letter-box", action=argparse.BooleanOptionalAction, default=None,
                        help="letterbox the images (default: [net] letter_box)")
    parser.add_argument("--coco", action="store_true",
                        help="also COCO AP@[.5:.95], AP50, AP75 and by size (pycocotools: pip install 'netspec[coco]')")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--batch", type=positive_int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="image-loading processes (default 2; 0: in this one)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _head_classes(net) -> int | None:
    return getattr(net.spec.layers[net.outputs[-1]].p, "classes", None)


def run(args: argparse.Namespace) -> int:
    from ..datasets import labelled_set, read_data_config
    from ..evaluate import MapAccumulator, evaluate_set

    with warnings.catch_warnings(record=True) as caught:  # DataWarnings become "warning:" lines
        warnings.simplefilter("always", DataWarning)
        try:
            data = read_data_config(args.data, strict=not args.lenient)  # --lenient: Darknet ignores unknown keys
            if data.valid is None:
                raise DataError("no 'valid' (or 'train') list to evaluate", data.path)
            labelled = labelled_set(data.valid, data.classes, data.names)
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    difficult = None
    if "difficult" in data.options:  # Darknet's VOC option: a list parallel to valid, labels of objects to ignore
        from ..datasets import label_path, read_image_list

        difficult = [label_path(p) for p in read_image_list(data.path_of("difficult"))]
        if len(difficult) != len(labelled):
            path, line = data.where("difficult")
            raise DataError(f"the difficult list has {len(difficult)} images but valid has {len(labelled)}", path,
                            line)
    device = torch_device(args.device)
    net = load_detector(args, "map")
    head_classes = _head_classes(net)
    if head_classes is not None and head_classes != data.classes:
        path, line = data.where("classes")
        raise DataError(f"classes={data.classes} but the cfg's last head has classes={head_classes}", path, line)
    net.fuse()  # Darknet's map runs the fused network too
    net.to(device).eval()
    letterbox = bool(net.net.letter_box) if args.letter_box is None else args.letter_box
    acc = MapAccumulator(data.classes, data.names, iou_thresh=args.iou_thresh, points=args.points,
                         conf_thresh=args.thresh, coco=args.coco, coco_gt=labelled.coco)
    evaluate_set(net, labelled, acc, letterbox=letterbox, batch=args.batch, workers=args.workers, device=device,
                 progress=not args.quiet and sys.stderr.isatty(), difficult=difficult)
    result = acc.result()
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print("\n".join(result.darknet_lines()))
    return 0
