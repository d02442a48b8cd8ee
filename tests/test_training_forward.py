"""Detectors in training mode return the head inputs (what DetectionLoss takes), in eval mode Darknet's buffers."""

from __future__ import annotations

import torch

import netspec


def test_training_mode_returns_head_inputs():
    net = netspec.build("cfgs/yolov3-tiny.cfg", width=64, height=64)
    x = torch.rand(2, 3, 64, 64)
    net.train()
    heads = net(x)
    everything = net.eval().forward_all(x)
    assert len(heads) == len(net.outputs) == 2
    for head, index in zip(heads, net.outputs):
        source = net.spec.layers[index].sources[0]
        # eval-mode BN differs from train-mode BN, so compare shapes here and values on a BN-free path below
        assert head.shape == everything[source].shape
        assert head.requires_grad


def test_training_mode_head_input_values_equal_previous_layer_output():
    cfg = ("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
           "[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nnum=3\nclasses=1\n")
    net = netspec.build(cfg)
    x = torch.rand(2, 3, 8, 8)
    head_input = net.train()(x)[0]
    buffers = net.eval().forward_all(x)
    torch.testing.assert_close(head_input, buffers[0])
    assert not torch.equal(net(x)[0], head_input)  # eval mode applies the head's logistic
