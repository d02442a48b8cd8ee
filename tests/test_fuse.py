"""Inference mode (``Network.fuse``: BN folded in float64, in-place activations) and the cold build
(meta-device construction, one initialization, ``.weights`` without any initialization)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import netspec
from netspec.errors import WeightsError
from netspec.materialize import assemble_uninitialized, load_initializing_rest
from netspec.network import assemble
from netspec.weights import load_darknet_weights, save_darknet_weights

from .conftest import CFGS, CONFORMANCE, need_native_bf16, refuse_bf16_packing
from .test_conformance import load_vector

# kitchen-sink: shared convs, antialiasing, every activation; -cls: [connected] with BN; yolov7-tiny: deep.
FUSE_NETS = ["kitchen-sink", "kitchen-sink-cls", "yolov3-tiny", "yolov7-tiny"]

SMALL_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish

[convolutional]
share_index=-1
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=mish

[shortcut]
from=-2
activation=swish

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
activation=logistic

[route]
layers=-1,-2

[connected]
output=10
batch_normalize=1
activation=relu
"""


def _outputs(net, x):
    out = net(x)
    return out if isinstance(out, list) else [out]


def _random_bn(net, seed=1):
    """Non-trivial BN statistics so that folding has something to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen))
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return net


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("name", FUSE_NETS)
def test_fused_matches_unfused_on_darknet_weights(name, tmp_path):
    net, _, _, x = load_vector(name, tmp_path)
    with torch.no_grad():
        exact = _outputs(copy.deepcopy(net).double(), x.double())
        # The fold itself, in float64: equal to the unfused net up to float64 rounding.
        fused64 = _outputs(copy.deepcopy(net).double().fuse(), x.double())
        unfused = _outputs(net, x)
        fused = _outputs(copy.deepcopy(net).fuse(), x)
    for e, f64, u, f in zip(exact, fused64, unfused, fused):
        assert _rel(f64, e) < 1e-12
        # In float32 the fused net is as close to the exact result as the unfused one (both carry
        # float32 rounding through every layer), and the two agree to float32 noise.
        assert _rel(f, e) <= 2 * _rel(u, e) + 2e-6
        assert _rel(f, u) < 1e-4


def test_fuse_removes_every_foldable_bn_and_keeps_the_rest():
    net = _random_bn(netspec.build(SMALL_CFG)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        fused = copy.deepcopy(net).fuse()
        got = fused(x)
    assert fused.fused and not fused.training
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert fused.layers[0].conv.bias is not None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert netspec.build(SMALL_CFG, fuse=True).fused


def test_fused_net_can_be_trained_through_and_inplace_falls_back_under_autograd():
    net = _random_bn(netspec.build(SMALL_CFG)).fuse()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    out = net(x)
    out.sum().backward()  # in-place mish/sigmoid would break backward: the fallback keeps it working
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(net(x), out.detach())


def test_training_runs_result_differentiable_activations_in_place_with_the_same_gradients():
    from netspec.inference import InplaceActivation

    net = _random_bn(netspec.build(SMALL_CFG)).train()
    convs = [m for m in net.layers if isinstance(getattr(m, "act_fn", None), InplaceActivation)]
    assert {m.activation for m in convs if m.act_fn.autograd_inplace} == {"leaky", "logistic"}
    assert not any(m.act_fn.autograd_inplace for m in convs if m.activation == "mish")  # needs its input
    reference = copy.deepcopy(net)
    for m in reference.layers:
        if isinstance(getattr(m, "act_fn", None), InplaceActivation):
            m.act_fn = m.act_fn.fn  # out of place
    x = torch.rand(2, 3, 32, 32)
    for model in (net, reference):
        model(x).square().sum().backward()
    for (name, p), (_, q) in zip(net.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_inplace_activation_never_touches_a_tensor_another_layer_reads():
    net = _random_bn(netspec.build(SMALL_CFG)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = net.forward_all(x)
        after = copy.deepcopy(net).fuse().forward_all(x)
    for i, (a, b) in enumerate(zip(before, after)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=f"layer {i}")


def test_fused_net_refuses_darknet_weights(tmp_path):
    net = netspec.build(SMALL_CFG)
    path = tmp_path / "w.weights"
    save_darknet_weights(net, path)
    net.fuse()
    with pytest.raises(WeightsError, match="fused"):
        save_darknet_weights(net, tmp_path / "again.weights")
    with pytest.raises(WeightsError, match="fused"):
        load_darknet_weights(net, path)


# ------------------------------------------------------------------ cold build

def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("cfg", ["kitchen-sink", "kitchen-sink-cls", "yolov4-tiny.cfg"])
def test_meta_build_gives_the_values_of_an_eager_build(cfg):
    from netspec.init import init_weights

    path = CFGS / cfg if cfg.endswith(".cfg") else CONFORMANCE / cfg / "model.cfg"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    spec = netspec.build_spec(path, 64, 64, strict=False)
    eager = init_weights(assemble(spec), seed=3)
    cold = netspec.build(path, 64, 64, strict=False, seed=3)
    _assert_same_state(_state(cold), _state(eager))
    # constants computed at construction (blur kernels, head masks) survive the meta construction
    for (name, a), (_, b) in zip(eager.named_buffers(), cold.named_buffers()):
        assert torch.equal(a, b), name
    x = torch.rand(1, spec.input_shape[0], 64, 64)
    with torch.no_grad():
        for a, b in zip(_outputs(eager.eval(), x), _outputs(cold.eval(), x)):
            assert torch.equal(a, b)


def test_weights_without_init_and_partial_file_initializes_the_rest(tmp_path):
    full = _random_bn(netspec.build(SMALL_CFG, seed=5))
    path = tmp_path / "backbone.weights"
    save_darknet_weights(full, path, upto=2)  # a backbone file: layers 0 and 1 only
    expected = netspec.build(SMALL_CFG, seed=7)
    load_darknet_weights(expected, path)
    cold = assemble_uninitialized(netspec.build_spec(SMALL_CFG))
    report = load_initializing_rest(cold, path, seed=7)
    assert not report.complete and report.last_layer == 1
    _assert_same_state(_state(cold), _state(expected))


def test_dontloadscales_layer_gets_its_scales_from_init(tmp_path):
    cfg = SMALL_CFG.replace("activation=mish\n", "activation=mish\ndontloadscales=1\n", 1)
    src = _random_bn(netspec.build(cfg, seed=5))
    path = tmp_path / "full.weights"
    save_darknet_weights(src, path)
    expected = netspec.build(cfg, seed=7)
    load_darknet_weights(expected, path)
    cold = assemble_uninitialized(netspec.build_spec(cfg))
    load_initializing_rest(cold, path, seed=7)
    _assert_same_state(_state(cold), _state(expected))


def test_cli_build_with_weights_and_fuse(tmp_path):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    path = tmp_path / "w.weights"
    save_darknet_weights(netspec.build(SMALL_CFG), path)
    for extra in ([], ["--weights", str(path)]):
        run = subprocess.run([sys.executable, "-m", "netspec", "build", str(cfg), "--fuse", *extra],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "connected" in run.stdout


# ------------------------------------------------------------------ oneDNN fast path of fused convs

def _fast_layers(net):
    return [m for m in net.layers if getattr(m, "fast", None) is not None]


@pytest.fixture
def fused_small():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("PyTorch built without oneDNN: fused convs use the regular path")
    net = _random_bn(netspec.build(SMALL_CFG)).eval()
    return net, copy.deepcopy(net).fuse()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packed_conv_path_is_used_and_matches(fused_small, dtype):
    if dtype == "bf16":
        need_native_bf16()
    net, fused = fused_small
    x = torch.rand(2, 3, 32, 32)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        expected, got = net(x), fused(x)
    packed_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert _fast_layers(fused) and all(m.fast._key is not None and m.fast._key[0] == packed_dtype
                                       for m in _fast_layers(fused))
    tol = 1e-5 if dtype == "fp32" else 3e-2
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


def test_packed_weights_follow_weight_changes_and_are_not_copied(fused_small, tmp_path):
    _, fused = fused_small
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        fused(x)
        fused.layers[0].conv.weight.mul_(2)  # in place: the packed copy must be rebuilt
        got = fused(x)
        clone = copy.deepcopy(fused)
        assert all(m.fast._key is None for m in _fast_layers(clone))
        torch.save(fused, tmp_path / "fused.pt")
        loaded = torch.load(tmp_path / "fused.pt", weights_only=False)
        for m in _fast_layers(fused):
            m.fast = None  # the regular path on the same (doubled) weights
        expected = fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def _held_bytes(conv) -> int:
    return conv._parameters["weight"].untyped_storage().nbytes()


def test_fused_conv_holds_its_weight_once_and_state_dict_saving_copying_still_see_it(fused_small, tmp_path):
    net, fused = fused_small
    assert all(m.conv.released for m in _fast_layers(fused))  # packed by fuse() itself, the plain weight let go
    fused_state = {k: v.clone() for k, v in fused.state_dict().items()}
    unfused_state = copy.deepcopy(net).fuse()
    for k, v in unfused_state.state_dict().items():
        assert torch.equal(fused_state[k], v), k  # the folded values, not the placeholder
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        got = fused(x)
    shared = {id(m.source) for m in fused.layers if getattr(m, "_share", ())}  # read by the regular path: kept
    fast = [m for m in _fast_layers(fused) if id(m) not in shared]
    assert fast and all(m.conv.released and _held_bytes(m.conv) <= 8 for m in fast)  # packed copy only
    assert all(p.shape == fused_state[k].shape for k, p in fused.named_parameters())
    state = fused.state_dict()
    assert state.keys() == fused_state.keys()
    for k, v in fused_state.items():
        assert torch.equal(state[k], v), k
    assert all(m.conv.released for m in fast)  # state_dict() did not bring the plain weights back
    torch.save(fused.state_dict(), tmp_path / "state.pt")
    torch.save(fused, tmp_path / "net.pt")
    clone = copy.deepcopy(fused)
    reloaded = copy.deepcopy(net).fuse()
    reloaded.load_state_dict(torch.load(tmp_path / "state.pt"))
    whole = torch.load(tmp_path / "net.pt", weights_only=False)
    with torch.no_grad():
        again = fused(x)
        for other in (clone, reloaded, whole):
            torch.testing.assert_close(other(x), got, rtol=0, atol=0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    # a fused net loads new weights while released: they are packed (and the plain ones released) again
    doubled = {k: v * 2 if k.endswith("conv.weight") else v for k, v in fused_state.items()}
    fused.load_state_dict(doubled)
    with torch.no_grad():
        y = fused(x)
    assert all(m.conv.released for m in fast)
    ref = copy.deepcopy(net).fuse()
    ref.load_state_dict(doubled)
    for m in _fast_layers(ref):
        m.fast = None  # the regular path
    with torch.no_grad():
        torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)


def test_reading_a_released_weight_brings_it_back_for_good(fused_small):
    _, fused = fused_small
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = fused(x)
    conv = fused.layers[0].conv
    assert conv.released
    w = conv.weight
    assert w is conv._parameters["weight"] and not conv.released
    assert _held_bytes(conv) == w.numel() * w.element_size()
    assert torch.equal(w, fused.state_dict()["layers.0.conv.weight"])
    with torch.no_grad():
        torch.testing.assert_close(fused(x), before, rtol=0, atol=0)
        assert not conv.released  # the caller may hold it: kept
        w.mul_(2)
        changed = fused(x)
    assert not torch.equal(changed, before)  # the packed copy followed the change


def test_released_weights_follow_to_and_the_regular_path(fused_small):
    net, fused = fused_small
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        fused(x)
        wide = copy.deepcopy(fused).to(torch.float64)  # _apply: the plain weights come back, converted
        torch.testing.assert_close(wide(x.double()).float(), expected, rtol=1e-5, atol=1e-5)
    # autograd through a released net: the regular path on the real weights
    y = fused(x)
    y.sum().backward()
    assert fused.layers[0].conv.weight.grad is not None and fused.layers[0].conv.weight.grad.abs().sum() > 0
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_inplace_mish_equals_torch_mish_in_place(dtype, layout):
    from netspec.inference import _mish_

    x = torch.randn(2, 5, 97, 181) * 8
    x.view(-1)[:6] = torch.tensor([30.0, -100.0, float("inf"), float("-inf"), float("nan"), 0.0])
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, ::2]
    expected = torch.nn.functional.mish(x.float())
    y = x.clone()
    got = _mish_(y)
    assert got.data_ptr() == y.data_ptr()  # in place: no new activation-sized tensor
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol, equal_nan=True)


# ------------------------------------------------------------------ CPUs without native bfloat16

@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """This CPU as an AVX2-only one: no native bfloat16, and oneDNN refusing to pack bfloat16 weights."""
    return refuse_bf16_packing(monkeypatch)


def test_native_bf16_skip_follows_the_capability_check(cpu_without_bf16):
    with pytest.raises(pytest.skip.Exception, match="no native bfloat16"):
        need_native_bf16()


def test_bf16_autocast_without_native_bf16_warns_once_and_packs_float32(fused_small, cpu_without_bf16):
    import warnings

    net, fused = fused_small
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("always")
        got = [fused(x) for _ in range(3)]
    slow = [w for w in caught if "slower than float32" in str(w.message)]
    assert len(slow) == 1, [str(w.message) for w in caught]
    assert cpu_without_bf16["bf16"] == 0  # no bf16 pack attempted at all
    assert all(m.fast._key is not None and m.fast._key[0] == torch.float32 for m in _fast_layers(fused))
    for y in got:  # float32 convolutions: closer to the float32 result than bf16 would be
        torch.testing.assert_close(y.float(), expected, rtol=3e-2, atol=3e-2)


def test_refused_bf16_pack_is_not_retried_on_every_call(fused_small, cpu_without_bf16):
    net, fused = fused_small
    low = copy.deepcopy(fused).to(torch.bfloat16)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net(x)
        outs = [low(x.to(torch.bfloat16)) for _ in range(6)]
    n_fast = len(_fast_layers(low))
    assert n_fast and cpu_without_bf16["bf16"] == n_fast  # one refused attempt per layer, not one per call
    for y in outs:
        torch.testing.assert_close(y.float(), expected, rtol=5e-2, atol=5e-2)


def test_unfused_bf16_autocast_without_native_bf16_warns(cpu_without_bf16):
    import warnings

    net = netspec.build(SMALL_CFG).eval()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("always")
        net(torch.rand(1, 3, 32, 32))
        net(torch.rand(1, 3, 32, 32))
    assert sum("slower than float32" in str(w.message) for w in caught) == 1
