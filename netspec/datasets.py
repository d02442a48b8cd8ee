"""Darknet's data files: ``obj.data``, image lists, YOLO label files, names files; COCO ``instances_*.json``.

Paths inside ``obj.data`` and list files are resolved as Darknet resolves them, from the working directory;
where that path does not exist but one relative to the file that names it does (a data set run from another
folder), that one is used instead.  Every malformed line is a :class:`DataError` ``file:line: message``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError, DataWarning

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Keys Darknet's detector/classifier commands read from a .data file; anything else is a misspelling.
DATA_KEYS = ("classes", "train", "valid", "test", "names", "labels", "backup", "difficult", "eval", "results",
             "map", "top", "tree", "leaves", "train_labels", "valid_labels", "prefix")

# Extensions Darknet's replace_image_to_label turns into ".txt" (case-sensitive, only at the end).
_LABEL_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP", ".ppm", ".PPM",
                     ".tiff", ".TIFF")
# Folder renames Darknet applies (first occurrence of each, in this order).
_LABEL_FOLDERS = (("/images/train2017/", "/labels/train2017/"), ("/images/val2017/", "/labels/val2017/"),
                  ("/JPEGImages/", "/labels/"),
                  ("\\images\\train2017\\", "\\labels\\train2017\\"), ("\\images\\val2017\\", "\\labels\\val2017\\"),
                  ("\\images\\train2014\\", "\\labels\\train2014\\"), ("\\images\\val2014\\", "\\labels\\val2014\\"),
                  ("/images/train2014/", "/labels/train2014/"), ("/images/val2014/", "/labels/val2014/"),
                  ("\\JPEGImages\\", "\\labels\\"))
# What a folder given as an image list may hold (what Pillow reads).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


@dataclass
class DataConfig:
    """A Darknet ``.data`` file, paths resolved (see the module docstring); ``options`` holds every key as read."""

    path: str
    classes: int
    train: str | None
    valid: str | None
    names: list[str]
    backup: str | None
    names_path: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # key -> line number in ``path``

    def path_of(self, key: str) -> str | None:
        """The path a key names, resolved like ``train``/``valid`` (None when the key is absent)."""
        value = self.options.get(key)
        return None if value is None else _resolve(value, os.path.dirname(self.path))

    def where(self, key: str) -> tuple[str, int | None]:
        """``(path, line)`` of a key, for errors about its value."""
        return self.path, self.lines.get(key)


def _resolve(value: str, base_dir: str) -> str:
    """Darknet opens relative paths from the working directory; fall back to ``base_dir`` when only that exists."""
    if os.path.isabs(value) or os.path.exists(value):
        return value
    beside = os.path.join(base_dir, value)
    return beside if os.path.exists(beside) else value


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{what} not found", path) from None
    except IsADirectoryError:
        raise DataError(f"{what} is a directory, not a file", path) from None
    except OSError as exc:
        raise DataError(f"cannot read {what}: {exc.strerror or exc}", path) from None
    if b"\0" in data:
        raise DataError(f"{what} is a binary file, not text", path)
    text = data.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def read_data_config(path: str | os.PathLike, strict: bool = True) -> DataConfig:
    """Read a Darknet ``.data`` file (``key = value`` lines, ``#``/``;`` comments).

    An unknown or duplicate key is an error; ``strict=False`` makes them a :class:`DataWarning` and does what
    Darknet does (ignores unknown keys, the first of duplicates wins).

    ``classes`` defaults to the number of names; ``names`` (alias ``labels``) is read as a names file and must
    hold ``classes`` names (without one, classes are named by their ids); ``valid`` defaults to ``train`` as in
    Darknet's mAP during training.
    """
    from .keys import did_you_mean

    path = os.fspath(path)
    base_dir = os.path.dirname(path)
    options: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(_read_text(path, "data file").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise DataError(f"expected 'key = value', got {line[:80]!r}", path, number)
        problem = None
        if key not in DATA_KEYS:
            problem = f"unknown key {key!r}{did_you_mean(key, DATA_KEYS)}"
        elif key in options:
            problem = f"duplicate key {key!r} (first on line {lines[key]})"
        if problem and strict:
            raise DataError(problem, path, number)
        if problem:
            warnings.warn(f"{path}:{number}: {problem}", DataWarning, stacklevel=2)
            continue
        if not value:
            raise DataError(f"{key!r} has no value", path, number)
        options[key], lines[key] = value, number
    if "labels" in options and "names" not in options:
        options["names"], lines["names"] = options["labels"], lines["labels"]

    names_path = _resolve(options["names"], base_dir) if "names" in options else None
    names = read_names(names_path) if names_path else None
    if "classes" in options:
        try:
            classes = int(options["classes"])
        except ValueError:
            raise DataError(f"classes must be an integer, got {options['classes']!r}", path, lines["classes"]) from None
        if classes < 1:
            raise DataError(f"classes must be at least 1, got {classes}", path, lines["classes"])
    elif names is not None:
        classes = len(names)
    else:
        raise DataError("neither 'classes' nor 'names' is given", path)
    if names is None:
        names = [str(i) for i in range(classes)]
    elif len(names) != classes:
        raise DataError(f"names file {names_path} holds {len(names)} names but classes={classes}", path,
                        lines["names"])
    train = _resolve(options["train"], base_dir) if "train" in options else None
    valid = _resolve(options["valid"], base_dir) if "valid" in options else train
    backup = _resolve(options["backup"], base_dir) if "backup" in options else None
    return DataConfig(path=path, classes=classes, train=train, valid=valid, names=names, backup=backup,
                      names_path=names_path, options=options, lines=lines)


def read_names(path: str | os.PathLike) -> list[str]:
    """A names file: one class name per line (trailing blank lines ignored; a blank name elsewhere is an error)."""
    path = os.fspath(path)
    names = [line.strip() for line in _read_text(path, "names file").splitlines()]
    while names and not names[-1]:
        names.pop()
    for number, name in enumerate(names, 1):
        if not name:
            raise DataError("empty class name", path, number)
    if not names:
        raise DataError("names file is empty", path)
    return names


def read_image_list(path: str | os.PathLike) -> list[str]:
    """Darknet's list file (one image path per line; blank lines skipped), or a folder of images (sorted).

    Relative lines are taken from the working directory, as Darknet does, or beside the list file when only
    that exists."""
    path = os.fspath(path)
    if os.path.isdir(path):
        images = sorted(str(p) for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not images:
            raise DataError("folder holds no images (" + ", ".join(IMAGE_EXTENSIONS) + ")", path)
        return images
    base_dir = os.path.dirname(path)
    images = [_resolve(line.strip(), base_dir) for line in _read_text(path, "image list").splitlines()
              if line.strip()]
    if not images:
        raise DataError("image list is empty", path)
    return images


def _darknet_label_path(image_path: str) -> str:
    out = image_path
    for old, new in _LABEL_FOLDERS:
        out = out.replace(old, new, 1)
    out = out.strip(" \t")
    for ext in _LABEL_EXTENSIONS:
        if out.endswith(ext):
            return out[: -len(ext)] + ".txt"
    # Darknet only warns here (and reads the image as labels); netspec turns any other extension into .txt.
    base = out.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    if "." in base.lstrip("."):
        return out[: len(out) - len(base) + base.rindex(".")] + ".txt"
    return out + ".txt"


def label_path(image_path: str | os.PathLike) -> str:
    """Where Darknet looks for an image's YOLO label file (AlexeyAB's ``replace_image_to_label``).

    ``images/train2017/``→``labels/train2017/`` (and val, 2014, backslash forms), ``JPEGImages/``→``labels/``, the
    extension → ``.txt``.  When that file does not exist but the ``images/``→``labels/`` sibling (the original
    Darknet's and Ultralytics' layout) does, that one is returned."""
    image_path = os.fspath(image_path)
    darknet = _darknet_label_path(image_path)
    if os.path.exists(darknet):
        return darknet
    for sep in ("/", "\\"):
        rooted = image_path.startswith(f"images{sep}")
        head, found, tail = (sep + image_path if rooted else image_path).rpartition(f"{sep}images{sep}")
        if found:
            sibling = _darknet_label_path(f"{head}{sep}labels{sep}{tail}")[1 if rooted else 0:]
            if os.path.exists(sibling):
                return sibling
    return darknet


def read_labels(path: str | os.PathLike, classes: int, *, missing: list[str] | None = None) -> torch.Tensor:
    """A YOLO label file as a float tensor (N, 5): ``class, x_center, y_center, width, height`` (relative).

    A missing file is no objects, as in Darknet (its path is appended to ``missing`` when given); a line that is not
    five numbers, a class id outside ``0..classes-1`` or a non-finite value is a :class:`DataError` ``file:line``.
    """
    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        if missing is not None:
            missing.append(path)
        return torch.zeros((0, 5), dtype=torch.float32)
    rows = []
    for number, line in enumerate(_read_text(path, "label file").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DataError(f"expected 'class x_center y_center width height', got {line.strip()[:80]!r}", path,
                            number)
        try:
            class_id = int(fields[0])
            x, y, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DataError(f"expected an integer class id and four numbers, got {line.strip()[:80]!r}", path,
                            number) from None
        if not 0 <= class_id < classes:
            raise DataError(f"class id {class_id} is beyond classes={classes} (ids are 0..{classes - 1})", path,
                            number)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise DataError(f"non-finite box value in {line.strip()[:80]!r}", path, number)
        rows.append((class_id, x, y, w, h))
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


@dataclass
class LabelledSet:
    """Images with their labels: ``label_files[i]`` (YOLO files, read lazily) or ``labels[i]`` (in memory, COCO)."""

    images: list[str]
    classes: int
    names: list[str]
    label_files: list[str] | None = None
    labels: list | None = None  # list of (N, 5) tensors
    coco: dict | None = None  # the COCO json this set came from (its annotations are the --coco ground truth)
    missing_labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def read_labels(self, index: int):
        if self.labels is not None:
            return self.labels[index]
        return read_labels(self.label_files[index], self.classes)


def labelled_set(source: str | os.PathLike, classes: int, names: list[str] | None = None) -> LabelledSet:
    """A labelled set from a list file / folder (YOLO labels found as Darknet finds them) or a COCO json.

    Missing label files count as no objects (as in Darknet); one :class:`DataWarning` gives their count."""
    source = os.fspath(source)
    if source.endswith(".json") and os.path.isfile(source):
        samples, coco_names, coco = _read_coco(source)
        if len(coco_names) != classes:
            raise DataError(f"COCO file has {len(coco_names)} categories but classes={classes}", source)
        return LabelledSet(images=[p for p, _ in samples], classes=classes, names=names or coco_names,
                           labels=[lab for _, lab in samples], coco=coco)
    images = read_image_list(source)
    label_files = [label_path(p) for p in images]
    missing = [p for p in label_files if not os.path.exists(p)]
    if missing:
        warnings.warn(f"{len(missing)} of {len(images)} images have no label file (counted as no objects, as Darknet "
                      f"does), e.g. {missing[0]}", DataWarning, stacklevel=2)
    return LabelledSet(images=images, classes=classes, names=names or [str(i) for i in range(classes)],
                       label_files=label_files, missing_labels=missing)


def read_coco(instances_json: str | os.PathLike, image_dir: str | os.PathLike | None = None
              ) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """A COCO ``instances_*.json`` as ``([(image_path, labels (N, 5)), ...], names)``.

    Categories are numbered 0.. in the order of their COCO ids; crowd annotations are left out (COCOeval ignores
    them too).  Images are looked for in ``image_dir``, else beside the json, in ``../<split>/``,
    ``../images/<split>/`` (``split`` from ``instances_<split>.json``) or ``../``: the first holding the first image."""
    samples, names, _ = _read_coco(os.fspath(instances_json), image_dir)
    return samples, names


def _coco_image_dir(json_path: str, coco: dict) -> str:
    folder = os.path.dirname(os.path.abspath(json_path))
    stem = Path(json_path).stem
    split = stem[len("instances_"):] if stem.startswith("instances_") else stem
    candidates = [folder, os.path.join(folder, "..", split), os.path.join(folder, "..", "images", split),
                  os.path.join(folder, ".."), os.path.join(folder, split), os.path.join(folder, "images")]
    first = next((img["file_name"] for img in coco["images"]), None)
    for c in candidates:
        if first is None or os.path.exists(os.path.join(c, first)):
            return os.path.normpath(c)
    return folder


def _read_coco(path: str, image_dir: str | os.PathLike | None = None):
    import torch

    try:
        coco = json.loads(_read_text(path, "COCO file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg})", path, exc.lineno) from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in
                                             ("images", "annotations", "categories")):
        raise DataError("not a COCO instances file (needs 'images', 'annotations' and 'categories' lists)", path)
    try:
        category_ids = sorted(int(c["id"]) for c in coco["categories"])
        by_id = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        images = {int(img["id"]): (str(img["file_name"]), float(img["width"]), float(img["height"]))
                  for img in coco["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"malformed image or category entry ({exc!r})", path) from None
    if not images:
        raise DataError("COCO file lists no images", path)
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    boxes: dict[int, list] = {i: [] for i in images}
    for n, ann in enumerate(coco["annotations"]):
        try:
            if ann.get("iscrowd", 0):
                continue
            image_id, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"annotation #{n} is malformed (needs image_id, category_id, bbox [x, y, w, h])",
                            path) from None
        if image_id not in images:
            raise DataError(f"annotation #{n} names image id {image_id}, which is not in 'images'", path)
        if cid not in contiguous:
            raise DataError(f"annotation #{n} names category id {cid}, which is not in 'categories'", path)
        _, iw, ih = images[image_id]
        boxes[image_id].append((contiguous[cid], (x + w / 2) / iw, (y + h / 2) / ih, w / iw, h / ih))
    folder = os.fspath(image_dir) if image_dir is not None else _coco_image_dir(path, coco)
    samples = [(os.path.join(folder, name), torch.tensor(boxes[i], dtype=torch.float32).reshape(-1, 5))
               for i, (name, _, _) in images.items()]
    coco = dict(coco, _netspec_category_ids=category_ids, _netspec_image_ids=list(images))
    return samples, [by_id[c] for c in category_ids], coco
