"""``netspec detect CFG IMAGE... --weights W``: Darknet's ``detector test`` on image files.

Images are files (PNG, JPEG, BMP, WebP, ...), folders of images, or list files (one path a line, Darknet's
``train.txt``).  Each image is resized (or ``--letter-box``ed) exactly as Darknet does, run in batches on
the fused network, and its objects are printed as Darknet prints them; ``--out`` writes Darknet's
``-out`` JSON, ``--save-dir`` the pictures with the boxes drawn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..errors import NetspecError
from .common import add_cfg_arguments, add_weights_arguments, fraction, load_detector, positive_int, torch_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, folders of images, or list files (one image path a line)")
    add_weights_arguments(parser, "the parameters", required=True)
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--data", metavar="OBJ.DATA", help="Darknet .data file whose names= gives the class names")
    names.add_argument("--names", metavar="FILE", help="class names file, one a line (default: class ids)")
    parser.add_argument("--thresh", type=fraction, default=0.25, help="objectness/probability threshold (0.25)")
    parser.add_argument("--hier-thresh", type=fraction, default=0.5,
                        help="hierarchical threshold (0.5; Darknet's detector test decodes without it)")
    parser.add_argument("--nms", type=fraction, default=0.45, help="NMS threshold (0.45; 0 turns NMS off)")
    parser.add_argument("--letter-box", action="store_true",
                        help="letterbox the images instead of stretching them ([net] letter_box=1 implies it)")
    parser.add_argument("--out", metavar="FILE.json", help="write Darknet's -out JSON (a list of frames)")
    parser.add_argument("--save-dir", metavar="DIR", help="write each image with its boxes drawn (DIR/NAME.jpg)")
    parser.add_argument("--batch", type=positive_int, default=1, help="images per forward pass (1)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (cpu)")
    parser.add_argument("--quiet", action="store_true", help="print no object lines (errors and warnings still)")


def _expand_images(items: list[str]) -> list[str]:
    """Image files as given, folders and list files expanded (datasets.read_image_list)."""
    from ..datasets import IMAGE_EXTENSIONS, read_image_list

    paths = []
    for item in items:
        if os.path.isdir(item) or (os.path.isfile(item) and not item.lower().endswith(IMAGE_EXTENSIONS)):
            paths.extend(read_image_list(item))
        else:
            paths.append(item)  # an image (a missing one is reported by name when it is read)
    return paths


def _class_names(args: argparse.Namespace, classes: int) -> list[str]:
    from ..datasets import read_data_config, read_names

    if args.data:
        config = read_data_config(args.data)
        names, source = config.names, config.names_path or args.data
    elif args.names:
        names, source = read_names(args.names), args.names
    else:
        return [str(k) for k in range(classes)]
    if len(names) != classes:
        raise NetspecError(f"{source}: holds {len(names)} class names but the network has classes={classes}")
    return names


def _save_path(directory: str, image_path: str, taken: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(image_path))[0] or "image"
    name, n = f"{stem}.jpg", 1
    while name in taken:  # two images with the same name from different folders
        n += 1
        name = f"{stem}_{n}.jpg"
    taken.add(name)
    return os.path.join(directory, name)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OUTPUT
    from ..detect_report import draw_detections, json_objects, text_lines
    from ..detection import darknet_detections, prepare_images

    device = torch_device(args.device)
    paths = _expand_images(args.images)
    net = load_detector(args, "detect")
    classes = int(net.layers[net.outputs[-1]].classes)
    names = _class_names(args, classes)
    net.fuse()  # inference fast path: BN folded into the convolutions
    net.to(device)
    letterbox = bool(args.letter_box or net.net.letter_box)
    if args.save_dir:
        try:
            os.makedirs(args.save_dir, exist_ok=True)
        except OSError as exc:
            print(f"{args.save_dir}: cannot create the folder: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_OUTPUT
    frames, taken = [], set()
    warned_pixels = False
    for start in range(0, len(paths), args.batch):
        chunk = paths[start:start + args.batch]
        began = time.perf_counter()
        batch, sizes = prepare_images(net, chunk, letterbox, device)
        dets = darknet_detections(net, batch, sizes, args.thresh, args.hier_thresh, args.nms, letterbox)
        elapsed = (time.perf_counter() - began) * 1000 / len(chunk)
        for path, size, d in zip(chunk, sizes, dets):
            d.boxes, d.objectness, d.probs = d.boxes.cpu(), d.objectness.cpu(), d.probs.cpu()
            if not args.quiet:
                print(f"{path}: Predicted in {elapsed:.1f} milli-seconds.")
                for line in text_lines(d, names, size, args.thresh):
                    print(line)
            if d.darknet_pixels is not None and not warned_pixels:
                warned_pixels = True
                print("warning: the network's [detection] head is YOLOv1's: Darknet's detector test writes its boxes "
                      "in image pixels under relative_coordinates, and so does --out (the printed and drawn boxes "
                      "are right)", file=sys.stderr)
            frames.append({"frame_id": len(frames) + 1, "filename": path, "objects": json_objects(d, names, size)})
            if args.save_dir:
                from PIL import Image

                target = _save_path(args.save_dir, path, taken)
                with Image.open(path) as original:
                    drawn = draw_detections(original, d, names, args.thresh)
                try:
                    drawn.save(target, quality=95)
                except OSError as exc:
                    print(f"{target}: cannot write: {exc.strerror or exc}", file=sys.stderr)
                    return EXIT_OUTPUT
    if args.out:
        from ..atomic import atomic_write

        try:
            with atomic_write(args.out) as fh:
                fh.write((json.dumps(frames, indent=1) + "\n").encode())
        except OSError as exc:
            print(f"{args.out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_OUTPUT
    return 0
