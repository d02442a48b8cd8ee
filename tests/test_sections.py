"""Layer semantics the conformance vectors do not cover, each checked against a direct computation
from the reference formulas (loops or numpy), and Darknet's CPU quirks behind ``darknet_bugs``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import netspec
from netspec import activations


def net_of(body: str, w: int = 6, h: int = 4, c: int = 4, **kw):
    return netspec.build(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n{body}", **kw).eval()


def run(net, x):
    with torch.no_grad():
        return net.forward_all(x)


def test_maxpool_depth_takes_max_over_strided_channels():
    net = net_of("[maxpool]\nmaxpool_depth=1\nout_channels=3\n", c=7)
    x = torch.randn(1, 7, 4, 6)
    (y,) = run(net, x)
    for g in range(3):
        expected = x[0, g::3].amax(0)
        assert torch.equal(y[0, g], expected)


def test_maxpool_pads_right_bottom_with_minus_infinity():
    net = net_of("[maxpool]\nsize=2\nstride=2\n", w=5, h=3, c=1)
    x = -torch.arange(15.0).view(1, 1, 3, 5) - 1  # all negative: zero padding would win
    (y,) = run(net, x)
    assert y.shape == (1, 1, 2, 3)
    assert y[0, 0, 1, 2].item() == x[0, 0, 2, 4].item()


def test_local_avgpool_counts_only_cells_inside_the_image():
    net = net_of("[local_avgpool]\nsize=3\nstride=1\n", w=4, h=4, c=1)
    x = torch.rand(1, 1, 4, 4)
    (y,) = run(net, x)
    xn = x[0, 0].numpy()
    for r in range(4):
        for c in range(4):
            cells = [xn[i, j] for i in range(r - 1, r + 2) for j in range(c - 1, c + 2) if 0 <= i < 4 and 0 <= j < 4]
            assert y[0, 0, r, c].item() == pytest.approx(sum(cells) / len(cells), rel=1e-6)


def test_upsample_negative_stride_sums_blocks_times_scale():
    net = net_of("[upsample]\nstride=-2\nscale=0.5\n", w=4, h=4, c=2)
    x = torch.rand(1, 2, 4, 4)
    (y,) = run(net, x)
    expected = x.view(1, 2, 2, 2, 2, 2).sum(dim=(3, 5)) * 0.5
    assert torch.allclose(y, expected)


def test_upsample_nearest_times_scale():
    net = net_of("[upsample]\nstride=3\nscale=2\n", w=2, h=2, c=1)
    x = torch.rand(1, 1, 2, 2)
    (y,) = run(net, x)
    assert torch.equal(y, x.repeat_interleave(3, 2).repeat_interleave(3, 3) * 2)


def reorg3d_loop(x: np.ndarray, s: int) -> np.ndarray:
    c, h, w = x.shape
    out = np.zeros((c * s * s, h // s, w // s), x.dtype)
    for k in range(c * s * s):
        for j in range(h // s):
            for i in range(w // s):
                out[k, j, i] = x[k % c, j * s + (k // c) // s, i * s + (k // c) % s]
    return out


def test_reorg3d_and_reverse():
    net = net_of("[reorg3d]\nstride=2\n[reorg3d]\nstride=2\nreverse=1\n", w=4, h=6, c=3)
    x = torch.rand(1, 3, 6, 4)
    y, back = run(net, x)
    assert np.array_equal(y[0].numpy(), reorg3d_loop(x[0].numpy(), 2))
    assert torch.equal(back, x)


def test_old_reorg_reinterprets_the_buffer():
    net = net_of("[reorg]\nstride=2\n", w=4, h=4, c=8)
    x = torch.rand(1, 8, 4, 4)
    (y,) = run(net, x)
    view = x[0].numpy().reshape(2, 8, 8)
    expected = reorg3d_loop(view, 2).reshape(32, 2, 2)
    assert np.array_equal(y[0].numpy(), expected)


def test_softmax_groups_are_contiguous_chunks_with_temperature():
    net = net_of("[softmax]\ngroups=4\ntemperature=2\n", w=3, h=2, c=2)
    x = torch.randn(1, 2, 2, 3)
    (y,) = run(net, x)
    flat = x.flatten().numpy()
    for g in range(4):
        chunk = flat[g * 3:(g + 1) * 3] / 2
        e = np.exp(chunk - chunk.max())
        assert np.allclose(y.flatten()[g * 3:(g + 1) * 3].numpy(), e / e.sum(), atol=1e-6)


def test_crop_centre_and_rescale():
    net = net_of("[crop]\ncrop_width=2\ncrop_height=2\n", w=5, h=4, c=1)
    x = torch.rand(1, 1, 4, 5)
    (y,) = run(net, x)
    assert torch.allclose(y, x[:, :, 1:3, 1:3] * 2 - 1)


def test_lrn_window_and_unscaled_alpha():
    net = net_of("[lrn]\nsize=3\nalpha=0.5\nbeta=0.75\nkappa=2\n", w=1, h=1, c=5)
    x = torch.rand(1, 5, 1, 1) + 0.5
    (y,) = run(net, x)
    xs = x.flatten().numpy()
    for c in range(5):
        window = sum(xs[j] ** 2 for j in range(max(0, c - 1), min(5, c + 2)))
        assert y.flatten()[c].item() == pytest.approx(xs[c] * (2 + 0.5 * window) ** -0.75, rel=1e-5)


def test_route_groups_take_chunk_of_each_input():
    net = net_of("[dropout]\n[route]\nlayers=0,-1\ngroups=2\ngroup_id=1\n", c=4)
    x = torch.rand(1, 4, 4, 6)
    _, y = run(net, x)
    assert torch.equal(y, torch.cat([x[:, 2:], x[:, 2:]], 1))


def test_shortcut_with_fewer_channels_adds_to_the_first_ones():
    body = "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n[convolutional]\nfilters=4\nsize=1\n" \
           "activation=linear\n[shortcut]\nfrom=0\n"
    net = net_of(body)
    a, b, y = run(net, torch.rand(1, 4, 4, 6))
    assert torch.allclose(y[:, :2], b[:, :2] + a) and torch.equal(y[:, 2:], b[:, 2:])


def test_scale_channels_scale_wh():
    body = "[convolutional]\nfilters=1\nsize=1\nactivation=logistic\n[scale_channels]\nfrom=-2\nscale_wh=1\n"
    net = netspec.build("[net]\nwidth=6\nheight=4\nchannels=4\n[convolutional]\nfilters=4\nsize=1\n"
                        "activation=linear\n" + body).eval()
    a, m, y = run(net, torch.rand(1, 4, 4, 6))
    assert torch.allclose(y, a * m)


def test_connected_flattens_chw_and_inputs_key_for_flat_nets():
    net = netspec.build("[net]\ninputs=12\n[connected]\noutput=3\nactivation=linear\n").eval()
    assert net.input_shape == (12, 1, 1)
    x = torch.rand(2, 12, 1, 1)
    (y,) = run(net, x)
    lin = net.layers[0].linear
    assert torch.allclose(y.flatten(1), x.flatten(1) @ lin.weight.T + lin.bias)


def test_detection_softmax_per_cell():
    body = "[connected]\noutput=18\nactivation=linear\n[detection]\nside=1\nclasses=3\nnum=3\ncoords=4\nsoftmax=1\n"
    net = netspec.build("[net]\ninputs=4\n" + body).eval()
    fc, y = run(net, torch.rand(1, 4, 1, 1))
    assert torch.allclose(y.flatten()[:3], torch.softmax(fc.flatten()[:3], 0))
    assert torch.equal(y.flatten()[3:], fc.flatten()[3:])


REFERENCE = {
    "logistic": lambda x: 1 / (1 + math.exp(-x)),
    "loggy": lambda x: 2 / (1 + math.exp(-x)) - 1,
    "relu": lambda x: max(x, 0.0),
    "relie": lambda x: x if x > 0 else 0.01 * x,
    "leaky": lambda x: x if x > 0 else 0.1 * x,
    "ramp": lambda x: max(x, 0.0) + 0.1 * x,
    "tanh": lambda x: 2 / (1 + math.exp(-2 * x)) - 1,
    "elu": lambda x: x if x >= 0 else math.exp(x) - 1,
    "selu": lambda x: 1.0507 * x if x >= 0 else 1.0507 * 1.6732 * (math.exp(x) - 1),
    "plse": lambda x: 0.01 * (x + 4) if x < -4 else (0.01 * (x - 4) + 1 if x > 4 else 0.125 * x + 0.5),
    "hardtan": lambda x: min(max(x, -1.0), 1.0),
    "lhtan": lambda x: 0.001 * x if x < 0 else (0.001 * (x - 1) + 1 if x > 1 else x),
    "stair": lambda x: (math.floor(x / 2) if int(math.floor(x)) % 2 == 0 else (x - math.floor(x)) + math.floor(x / 2)),
    "relu6": lambda x: min(max(x, 0.0), 6.0),
    "gelu": lambda x: 0.5 * x * (1 + math.tanh(0.797885 * x + 0.035677 * x ** 3)),
    "revleaky": lambda x: x if x > 0 else 0.1 * x,
    "swish": lambda x: x / (1 + math.exp(-x)),
    "mish": lambda x: x * math.tanh(math.log1p(math.exp(x))),
    "hard_mish": lambda x: x if x > 0 else (x * x / 2 + x if x > -2 else 0.0),
    "linear": lambda x: x,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_activation_matches_reference_formula(name):
    xs = [-7.3, -4.5, -3.0, -2.5, -1.5, -0.5, -0.01, 0.0, 0.3, 0.99, 1.5, 2.7, 4.2, 6.5, 9.0]
    got = activations.FUNCTIONS[name](torch.tensor(xs, dtype=torch.float64)).tolist()
    for x, y in zip(xs, got):
        assert y == pytest.approx(REFERENCE[name](x), rel=1e-6, abs=1e-9), (name, x)


def test_normalize_channels_family():
    x = torch.randn(1, 5, 2, 3, dtype=torch.float64)
    pos = x.clamp(min=0)
    assert torch.allclose(activations.FUNCTIONS["normalize_channels"](x), pos / (1e-4 + pos.sum(1, keepdim=True)))
    e = x.exp()
    assert torch.allclose(activations.FUNCTIONS["normalize_channels_softmax"](x), e / (1e-4 + e.sum(1, keepdim=True)))


def test_darknet_cpu_zero_activations_are_reproduced_and_warned():
    body = "[activation]\nactivation=mish\n[convolutional]\nfilters=2\nsize=1\nactivation=relu6\n"
    net = net_of(body)
    assert any("outputs 0 for activation=mish in [activation]" in str(w) for w in net.warnings)
    assert any("activation=relu6" in str(w) for w in net.warnings)
    x = torch.rand(1, 4, 4, 6) + 1
    a, b = run(net, x)
    assert torch.count_nonzero(a) == 0 and torch.count_nonzero(b) == 0
    fixed = net_of(body, darknet_bugs=False)
    a, b = run(fixed, x)
    assert torch.allclose(a, torch.nn.functional.mish(x))
    assert (b >= 0).all() and (b <= 6).all()
    # conv computes mish itself: no warning, no zeros
    ok = net_of("[convolutional]\nfilters=2\nsize=1\nactivation=mish\n")
    assert not ok.warnings


def test_share_index_parameters_appear_once():
    body = "[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n" \
           "[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\nshare_index=-1\n"
    net = net_of(body)
    names = [n for n, _ in net.named_parameters()]
    assert names == ["layers.0.conv.weight", "layers.0.bn.weight", "layers.0.bn.bias"]
    assert not any(k.startswith("layers.1.") for k in net.state_dict())
    x = torch.rand(1, 4, 4, 6)
    a, b = run(net, x)
    assert torch.allclose(b, net.layers[0](a))


def test_binary_weights_follow_darknet_cpu_unless_asked():
    body = "[convolutional]\nfilters=2\nsize=1\nbinary=1\nactivation=linear\n"
    x = torch.rand(1, 4, 4, 6)
    cpu = net_of(body)
    assert any("ignores binary=1" in str(w) for w in cpu.warnings)
    (y,) = run(cpu, x)
    conv = cpu.layers[0].conv
    assert torch.allclose(y, torch.nn.functional.conv2d(x, conv.weight, conv.bias))
    real = net_of(body, darknet_bugs=False)
    (y,) = run(real, x)
    w = real.layers[0].conv.weight
    wb = torch.sign(w) * w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(y, torch.nn.functional.conv2d(x, wb, real.layers[0].conv.bias), atol=1e-6)


def test_unknown_activation_is_an_error_or_relu_when_lenient():
    body = "[convolutional]\nfilters=2\nsize=1\nactivation=leakey\n"
    with pytest.raises(netspec.CfgError, match="did you mean 'leaky'"):
        net_of(body)
    net = net_of(body, strict=False)
    assert net.layers[0].activation == "relu"
    assert any("using relu as Darknet does" in str(w) for w in net.warnings)


def test_softmax_spatial_is_ignored_like_darknet_cpu_unless_asked():
    body = "[softmax]\nspatial=1\n"
    x = torch.randn(1, 4, 4, 6)
    cpu = net_of(body)
    assert any("ignores spatial=1" in str(w) for w in cpu.warnings)
    (y,) = run(cpu, x)
    assert torch.allclose(y.flatten(), torch.softmax(x.flatten(), 0))
    (y,) = run(net_of(body, darknet_bugs=False), x)
    assert torch.allclose(y, torch.softmax(x, 1))


def test_network_records_darknet_bugs_setting():
    assert net_of("[dropout]\n").darknet_bugs is True
    assert net_of("[dropout]\n", darknet_bugs=False).darknet_bugs is False
    assert net_of("[dropout]\n", darknet_bugs=False, seed=None).darknet_bugs is False


def test_image_layer_after_a_flat_softmax_is_rejected_like_darknet():
    with pytest.raises(netspec.CfgError, match=r"#1: needs an image input, but layer 0 \[softmax\] outputs a flat"):
        net_of("[softmax]\n[convolutional]\nfilters=2\nsize=1\n")
    net = net_of("[softmax]\n[cost]\n")  # the usual classifier tail stays fine
    assert net.outputs == (0,)


def test_huge_values_are_clipped_in_messages():
    junk = "x" * 100_000
    with pytest.raises(netspec.CfgError) as info:
        netspec.build(f"[net]\nwidth=8\nheight=8\nchannels=3\n[{junk}]\n[convolutional]\nactivation={junk}\n"
                      f"{junk}=1\nfilters={junk}\n")
    assert len(info.value.problems) == 4
    assert all(len(p.message) < 400 for p in info.value.problems)


@pytest.mark.parametrize("key", ["onlyforward=1", "stopbackward=1"])
def test_gradient_stops_at_onlyforward_and_stopbackward_layers(key):
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
            f"[convolutional]\nfilters=4\nsize=1\nactivation=linear\n{key}\n"
            "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n")
    net = net_of(body).train()
    net(torch.rand(2, 4, 4, 6)).sum().backward()
    assert net.layers[0].conv.weight.grad is None  # nothing flowed back past layer 1
    assert net.layers[2].conv.weight.grad is not None
    import copy
    import pickle

    pickle.loads(pickle.dumps(copy.deepcopy(net)))  # the hook is a plain function: copies and pickles
