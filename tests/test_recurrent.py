"""The recurrent sections: each forward against a plain per-time-step re-computation of Darknet's
formulas (``src/rnn_layer.c``, ``gru_layer.c``, ``lstm_layer.c``, ``crnn_layer.c``, ``conv_lstm_layer.c``,
the history layer), written from the sub-layers' tensors; their ``.weights`` records in Darknet's order and
byte-identical load/save; the time-major batch; the carried state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import netspec
from netspec.optim import describe_parameters
from netspec.sections.recurrent import reset_state, set_carry_state
from netspec.weights import DarknetHeader, darknet_weights_bytes

T, B = 3, 2  # time steps, sequences


def build(body: str, steps: int = T, shape: str = "inputs=5", **kw):
    return netspec.build(f"[net]\n{shape}\ntime_steps={steps}\n\n{body}", **kw).eval()


def randomize(net, seed: int = 0) -> None:
    """Every parameter and BN statistic random (variances positive), so no term can hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.dtype != torch.float32:
                continue
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if "running_var" in name
                    else torch.randn(t.shape, generator=gen) * 0.5)


# Darknet's activations, written out
def leaky(v):
    return torch.where(v > 0, v, 0.1 * v)


def logistic(v):
    return 1 / (1 + torch.exp(-v))


def linear(v):
    return v


def bn(y, b, shape):
    """Darknet's inference BN: (y - rolling_mean) / sqrt(rolling_variance + .00001) * scales + biases."""
    return (y - b.running_mean.view(shape)) / torch.sqrt(b.running_var.view(shape) + 1e-5) * b.weight.view(shape) \
        + b.bias.view(shape)


def dense(layer, x, act):
    """forward_connected_layer: x W^T, then BN (or the bias), then the activation."""
    y = x @ layer.linear.weight.T
    y = bn(y, layer.bn, (1, -1)) if layer.bn is not None else y + layer.linear.bias
    return act(y)


def conv(layer, x, act, pad):
    """forward_convolutional_layer (stride 1): the convolution, then BN (or the bias), then the activation."""
    y = F.conv2d(x, layer.conv.weight, None, 1, pad)
    y = bn(y, layer.bn, (1, -1, 1, 1)) if layer.bn is not None else y + layer.conv.bias.view(1, -1, 1, 1)
    return act(y)


def steps_of(x, steps=T):
    """Darknet's time-major batch: step t is samples t*B .. t*B+B-1."""
    n = x.shape[0] // steps
    return [x[t * n:(t + 1) * n] for t in range(steps)]


def forward(net, x):
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("shortcut", [0, 1])
@pytest.mark.parametrize("self_logistic", [0, 1, 2])
def test_rnn_follows_darknets_recurrence(shortcut, self_logistic):
    net = build(f"[rnn]\noutput=3\nhidden=4\nactivation=leaky\nbatch_normalize=1\nshortcut={shortcut}\n"
                f"logistic={self_logistic}\n")
    randomize(net)
    x = torch.randn(T * B, 5, 1, 1)
    m = net.layers[0]
    self_act = {0: leaky, 1: logistic, 2: lambda v: 2 * logistic(v) - 1}[self_logistic]
    state = torch.zeros(B, 4)
    expected = []
    for x_t in steps_of(x):
        new = dense(m.input_layer, x_t.flatten(1), leaky) + dense(m.self_layer, state, self_act)
        state = state + new if shortcut else new
        expected.append(dense(m.output_layer, state, leaky))
    got = forward(net, x)
    assert got.shape == (T * B, 3, 1, 1)
    torch.testing.assert_close(got.flatten(1), torch.cat(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("darknet_bugs", [True, False])
def test_gru_follows_darknets_recurrence(darknet_bugs):
    net = build("[gru]\noutput=4\nbatch_normalize=1\n", shape="width=2\nheight=1\nchannels=3",
                darknet_bugs=darknet_bugs)
    assert any("logistic, not tanh" in str(w) for w in net.warnings) == darknet_bugs
    randomize(net)
    x = torch.randn(T * B, 3, 1, 2)
    m = net.layers[0]
    squash = logistic if darknet_bugs else torch.tanh  # Darknet is built without USET for gru_layer.c
    h = torch.zeros(B, 4)
    expected = []
    for x_t in steps_of(x):
        x_t = x_t.flatten(1)
        z = logistic(dense(m.input_z, x_t, linear) + dense(m.state_z, h, linear))
        r = logistic(dense(m.input_r, x_t, linear) + dense(m.state_r, h, linear))
        candidate = squash(dense(m.input_h, x_t, linear) + dense(m.state_h, r * h, linear))
        h = z * h + (1 - z) * candidate  # weighted_sum_cpu(state, h, z)
        expected.append(h)
    torch.testing.assert_close(forward(net, x).flatten(1), torch.cat(expected), rtol=1e-5, atol=1e-6)
    assert net.spec.layers[0].info.darknet_out == (0, 0, 0)  # Darknet never sets a [gru]'s out_c/h/w


def test_lstm_follows_darknets_recurrence():
    net = build("[lstm]\noutput=4\n")
    randomize(net)
    x = torch.randn(T * B, 5, 1, 1)
    m = net.layers[0]
    h, c = torch.zeros(B, 4), torch.zeros(B, 4)
    expected = []
    for x_t in steps_of(x):
        x_t = x_t.flatten(1)
        f = logistic(dense(m.wf, h, linear) + dense(m.uf, x_t, linear))
        i = logistic(dense(m.wi, h, linear) + dense(m.ui, x_t, linear))
        g = torch.tanh(dense(m.wg, h, linear) + dense(m.ug, x_t, linear))
        o = logistic(dense(m.wo, h, linear) + dense(m.uo, x_t, linear))
        c = f * c + i * g
        h = o * torch.tanh(c)
        expected.append(h)
    torch.testing.assert_close(forward(net, x).flatten(1), torch.cat(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shortcut", [0, 1])
def test_crnn_follows_darknets_recurrence(shortcut):
    net = build(f"[crnn]\nsize=3\npad=1\noutput=3\nhidden=4\nactivation=leaky\nbatch_normalize=1\n"
                f"shortcut={shortcut}\n", shape="width=5\nheight=4\nchannels=2")
    randomize(net)
    x = torch.randn(T * B, 2, 4, 5)
    m = net.layers[0]
    state = torch.zeros(B, 4, 4, 5)
    expected = []
    for x_t in steps_of(x):
        new = conv(m.input_layer, x_t, leaky, 1) + conv(m.self_layer, state, leaky, 1)
        state = state + new if shortcut else new
        expected.append(conv(m.output_layer, state, leaky, 1))
    got = forward(net, x)
    assert got.shape == (T * B, 3, 4, 5)
    torch.testing.assert_close(got, torch.cat(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("peephole", [0, 1])
def test_conv_lstm_follows_darknets_cpu_forward(peephole):
    net = build(f"[conv_lstm]\nsize=3\npad=1\noutput=3\nbatch_normalize=1\npeephole={peephole}\nstate_constrain=1\n",
                shape="width=4\nheight=3\nchannels=2")
    randomize(net)
    with torch.no_grad():  # cell values well beyond +-1, so the clamp to state_constrain=1 acts
        for name in ("wg", "ug"):
            getattr(net.layers[0], name).bn.weight.mul_(8)
    x = torch.randn(T * B, 2, 3, 4)
    m = net.layers[0]
    h, c = torch.zeros(B, 3, 3, 4), torch.zeros(B, 3, 3, 4)
    expected = []
    clamped = False
    for x_t in steps_of(x):
        f = conv(m.wf, h, linear, 1) + conv(m.uf, x_t, linear, 1)
        i = conv(m.wi, h, linear, 1) + conv(m.ui, x_t, linear, 1)
        if peephole:
            f = f + conv(m.vf, c, linear, 1)
            i = i + conv(m.vi, c, linear, 1)
        g = torch.tanh(conv(m.wg, h, linear, 1) + conv(m.ug, x_t, linear, 1))
        c = logistic(f) * c + logistic(i) * g
        o = conv(m.wo, h, linear, 1) + conv(m.uo, x_t, linear, 1)
        if peephole:
            o = o + conv(m.vo, c, linear, 1)  # the new cell state
        h = logistic(o) * torch.tanh(c)  # from the cell state before the clamp
        clamped |= bool((c.abs() > 1).any())
        c = c.clamp(-1, 1)
        expected.append(h)
    assert clamped
    torch.testing.assert_close(forward(net, x), torch.cat(expected), rtol=1e-5, atol=1e-5)


def test_conv_lstm_replaces_nonfinite_values_as_darknet():
    """fix_nan_and_inf_cpu: a NaN/Inf at flat index i of the batch's state becomes 1/i (inf at 0)."""
    net = build("[conv_lstm]\nsize=1\noutput=2\nstate_constrain=0\n", steps=1, shape="width=2\nheight=1\nchannels=1")
    randomize(net)
    x = torch.full((1, 1, 1, 2), float("nan"))
    got = forward(net, x)
    assert torch.equal(got.flatten(), 1 / torch.arange(4.0))


def test_history_stacks_the_last_frames_along_channels():
    net = build("[history]\nhistory_size=3\n", steps=4, shape="width=2\nheight=1\nchannels=2")
    x = torch.randn(4 * B, 2, 1, 2)
    frames = steps_of(x, 4)
    expected = []
    for t in range(4):
        window = [frames[t - k] if t - k >= 0 else torch.zeros(B, 2, 1, 2) for k in range(3)]
        expected.append(torch.cat(window, 1))
    got = forward(net, x)
    assert got.shape == (4 * B, 6, 1, 2)
    assert torch.equal(got, torch.cat(expected))


def test_history_with_one_time_step_copies_the_flat_batch_as_darknet():
    net = build("[history]\nhistory_size=3\n", steps=1, shape="width=2\nheight=1\nchannels=2")
    assert any("keeps no history" in str(w) for w in net.warnings)
    x = torch.randn(B, 2, 1, 2)
    got = forward(net, x)
    # copy_cpu(l.inputs*l.batch, input, output): the whole batch lands at the start of the output buffer
    expected = torch.zeros(B * 3 * 4)
    expected[: B * 4] = x.flatten()
    assert torch.equal(got.flatten(), expected)
    intended = build("[history]\nhistory_size=3\n", steps=1, shape="width=2\nheight=1\nchannels=2",
                     darknet_bugs=False)
    assert torch.equal(forward(intended, x), torch.cat([x, torch.zeros(B, 4, 1, 2)], 1))


# ---------------------------------------------------------------- .weights records
def _connected_record(layer):
    rec = [layer.bn.bias if layer.bn is not None else layer.linear.bias, layer.linear.weight]
    if layer.bn is not None:
        rec += [layer.bn.weight, layer.bn.running_mean, layer.bn.running_var]
    return rec


def _conv_record(layer):
    rec = [layer.bn.bias if layer.bn is not None else layer.conv.bias]
    if layer.bn is not None:
        rec += [layer.bn.weight, layer.bn.running_mean, layer.bn.running_var]
    return rec + [layer.conv.weight]


# Darknet's save_weights_upto / load_weights_upto order of the sub-layers
RECORDS = {
    "rnn": ("[rnn]\noutput=3\nhidden=4\nbatch_normalize=1\n", "inputs=5", _connected_record,
            ["input_layer", "self_layer", "output_layer"]),
    "gru": ("[gru]\noutput=3\n", "inputs=5", _connected_record,
            ["input_z", "input_r", "input_h", "state_z", "state_r", "state_h"]),
    "lstm": ("[lstm]\noutput=3\nbatch_normalize=1\n", "inputs=5", _connected_record,
             ["wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"]),
    "crnn": ("[crnn]\npad=1\noutput=3\nhidden=4\nbatch_normalize=1\n", "width=3\nheight=3\nchannels=2", _conv_record,
             ["input_layer", "self_layer", "output_layer"]),
    "conv_lstm": ("[conv_lstm]\npad=1\noutput=3\n", "width=3\nheight=3\nchannels=2", _conv_record,
                  ["wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"]),
    "conv_lstm peephole": ("[conv_lstm]\npad=1\noutput=3\npeephole=1\nbatch_normalize=1\n",
                           "width=3\nheight=3\nchannels=2", _conv_record,
                           ["vf", "vi", "vo", "wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"]),
}


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_weights_record_is_darknets_and_round_trips_byte_identical(kind, tmp_path):
    body, shape, record_of, order = RECORDS[kind]
    net = build(body + "\n[connected]\noutput=2\n", shape=shape)
    randomize(net, 1)
    data = darknet_weights_bytes(net, header=DarknetHeader(0, 2, 5, 7))
    assert len(data) == 20 + 4 * net.spec.total_weights_floats
    m = net.layers[0]
    expected = [t.detach().flatten() for name in order for t in record_of(getattr(m, name))]
    expected += [t.detach().flatten() for t in _connected_record(net.layers[1])]
    body_floats = np.frombuffer(data[20:], "<f4")
    assert np.array_equal(body_floats, torch.cat(expected).numpy())
    assert net.spec.layers[0].info.weights_floats == sum(len(t) for t in expected[:-2])
    (tmp_path / "a.weights").write_bytes(data)
    other = build(body + "\n[connected]\noutput=2\n", shape=shape)
    randomize(other, 2)
    netspec.load_darknet_weights(other, tmp_path / "a.weights")
    netspec.save_darknet_weights(other, tmp_path / "b.weights")
    assert (tmp_path / "b.weights").read_bytes() == data
    x = torch.randn(T * B, *net.input_shape)
    assert torch.equal(forward(net, x), forward(other, x))


@pytest.mark.parametrize("section", ["rnn", "gru", "lstm", "crnn", "conv_lstm"])
def test_dontloadscales_is_rejected_since_darknet_ignores_it_there(section):
    flat = section in ("rnn", "gru", "lstm")
    shape = "inputs=4" if flat else "width=3\nheight=3\nchannels=1"
    body = f"[{section}]\noutput=2\ndontloadscales=1\n" + ("" if flat else "pad=1\n")
    with pytest.raises(netspec.CfgError, match=f"Darknet ignores dontloadscales in \\[{section}\\]"):
        build(body, shape=shape)
    net = build(body, shape=shape, strict=False)
    assert any("dontloadscales" in str(w) for w in net.warnings)


# ---------------------------------------------------------------- time steps and state
def test_a_batch_that_is_not_a_multiple_of_time_steps_names_the_net_line():
    net = build("[rnn]\noutput=2\nhidden=2\n", steps=3)
    with pytest.raises(netspec.CfgError, match=r":3:1: \[rnn\] #0: the input batch of 4 is not a multiple of \[net\] "
                                               r"time_steps=3"):
        forward(net, torch.randn(4, 5, 1, 1))


@pytest.mark.parametrize("body, shape", [
    ("[rnn]\noutput=3\nhidden=4\nactivation=leaky\n", "inputs=5"),
    ("[gru]\noutput=3\n", "inputs=5"),
    ("[lstm]\noutput=3\n", "inputs=5"),
    ("[crnn]\npad=1\noutput=2\nhidden=3\n", "width=3\nheight=2\nchannels=5"),
    ("[conv_lstm]\npad=1\noutput=2\npeephole=1\nstate_constrain=100\n", "width=3\nheight=2\nchannels=5"),
    ("[history]\nhistory_size=3\n", "width=3\nheight=2\nchannels=5"),
])
def test_carried_state_continues_the_sequence_across_forwards(body, shape):
    """With set_carry_state, two forwards of T steps compute what one forward of 2T steps does."""
    long_net = build(body, steps=2 * T, shape=shape)
    randomize(long_net)
    short_net = build(body, steps=T, shape=shape)
    short_net.load_state_dict(long_net.state_dict())
    x = torch.randn(2 * T * B, *long_net.input_shape)
    whole = forward(long_net, x)
    fresh = forward(short_net, x[T * B:])
    set_carry_state(short_net)
    halves = torch.cat([forward(short_net, x[: T * B]), forward(short_net, x[T * B:])])
    torch.testing.assert_close(halves, whole, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fresh, whole[T * B:])  # without the carried state the second half differs
    reset_state(short_net)
    torch.testing.assert_close(forward(short_net, x[: T * B]), whole[: T * B], rtol=1e-5, atol=1e-6)
    with pytest.raises(netspec.NetspecError, match="carried state is for a batch of 2 sequences"):
        forward(short_net, x[: T])


def test_gradients_flow_through_every_step():
    net = build("[lstm]\noutput=3\n").train()
    x = torch.randn(T * B, 5, 1, 1, requires_grad=True)
    net(x)[-B:].sum().backward()  # the last step's output reads every earlier step through the state
    assert all(x.grad[t * B:(t + 1) * B].abs().sum() > 0 for t in range(T))


# ---------------------------------------------------------------- shape rules
@pytest.mark.parametrize("section", ["crnn", "conv_lstm"])
def test_convolutions_that_change_the_size_are_rejected(section):
    with pytest.raises(netspec.CfgError, match=r"must keep the size"):
        build(f"[{section}]\nsize=3\noutput=2\n", shape="width=4\nheight=4\nchannels=1")  # pad=0: 4x4 -> 2x2
    with pytest.raises(netspec.CfgError, match=r"must keep the size"):
        build(f"[{section}]\nsize=3\nstride=2\npad=1\noutput=2\n", shape="width=4\nheight=4\nchannels=1")


def test_conv_lstm_bottleneck_is_rejected():
    with pytest.raises(netspec.CfgError, match="bottleneck=1 is computed by Darknet's GPU forward only"):
        build("[conv_lstm]\npad=1\noutput=2\nbottleneck=1\n", shape="width=4\nheight=4\nchannels=2")


def test_sizes_follow_darknets_make_functions():
    """Parameters, .weights floats and BFLOPs from Darknet's make_*_layer arithmetic."""
    net = build("[crnn]\nsize=3\npad=1\noutput=6\nhidden=4\nbatch_normalize=1\n\n"
                "[conv_lstm]\nsize=3\npad=1\noutput=5\npeephole=1\n\n[history]\nhistory_size=2\n",
                shape="width=7\nheight=5\nchannels=3")
    crnn, conv_lstm, history = net.spec.layers
    hw = 5 * 7
    w = [4 * 3 * 9, 4 * 4 * 9, 6 * 4 * 9]
    assert crnn.info.weights_floats == sum(w) + 4 * (4 + 4 + 6)
    assert crnn.info.params == sum(w) + 2 * (4 + 4 + 6)
    assert crnn.info.bflops == pytest.approx(2 * sum(w) * hw / 1e9)
    w = [5 * 5 * 9] * 7 + [5 * 6 * 9] * 4
    assert conv_lstm.info.weights_floats == sum(w) + 11 * 5
    assert conv_lstm.info.bflops == pytest.approx((2 * sum(w) * hw + 12 * 5 * hw) / 1e9)
    assert history.out_shape == (10, 5, 7)
    assert sum(p.numel() for p in net.parameters()) == net.spec.total_params


# ---------------------------------------------------------------- hooks: init, decay, fuse, table
def test_inner_layers_are_initialized_decayed_and_fused_as_their_own_sections():
    net = build("[rnn]\noutput=3\nhidden=4\nbatch_normalize=1\nactivation=leaky\n\n"
                "[crnn]\npad=1\noutput=2\nhidden=2\nbatch_normalize=1\n", shape="width=3\nheight=2\nchannels=2")
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        if name.endswith("bn.weight") or name.endswith("running_var"):
            assert torch.equal(t, torch.ones_like(t)), name
        elif name.endswith("bn.bias") or name.endswith("running_mean"):
            assert torch.equal(t, torch.zeros_like(t)), name
    w = net.layers[0].self_layer.linear.weight
    bound = (2 / 4) ** 0.5  # Darknet's uniform(-sqrt(2/fan_in), sqrt(2/fan_in)), fan_in = hidden
    assert 0.5 * bound < w.abs().max() <= bound
    again = build("[rnn]\noutput=3\nhidden=4\nbatch_normalize=1\nactivation=leaky\n\n"
                  "[crnn]\npad=1\noutput=2\nhidden=2\nbatch_normalize=1\n", shape="width=3\nheight=2\nchannels=2")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))

    infos = {i.name: i for i in describe_parameters(net)}
    assert infos["layers.0.input_layer.linear.weight"].decayed
    assert infos["layers.1.output_layer.conv.weight"].decayed
    assert not infos["layers.1.output_layer.bn.weight"].decayed

    randomize(net, 3)
    x = torch.randn(T * B, 2, 2, 3)
    unfused = forward(net, x)
    fused = forward(net.fuse(), x)
    assert net.layers[0].input_layer.bn is None and net.layers[1].self_layer.bn is None
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)


def test_cli_table_describes_recurrent_layers():
    from netspec.commands.build import format_table

    net = build("[crnn]\nsize=3\npad=1\noutput=4\nhidden=2\n\n[history]\nhistory_size=2\n\n[lstm]\noutput=7\n",
                shape="width=3\nheight=3\nchannels=2")
    rows = format_table(net).splitlines()
    assert rows[1].split()[1:4] == ["crnn", "4", "3x3/1"]
    assert rows[2].split()[1:3] == ["history", "x2"]
    assert rows[3].split()[1:3] == ["lstm", "7"]


def test_mish_follows_the_inner_layer_kind():
    """Darknet computes mish in convolutions (so in [crnn]) but outputs 0 for it in connected layers ([rnn])."""
    conv_net = build("[crnn]\npad=1\noutput=2\nhidden=2\nactivation=mish\n", shape="width=3\nheight=3\nchannels=1")
    assert not conv_net.warnings
    dense_net = build("[rnn]\noutput=2\nhidden=2\nactivation=mish\n")
    assert any("outputs 0 for activation=mish in [connected]" in str(w) for w in dense_net.warnings)
    assert torch.equal(forward(dense_net, torch.randn(T, 5, 1, 1)), torch.zeros(T, 2, 1, 1))


def test_every_recurrent_section_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from netspec.onnx_export import export_onnx

    net = build("[lstm]\noutput=4\n\n[gru]\noutput=3\n\n[rnn]\noutput=2\nhidden=3\nshortcut=1\n\n"
                "[conv_lstm]\npad=1\noutput=2\npeephole=1\n\n[history]\nhistory_size=2\n\n[crnn]\npad=1\nhidden=2\n"
                "output=2\n", darknet_bugs=False)
    randomize(net)
    export_onnx(net, tmp_path / "r.onnx", batch=T, dynamic_batch=True)
    session = ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    for batch in (T, 2 * T):
        x = torch.randn(batch, 5, 1, 1)
        (got,) = session.run(None, {"images": x.numpy()})
        np.testing.assert_allclose(got, forward(net, x).numpy(), rtol=1e-4, atol=1e-5)


def test_training_batch_norm_statistics_are_per_time_step():
    """Darknet runs each inner layer once per step on that step's B samples, so BN's batch statistics (in
    training) are those of one step, never of the whole T*B batch."""
    net = build("[rnn]\noutput=3\nhidden=4\nbatch_normalize=1\nactivation=linear\nlogistic=0\n").train()
    randomize(net)
    m = net.layers[0]

    def step_bn(layer, v):  # this step's mean and (biased, as torch's) variance
        y = v @ layer.linear.weight.T
        y = (y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + 1e-5)
        return y * layer.bn.weight + layer.bn.bias

    x = torch.randn(T * 4, 5, 1, 1)
    state = torch.zeros(4, 4)
    expected = []
    for x_t in steps_of(x):
        state = step_bn(m.input_layer, x_t.flatten(1)) + step_bn(m.self_layer, state)
        expected.append(step_bn(m.output_layer, state))
    got = forward(net, x)
    torch.testing.assert_close(got.flatten(1), torch.cat(expected), rtol=1e-4, atol=1e-5)
