"""Weight initialization: Darknet's default scheme, per-block/[net] schemes, reproducibility per parameter."""

from __future__ import annotations

import math

import pytest
import torch

import netspec
from netspec.errors import CfgError
from netspec.init import activation_gain

NET = "[net]\nwidth=16\nheight=16\nchannels=3\n{net_extra}\n"
CONV = "[convolutional]\nfilters={filters}\nsize=3\npad=1\nactivation=leaky\n{extra}\n"


def cfg(*blocks: str, net_extra: str = "") -> str:
    return NET.format(net_extra=net_extra) + "".join(blocks)


def conv(filters: int = 8, extra: str = "") -> str:
    return CONV.format(filters=filters, extra=extra)


def test_darknet_default_scheme_bounds_and_values():
    net = netspec.build(cfg(conv(8, "batch_normalize=1"), conv(4), "[connected]\noutput=5\nactivation=linear\n",
                            "[shortcut]\nfrom=-1\nweights_type=per_feature\nweights_normalization=relu\n"
                            "activation=linear\n"))
    w0 = net.layers[0].conv.weight
    bound = math.sqrt(2.0 / (3 * 3 * 3))
    assert w0.abs().max() <= bound and w0.abs().max() > 0.8 * bound
    bn = net.layers[0].bn
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
    assert torch.equal(net.layers[1].conv.bias, torch.zeros(4))
    lin = net.layers[2].linear.weight
    assert lin.abs().max() <= math.sqrt(2.0 / (4 * 16 * 16))
    assert torch.equal(net.layers[3].weight, torch.ones(2))


def test_same_seed_same_values_and_different_seed_differs():
    text = cfg(conv(8), conv(4))
    a, b, c = netspec.build(text, seed=3), netspec.build(text, seed=3), netspec.build(text, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.layers[0].conv.weight, c.layers[0].conv.weight)


def test_blocks_added_before_do_not_change_a_blocks_values():
    short = netspec.build(cfg(conv(8), conv(4)))
    longer = netspec.build(cfg(conv(6), "[maxpool]\nsize=2\nstride=1\n", conv(8), conv(4)))
    # the last conv reads 8 channels in both nets: identical values
    assert torch.equal(short.layers[1].conv.weight, longer.layers[3].conv.weight)
    # weight and bias of one block, and two blocks, draw different numbers
    assert not torch.equal(short.layers[0].conv.weight.flatten()[:4], short.layers[1].conv.weight.flatten()[:4])


def test_seed_none_skips_init():
    torch.manual_seed(0)
    a = netspec.build(cfg(conv(8)), seed=None)
    torch.manual_seed(0)
    b = netspec.build(cfg(conv(8)), seed=None)
    assert torch.equal(a.layers[0].conv.weight, b.layers[0].conv.weight)  # torch's default init, same RNG
    assert not torch.equal(a.layers[0].conv.weight, netspec.build(cfg(conv(8))).layers[0].conv.weight)


@pytest.mark.parametrize("scheme, check", [
    ("zeros", lambda w: torch.equal(w, torch.zeros_like(w))),
    ("constant(0.25)", lambda w: torch.equal(w, torch.full_like(w, 0.25))),
    ("normal(std=0.01)", lambda w: 0.007 < w.std().item() < 0.013 and abs(w.mean().item()) < 0.003),
    ("trunc_normal(std=0.02)", lambda w: w.abs().max().item() <= 0.04 + 1e-7 and 0.01 < w.std().item() < 0.02),
    ("uniform(-0.5, 0.5)", lambda w: w.min() >= -0.5 and w.max() <= 0.5 and w.max() > 0.45),
    ("xavier_uniform", lambda w: w.abs().max() <= math.sqrt(6 / (72 + 72)) + 1e-7),
])
def test_block_schemes(scheme, check):
    net = netspec.build(cfg(conv(8), conv(8, f"init={scheme}")))
    assert check(net.layers[1].conv.weight.detach())
    assert not check(net.layers[0].conv.weight.detach()) or scheme == "xavier_uniform"


def test_kaiming_gain_follows_the_activation():
    assert activation_gain("leaky") == pytest.approx(math.sqrt(2 / 1.01))
    assert activation_gain("relu") == pytest.approx(math.sqrt(2))
    assert activation_gain("linear") == 1.0
    assert activation_gain("leaky", a=0.2) == pytest.approx(math.sqrt(2 / 1.04))
    net = netspec.build(cfg(conv(64, "init=kaiming_normal"), conv(64, "init=kaiming_normal(mode=fan_out)")))
    std = net.layers[0].conv.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / 1.01) / math.sqrt(27), rel=0.1)
    assert net.layers[1].conv.weight.std().item() == pytest.approx(math.sqrt(2 / 1.01) / math.sqrt(576), rel=0.1)


def test_orthogonal_rows():
    net = netspec.build(cfg(conv(8, "init=orthogonal")))
    w = net.layers[0].conv.weight.detach().reshape(8, -1).double()
    assert torch.allclose(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-5)


def test_net_default_and_block_override():
    net = netspec.build(cfg(conv(8), conv(8, "init=zeros\nbias_init=constant(2)"),
                            net_extra="init=constant(0.5)\nbias_init=constant(1)"))
    assert torch.equal(net.layers[0].conv.weight, torch.full_like(net.layers[0].conv.weight, 0.5))
    assert torch.equal(net.layers[0].conv.bias, torch.ones(8))
    assert torch.equal(net.layers[1].conv.weight, torch.zeros_like(net.layers[1].conv.weight))
    assert torch.equal(net.layers[1].conv.bias, torch.full((8,), 2.0))


def test_bias_prob_prior_and_bn_bias():
    net = netspec.build(cfg(conv(8, "batch_normalize=1\nbias_prob=0.5"), conv(4, "bias_prob=0.01")))
    assert torch.equal(net.layers[0].bn.bias, torch.zeros(8))
    expected = -math.log(0.99 / 0.01)
    assert torch.allclose(net.layers[1].conv.bias, torch.full((4,), expected))


@pytest.mark.parametrize("block, key", [
    ("[maxpool]\nsize=2\nstride=2\ninit=zeros\n", "init"),
    ("[maxpool]\nsize=2\nstride=2\nbias_prob=0.1\n", "bias_prob"),
    (CONV.format(filters=4, extra="bias_init=zeros\nbias_prob=0.1"), "bias_prob"),
])
def test_misplaced_keys_are_errors(block, key):
    with pytest.raises(CfgError) as info:
        netspec.build(cfg(conv(8), block))
    assert key in str(info.value) and info.value.line is not None


def test_implicit_keeps_its_darknet_range():
    net = netspec.build(cfg(conv(8), "[implicit]\nfilters=8\nmean=1\nstd=0.1\n"), seed=1)
    w = net.layers[1].weight
    assert w.min() >= 0.9 and w.max() <= 1.1 and not torch.equal(w, torch.ones_like(w))
