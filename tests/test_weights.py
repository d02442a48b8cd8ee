"""Darknet .weights I/O: header rules, record order per layer type, partial files, damaged files."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

import netspec
from netspec import WeightsError
from netspec.weights import DarknetHeader, darknet_weights_bytes, load_darknet_weights, save_darknet_weights

CFG = """
[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[convolutional]
filters=4
size=1
activation=linear

[shortcut]
from=-2
weights_type=per_channel
weights_normalization=relu

[batchnorm]

[convolutional]
filters=4
size=1
share_index=1
activation=linear

[local]
filters=2
size=3
pad=1
activation=linear

[connected]
output=5
batch_normalize=1
activation=linear

[implicit]
filters=4
"""


def record_sizes():
    # conv0: 4 bias + 12 BN + 4*3*9 weights; conv1: 4 + 16; shortcut: 2*4; batchnorm: 16;
    # shared conv: none; local: 2*8*8 biases + 64*2*36 weights; connected: 5 + 128*5 + 15; implicit: 4
    return [4 + 12 + 108, 4 + 16, 8, 16, 128 + 64 * 2 * 36, 5 + 640 + 15, 4]


def make_file(path, floats, header=(0, 2, 5), seen=1234, seen_fmt="<Q"):
    path.write_bytes(struct.pack("<iii", *header) + struct.pack(seen_fmt, seen) +
                     np.asarray(floats, "<f4").tobytes())
    return path


def test_record_layout_and_counts():
    net = netspec.build(CFG)
    assert net.spec.total_weights_floats == sum(record_sizes())
    data = darknet_weights_bytes(net)
    assert len(data) == 20 + 4 * sum(record_sizes())


def test_conv_record_order_is_bias_bn_then_weights(tmp_path):
    net = netspec.build(CFG)
    values = np.arange(sum(record_sizes()), dtype=np.float32)
    load_darknet_weights(net, make_file(tmp_path / "w.weights", values))
    conv = net.layers[0]
    assert conv.bn.bias.tolist() == [0, 1, 2, 3]
    assert conv.bn.weight.tolist() == [4, 5, 6, 7]
    assert conv.bn.running_mean.tolist() == [8, 9, 10, 11]
    assert conv.bn.running_var.tolist() == [12, 13, 14, 15]
    assert conv.conv.weight.flatten()[0].item() == 16
    # connected with BN: biases, weights, then scales/mean/var (BN after the weights)
    fc = net.layers[6]
    start = sum(record_sizes()[:5])
    assert fc.bn.bias[0].item() == start
    assert fc.linear.weight[0, 0].item() == start + 5
    assert fc.bn.weight[0].item() == start + 5 + 640
    # the shared conv (share_index=1) has no record and no parameters of its own
    assert not list(net.layers[4].parameters())
    assert net.layers[4].source is net.layers[1]


def test_round_trip_keeps_header_and_seen(tmp_path):
    net = netspec.build(CFG)
    values = np.random.default_rng(0).standard_normal(sum(record_sizes())).astype(np.float32)
    src = make_file(tmp_path / "in.weights", values, seen=987654321012)
    report = load_darknet_weights(net, src)
    assert report.header.seen == 987654321012 and report.complete
    save_darknet_weights(net, tmp_path / "out.weights")
    assert (tmp_path / "out.weights").read_bytes() == src.read_bytes()


def test_old_header_has_32_bit_seen(tmp_path):
    net = netspec.build(CFG)
    values = np.ones(sum(record_sizes()), np.float32)
    src = make_file(tmp_path / "old.weights", values, header=(0, 1, 0), seen=77, seen_fmt="<I")
    report = load_darknet_weights(net, src)
    assert report.header.seen_bytes == 4 and report.header.seen == 77
    save_darknet_weights(net, tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == src.read_bytes()


def test_transposed_file_transposes_connected_weights_only(tmp_path):
    net = netspec.build(CFG)
    plain = net
    values = np.random.default_rng(1).standard_normal(sum(record_sizes())).astype(np.float32)
    load_darknet_weights(plain, make_file(tmp_path / "a.weights", values))
    fc_w = plain.layers[6].linear.weight.detach().clone()
    conv_w = plain.layers[0].conv.weight.detach().clone()
    # the same values written as a transposed (major > 1000) file
    start = sum(record_sizes()[:5]) + 5
    t_values = values.copy()
    t_values[start:start + 640] = fc_w.numpy().T.ravel()
    other = netspec.build(CFG)
    report = load_darknet_weights(other, make_file(tmp_path / "t.weights", t_values, header=(1001, 2, 0)))
    assert report.header.transposed
    assert torch.equal(other.layers[6].linear.weight, fc_w)
    assert torch.equal(other.layers[0].conv.weight, conv_w)


def test_flipped_conv_is_stored_transposed(tmp_path):
    cfg = "[net]\nwidth=4\nheight=4\nchannels=2\n[convolutional]\nfilters=3\nsize=1\nflipped=1\nactivation=linear\n"
    net = netspec.build(cfg)
    values = np.arange(3 + 6, dtype=np.float32)
    load_darknet_weights(net, make_file(tmp_path / "f.weights", values))
    # stored [(c/groups)*size*size][n] = [2][3]: weight[n][c] = stored[c][n]
    expected = torch.arange(3, 9, dtype=torch.float32).view(2, 3).t()
    assert torch.equal(net.layers[0].conv.weight.view(3, 2), expected)


def test_backbone_file_loads_up_to_its_end(tmp_path):
    net = netspec.build(CFG)
    sizes = record_sizes()
    src = make_file(tmp_path / "conv.2", np.ones(sizes[0] + sizes[1], np.float32))
    report = load_darknet_weights(net, src)
    assert not report.complete and report.last_layer == 1 and report.layers_loaded == 2
    assert "layers 2..7 keep their initial weights" in report.warnings[0]


def test_upto_reads_and_writes_only_earlier_layers(tmp_path):
    net = netspec.build(CFG)
    values = np.random.default_rng(2).standard_normal(sum(record_sizes())).astype(np.float32)
    load_darknet_weights(net, make_file(tmp_path / "all.weights", values))
    save_darknet_weights(net, tmp_path / "partial.weights", upto=2)
    data = (tmp_path / "partial.weights").read_bytes()
    assert len(data) == 20 + 4 * (record_sizes()[0] + record_sizes()[1])
    fresh = netspec.build(CFG)
    report = load_darknet_weights(fresh, tmp_path / "all.weights", upto=2)
    assert report.complete and report.floats_read == record_sizes()[0] + record_sizes()[1]
    assert torch.equal(fresh.layers[1].conv.weight, net.layers[1].conv.weight)


def test_truncated_file_names_the_layer(tmp_path):
    net = netspec.build(CFG)
    src = make_file(tmp_path / "short.weights", np.ones(sum(record_sizes()) - 7, np.float32))
    with pytest.raises(WeightsError, match=r"ends inside the record of layer 6 \[connected\] \(line \d+\): the cfg "
                                           r"needs 5,568 floats, the file has 5,561"):
        load_darknet_weights(net, src)
    report = load_darknet_weights(net, src, strict=False)
    assert not report.complete and any("ends inside" in w for w in report.warnings)


def test_padded_file_reports_leftover_bytes(tmp_path):
    net = netspec.build(CFG)
    src = make_file(tmp_path / "long.weights", np.ones(sum(record_sizes()) + 2, np.float32))
    with pytest.raises(WeightsError, match="8 bytes left after the last record"):
        load_darknet_weights(net, src)
    report = load_darknet_weights(net, src, strict=False)
    assert report.complete and "left after" in report.warnings[0]


@pytest.mark.parametrize("header", [(7, 99, 0), (-1, 2, 0), (123456, 5, 1)])
def test_wrong_version_is_rejected(tmp_path, header):
    net = netspec.build(CFG)
    src = make_file(tmp_path / "v.weights", np.ones(sum(record_sizes()), np.float32), header=header)
    with pytest.raises(WeightsError, match="unsupported header version"):
        load_darknet_weights(net, src)


def test_empty_and_tiny_files(tmp_path):
    net = netspec.build(CFG)
    (tmp_path / "empty.weights").write_bytes(b"")
    with pytest.raises(WeightsError, match="too short for a Darknet .weights header"):
        load_darknet_weights(net, tmp_path / "empty.weights")
    (tmp_path / "hdr.weights").write_bytes(struct.pack("<iii", 0, 2, 5) + b"\0\0")
    with pytest.raises(WeightsError, match="ends inside its 20-byte header"):
        load_darknet_weights(net, tmp_path / "hdr.weights")


def test_nonfinite_values_are_reported(tmp_path):
    net = netspec.build(CFG)
    values = np.ones(sum(record_sizes()), np.float32)
    values[130] = np.nan  # inside layer 1's record
    src = make_file(tmp_path / "nan.weights", values)
    with pytest.raises(WeightsError, match=r"1 NaN/Inf value\(s\) in the record of layer 1"):
        load_darknet_weights(net, src)
    load_darknet_weights(net, src, allow_nonfinite=True)


def test_dontload_skips_without_advancing(tmp_path):
    cfg = CFG.replace("[convolutional]\nfilters=4\nsize=1\n", "[convolutional]\ndontload=1\nfilters=4\nsize=1\n")
    net = netspec.build(cfg)
    sizes = record_sizes()
    values = np.arange(sum(sizes) - sizes[1], dtype=np.float32)
    before = net.layers[1].conv.weight.detach().clone()
    report = load_darknet_weights(net, make_file(tmp_path / "d.weights", values))
    assert report.complete
    assert torch.equal(net.layers[1].conv.weight, before)  # untouched
    assert net.layers[2].weight.flatten()[0].item() == sizes[0]  # the shortcut got layer 1's bytes


def test_dontloadscales_reads_no_bn_tensors(tmp_path):
    cfg = "[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nbatch_normalize=1\ndontloadscales=1\nfilters=2\n" \
          "size=1\nactivation=linear\n"
    net = netspec.build(cfg)
    report = load_darknet_weights(net, make_file(tmp_path / "s.weights", [5, 6, 7, 8]))
    assert report.complete and report.floats_read == 4
    assert net.layers[0].bn.bias.tolist() == [5, 6] and net.layers[0].conv.weight.flatten().tolist() == [7, 8]


def test_default_header_for_a_fresh_net(tmp_path):
    net = netspec.build(CFG)
    save_darknet_weights(net, tmp_path / "new.weights")
    data = (tmp_path / "new.weights").read_bytes()
    assert struct.unpack_from("<iiiQ", data) == (0, 2, 5, 0)
    assert DarknetHeader().size == 20


def test_lenient_load_of_a_short_file_reads_every_whole_record_and_suggests_upto(tmp_path):
    # Darknet's own trained files: variances >= 0, so explaining the short file reads the file (it seeks);
    # the records must then still be read from where they are, not from where the explanation left off
    torch.manual_seed(0)
    source = netspec.build(CFG)
    for module in source.modules():
        if isinstance(module, torch.nn.BatchNorm2d) or isinstance(module, torch.nn.BatchNorm1d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.normal_()
    data = darknet_weights_bytes(source)
    path = tmp_path / "short.weights"
    path.write_bytes(data[:len(data) - 4 * (record_sizes()[-1] + 100)])  # ends inside layer 6 [connected]
    net = netspec.build(CFG)
    report = load_darknet_weights(net, path, strict=False)
    assert report.last_layer == 5 and not report.complete
    for index in range(6):
        for (got, _), (want, _) in zip(net.layers[index].darknet_record(), source.layers[index].darknet_record()):
            assert torch.equal(got, want), index
    (warning,) = [w for w in report.warnings if "ends inside" in w]
    assert "too short for this cfg" in warning and "layer 6 [connected]" in warning and "--upto 6" in warning
    with pytest.raises(WeightsError, match=r"too short for this cfg.*--upto 6"):
        load_darknet_weights(netspec.build(CFG), path)
