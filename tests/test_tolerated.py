"""Strict-only errors (what Darknet reads anyway) say that --lenient builds the cfg as Darknet does."""

from __future__ import annotations

import pytest

import netspec
from netspec.cli import main
from netspec.specs import TOLERATED_HINT

from .conftest import SHARED, need_shared

CFG = """[net]
width=8
height=8
channels=3
batch=4
batch=8

[convolutional]
filters=18
size=1

[yolo]
mask=0,1,3
anchors=1,1, 2,2, 3,3, 4,4
num=3
classes=1

[convolutional]
filters=-4
size=1
"""


def test_only_the_tolerated_errors_carry_the_hint():
    with pytest.raises(netspec.CfgError) as info:
        netspec.build(CFG)
    by_line = {p.line: p.message for p in info.value.problems if p.severity == "error"}
    assert "duplicate key" in by_line[6] and by_line[6].endswith(TOLERATED_HINT)
    # a section's own strict-only check: Darknet reads the anchors past num
    assert "mask=3" in by_line[13] and by_line[13].endswith(TOLERATED_HINT)
    assert "filters=-4" in by_line[19] and not by_line[19].endswith(TOLERATED_HINT)  # an error either way
    assert "--lenient" in TOLERATED_HINT
    netspec.build_spec(CFG.replace("filters=-4", "filters=4"), strict=False)  # what the hint promises


@pytest.mark.parametrize("name", ["yolo9000.cfg", "yolov3-openimages.cfg", "efficientnet_b0.cfg"])
def test_darknet_cfgs_with_duplicate_net_keys(name, capsys):
    path = need_shared(SHARED / "darknet-cfgs" / name)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "duplicate key" in err and TOLERATED_HINT in err
    assert main(["check", "--lenient", str(path)]) == 0
