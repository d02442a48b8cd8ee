"""Files named by a cfg or given on the command line are untrusted: they give errors or warnings, never hangs,
crashes or code execution."""

from __future__ import annotations

import torch

import netspec

REGION = ("[net]\nwidth=4\nheight=4\nchannels=1\n[conv]\nfilters={f}\nsize=1\n"
          "[region]\nclasses={c}\nnum=1\ntree={tree}\n")


def _region_output(tree: str, classes: int):
    net = netspec.build(REGION.format(f=classes + 5, c=classes, tree=tree)).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 4, 4))[0]
    return net, out


def test_tree_file_that_is_a_device_is_not_read():
    net, out = _region_output("/dev/zero", 3)  # reading it would never end
    assert any("not found or unreadable" in w.message for w in net.warnings)
    assert out.shape[-1] == 3 + 5


def test_tree_file_with_the_wrong_number_of_classes_is_not_used(tmp_path):
    tree = tmp_path / "t.tree"
    tree.write_text("a -1\nb 0\nc 0\n")
    net, out = _region_output(str(tree), 3)
    assert not net.warnings and net.layers[1].tree == [(0, 1), (1, 2)]
    # found by probing: 5 classes with a 3-class tree gave an output 2 entries short of the inferred shape
    net, out = _region_output(str(tree), 5)
    assert any("lists 3 classes but the layer has 5" in w.message for w in net.warnings)
    assert tuple(out.shape[1:]) == net.spec.layers[1].section.tensor_shape(net.spec.layers[1])
