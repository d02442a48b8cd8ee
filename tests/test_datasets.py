"""netspec.datasets: obj.data, image lists, label files found as Darknet finds them, COCO json."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from netspec.datasets import label_path, labelled_set, read_coco, read_data_config, read_image_list, read_labels
from netspec.errors import DataError, DataWarning, NetspecError

from .conftest import SHARED, need_shared


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def dataset(tmp_path):
    write(tmp_path / "obj.names", "cat\ndog\n\n")
    write(tmp_path / "valid.txt", "a.png\n\nb.png\n")
    write(tmp_path / "a.png", "")
    write(tmp_path / "b.png", "")
    write(tmp_path / "obj.data", "# comment\nclasses = 2\ntrain = valid.txt\nvalid=valid.txt\nnames = obj.names\n"
          "backup = backup/\n")
    return tmp_path


def test_data_config_relative_to_its_folder_when_cwd_has_nothing(dataset, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    cfg = read_data_config(dataset / "obj.data")
    assert cfg.classes == 2 and cfg.names == ["cat", "dog"]
    assert cfg.valid == os.path.join(str(dataset), "valid.txt") == cfg.train
    assert cfg.backup == "backup/"  # does not exist anywhere: left as Darknet would use it (from the cwd)
    assert read_image_list(cfg.valid) == [os.path.join(str(dataset), "a.png"), os.path.join(str(dataset), "b.png")]


def test_data_config_prefers_the_working_directory_like_darknet(dataset, monkeypatch, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    write(cwd / "valid.txt", "c.png\n")
    monkeypatch.chdir(cwd)
    cfg = read_data_config(dataset / "obj.data")
    assert cfg.valid == "valid.txt" and read_image_list(cfg.valid) == ["c.png"]


def test_valid_defaults_to_train_and_classes_to_names(tmp_path):
    write(tmp_path / "n.names", "a\nb\nc\n")
    write(tmp_path / "list.txt", "x.jpg\n")
    cfg = read_data_config(write(tmp_path / "x.data", "train=list.txt\nnames=n.names\n"))
    assert cfg.classes == 3 and cfg.valid == cfg.train


@pytest.mark.parametrize("text, line, message", [
    ("classes=2\nnames=obj.names\nclases=3\n", 3, "unknown key 'clases' (did you mean 'classes'?)"),
    ("classes=3\nnames=obj.names\n", 2, "holds 2 names but classes=3"),
    ("classes=two\n", 1, "classes must be an integer"),
    ("classes=0\n", 1, "classes must be at least 1"),
    ("classes=2\nclasses=2\n", 2, "duplicate key 'classes'"),
    ("classes 2\n", 1, "expected 'key = value'"),
    ("classes=2\nnames=nowhere.names\n", None, "names file not found"),
])
def test_data_config_errors_name_file_and_line(dataset, text, line, message):
    path = write(dataset / "bad.data", text)
    with pytest.raises(DataError) as info:
        read_data_config(path)
    assert message in str(info.value)
    assert isinstance(info.value, NetspecError)
    if line is not None:
        assert str(info.value).startswith(f"{path}:{line}: ")


def test_names_with_a_blank_line_inside(tmp_path):
    write(tmp_path / "n.names", "a\n\nb\n")
    with pytest.raises(DataError, match=r"n.names:2: empty class name"):
        read_data_config(write(tmp_path / "x.data", "names=n.names\n"))


def test_empty_list_and_folder(tmp_path):
    with pytest.raises(DataError, match="image list is empty"):
        read_image_list(write(tmp_path / "l.txt", "\n  \n"))
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match="folder holds no images"):
        read_image_list(tmp_path / "imgs")
    write(tmp_path / "imgs" / "b.png", "")
    write(tmp_path / "imgs" / "a.JPG", "")
    write(tmp_path / "imgs" / "a.txt", "")
    assert [os.path.basename(p) for p in read_image_list(tmp_path / "imgs")] == ["a.JPG", "b.png"]
    with pytest.raises(DataError, match="image list not found"):
        read_image_list(tmp_path / "none.txt")


@pytest.mark.parametrize("image, label", [
    ("data/obj/x.jpg", "data/obj/x.txt"),
    ("coco/images/val2017/0001.jpg", "coco/labels/val2017/0001.txt"),
    ("coco/images/train2014/a.JPEG", "coco/labels/train2014/a.txt"),
    ("VOC/JPEGImages/a.png", "VOC/labels/a.txt"),
    ("C:\\VOC\\JPEGImages\\a.bmp", "C:\\VOC\\labels\\a.txt"),
    ("a.b/c.tiff", "a.b/c.txt"),
    ("x/y.webp", "x/y.txt"),  # not one of Darknet's extensions: still its .txt
    ("x/noext", "x/noext.txt"),
    ("data/images/a.jpg", "data/images/a.txt"),  # AlexeyAB leaves a plain images/ folder alone
])
def test_label_path_follows_darknet(image, label):
    assert label_path(image) == label


def test_label_path_images_to_labels_sibling_when_that_exists(tmp_path):
    write(tmp_path / "labels" / "a.txt", "0 .5 .5 .1 .1\n")
    assert label_path(str(tmp_path / "images" / "a.jpg")) == str(tmp_path / "labels" / "a.txt")
    write(tmp_path / "images" / "a.txt", "0 .5 .5 .1 .1\n")  # Darknet's own place wins
    assert label_path(str(tmp_path / "images" / "a.jpg")) == str(tmp_path / "images" / "a.txt")


def test_read_labels(tmp_path):
    path = write(tmp_path / "a.txt", "1 0.5 0.5 0.2 0.1\n\n0 1e-1 .2 .3 .4  \n")
    labels = read_labels(path, 2)
    assert labels.dtype == torch.float32 and labels.shape == (2, 5)
    assert labels[1].tolist() == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    missing: list[str] = []
    assert read_labels(tmp_path / "none.txt", 2, missing=missing).shape == (0, 5)
    assert missing == [str(tmp_path / "none.txt")]


@pytest.mark.parametrize("text, message", [
    ("0 0.5 0.5 0.2\n", "expected 'class x_center y_center width height'"),
    ("0 0.5 0.5 0.2 0.1 7\n", "expected 'class x_center y_center width height'"),
    ("x 0.5 0.5 0.2 0.1\n", "expected an integer class id"),
    ("0.0 0.5 0.5 0.2 0.1\n", "expected an integer class id"),
    ("2 0.5 0.5 0.2 0.1\n", "class id 2 is beyond classes=2"),
    ("-1 0.5 0.5 0.2 0.1\n", "class id -1 is beyond classes=2"),
    ("0 nan 0.5 0.2 0.1\n", "non-finite"),
])
def test_read_labels_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "a.txt", "0 .5 .5 .1 .1\n" + text)
    with pytest.raises(DataError) as info:
        read_labels(path, 2)
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)


def test_labelled_set_warns_once_with_the_missing_count(tmp_path):
    for name in "abc":
        write(tmp_path / f"{name}.png", "")
    write(tmp_path / "a.txt", "0 .5 .5 .1 .1\n")
    lst = write(tmp_path / "l.txt", "a.png\nb.png\nc.png\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = labelled_set(lst, 1)
    assert [str(w.message).split(" (")[0] for w in caught if w.category is DataWarning] == \
        ["2 of 3 images have no label file"]
    assert len(data) == 3 and data.read_labels(0).shape == (1, 5) and data.read_labels(1).shape == (0, 5)


def coco_file(tmp_path):
    (tmp_path / "val2017").mkdir(exist_ok=True)
    coco = {"images": [{"id": 7, "file_name": "x.jpg", "width": 200, "height": 100},
                       {"id": 9, "file_name": "y.jpg", "width": 50, "height": 50}],
            "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 20, 40, 60], "area": 2400,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 200, 100], "area": 1,
                             "iscrowd": 1}]}
    return write(tmp_path / "annotations" / "instances_val2017.json", json.dumps(coco))


def test_read_coco(tmp_path):
    samples, names = read_coco(coco_file(tmp_path))
    assert names == ["person", "dog"]
    assert [os.path.relpath(p, tmp_path) for p, _ in samples] == ["annotations/x.jpg", "annotations/y.jpg"]
    write(tmp_path / "val2017" / "x.jpg", "")
    samples, _ = read_coco(tmp_path / "annotations" / "instances_val2017.json")
    assert os.path.normpath(samples[0][0]) == str(tmp_path / "val2017" / "x.jpg")
    assert samples[0][1].tolist() == [pytest.approx([1, 0.15, 0.5, 0.2, 0.6])]  # crowd left out
    assert samples[1][1].shape == (0, 5)


def test_read_coco_errors(tmp_path):
    with pytest.raises(DataError, match=r"bad.json:2: not valid JSON"):
        read_coco(write(tmp_path / "bad.json", "{\n,"))
    with pytest.raises(DataError, match="not a COCO instances file"):
        read_coco(write(tmp_path / "list.json", "[]"))
    data = json.loads(coco_file(tmp_path).read_text())
    data["annotations"][0]["category_id"] = 5
    with pytest.raises(DataError, match="names category id 5"):
        read_coco(write(tmp_path / "c.json", json.dumps(data)))
    with pytest.raises(DataError, match="2 categories but classes=80"):
        labelled_set(coco_file(tmp_path), 80)


def test_shared_map_vector_data():
    folder = need_shared(SHARED / "map-vectors" / "yolov4-tiny")
    cfg = read_data_config(folder / "obj.data")
    assert cfg.classes == 80 and cfg.names[0] == "person"
    data = labelled_set(cfg.valid, cfg.classes, cfg.names)
    assert len(data) == 3 and not data.missing_labels
    assert sum(len(data.read_labels(i)) for i in range(3)) == 21


def test_lenient_data_config_warns_and_does_what_darknet_does(tmp_path):
    path = write(tmp_path / "x.data", "classes=2\nclases=3\nclasses=5\n")
    with pytest.warns(DataWarning) as caught:
        cfg = read_data_config(path, strict=False)
    assert cfg.classes == 2  # the first of duplicates, as Darknet's option_find
    assert [str(w.message) for w in caught] == [f"{path}:2: unknown key 'clases' (did you mean 'classes'?)",
                                                f"{path}:3: duplicate key 'classes' (first on line 1)"]
