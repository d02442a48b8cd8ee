"""Parameter groups: Darknet's per-layer multipliers, decay defaults, freezing, rules and their precedence."""

from __future__ import annotations

import pytest
import torch

import netspec
from netspec.cli import main
from netspec.errors import CfgError
from netspec.optim import Rule, describe_parameters, drop_delayed_grads, make_optimizer, param_groups

HEAD = "[net]\nwidth=8\nheight=8\nchannels=3\nlearning_rate=0.01\ndecay=0.0005\nmomentum=0.9\n{net}\n"


def conv(extra: str = "", bn: int = 0) -> str:
    return f"[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize={bn}\nactivation=leaky\n{extra}\n"


def build(*blocks: str, net: str = ""):
    return netspec.build(HEAD.format(net=net) + "".join(blocks))


def settings(net, rules=None) -> dict[str, tuple[float, float]]:
    """name -> (lr, weight_decay) over all groups."""
    out = {}
    for group in param_groups(net, rules):
        for name in group["names"]:
            out[name] = (group["lr"], group["weight_decay"])
    return out


def test_darknet_default_decay_and_learning_rate_multiplier():
    net = build(conv(bn=1), conv("learning_rate=0.5"),
                "[shortcut]\nfrom=-2\nweights_type=per_feature\nweights_normalization=relu\n")
    s = settings(net)
    assert s["layers.0.conv.weight"] == (0.01, 0.0005)
    assert s["layers.0.bn.weight"] == (0.01, 0.0) and s["layers.0.bn.bias"] == (0.01, 0.0)
    assert s["layers.1.conv.weight"] == (0.005, 0.0005) and s["layers.1.conv.bias"] == (0.005, 0.0)
    assert s["layers.2.weight"] == (0.01, 0.0005)


def test_groups_record_their_blocks_and_multipliers():
    groups = param_groups(build(conv(), conv("lr_mult=0.1\ndecay_mult=3")))
    g = next(g for g in groups if g["lr_mult"] == 0.1 and g["weight_decay"] > 0)
    assert g["weight_decay"] == pytest.approx(0.0015) and g["lr"] == pytest.approx(0.001)
    assert g["blocks"] == [1] and g["names"] == ["layers.1.conv.weight"] and g["decay_mult"] == 3


def test_lr_mult_and_learning_rate_must_agree():
    with pytest.raises(CfgError) as info:
        param_groups(build(conv("learning_rate=0.5\nlr_mult=0.2")))
    assert "lr_mult" in str(info.value) and info.value.line == 16
    assert settings(build(conv("learning_rate=0.5\nlr_mult=0.5")))["layers.0.conv.weight"][0] == 0.005


def test_freeze_excludes_and_disables_gradients():
    net = build(conv("freeze=1"), conv())
    s = settings(net)
    assert "layers.0.conv.weight" not in s and "layers.1.conv.weight" in s
    assert not net.layers[0].conv.weight.requires_grad and net.layers[1].conv.weight.requires_grad


def test_stopbackward_freezes_it_and_earlier_blocks_last_one_decides():
    net = build(conv("stopbackward=1"), conv(), conv("stopbackward=1"), conv())
    assert set(settings(net)) == {"layers.3.conv.weight", "layers.3.conv.bias"}


def test_train_only_bn_propagates_backwards():
    net = build(conv(bn=1), conv("train_only_bn=1", bn=1), conv(bn=1))
    assert set(settings(net)) == {"layers.2.conv.weight", "layers.2.bn.weight", "layers.2.bn.bias"}


def test_rules_select_by_range_section_role_glob_and_compose():
    net = build(conv(bn=1), conv("learning_rate=0.5"), "[connected]\noutput=3\nactivation=linear\n")
    s = settings(net, ["0-1:lr_mult=0.1", "role=bias:lr_mult=2", "section=connected:decay_mult=0",
                       Rule(glob="layers.0.bn.*", decay_mult=5.0)])
    assert s["layers.0.conv.weight"] == (pytest.approx(0.001), 0.0005)
    assert s["layers.1.conv.bias"] == (pytest.approx(0.01 * 0.5 * 0.1 * 2), 0.0)
    assert s["layers.0.bn.bias"] == (pytest.approx(0.001), 0.0)  # bn is not 'bias' and never decays
    assert s["layers.2.linear.weight"] == (0.01, 0.0) and s["layers.2.linear.bias"] == (0.02, 0.0)


def test_rule_freeze_precedence_later_rules_win_over_cfg():
    net = build(conv(), conv("stopbackward=1"), conv())
    s = settings(net, ["0:freeze=0"])
    assert "layers.0.conv.weight" in s and "layers.1.conv.weight" not in s
    s = settings(net, ["0-2:freeze", "glob=layers.2.*:freeze=0"])
    assert set(s) == {"layers.2.conv.weight", "layers.2.conv.bias"}


@pytest.mark.parametrize("rule, message", [
    ("section=local:lr_mult=2", "matches no parameter"),
    ("5-9:lr_mult=2", "matches no parameter"),
    ("section=convolutionl:lr_mult=2", "did you mean 'convolutional'"),
    ("role=scale:lr_mult=2", "role must be one of"),
    ("0-1:lr=2", "unknown setting 'lr'"),
    ("0-1", "SELECTORS:SETTINGS"),
])
def test_bad_rules_are_errors(rule, message):
    with pytest.raises(CfgError, match=message):
        param_groups(build(conv(), conv()), [rule])


def test_all_frozen_is_an_error():
    with pytest.raises(CfgError, match="every parameter is frozen"):
        param_groups(build(conv("stopbackward=1")))


def test_sgd_step_matches_darknet_update_with_decay_and_multiplier():
    net = build(conv("learning_rate=0.5"))
    opt = make_optimizer(net)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    w = net.layers[0].conv.weight
    w0 = w.detach().clone()
    grad = torch.randn_like(w)
    w.grad = grad.clone()
    net.layers[0].conv.bias.grad = torch.zeros(4)
    opt.step()
    # Darknet: update = -(grad + decay*w) scaled by lr*learning_rate (first step: no momentum history)
    assert torch.allclose(w.detach(), w0 - 0.005 * (grad + 0.0005 * w0), atol=1e-8)


def test_adam_from_net_keys():
    opt = make_optimizer(build(conv(), net="adam=1\nB1=0.8\nB2=0.99\neps=0.001"))
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 0.001


def test_delayed_updates_stopbackward_n_and_dont_update():
    net = build(conv(), conv("stopbackward=5"), conv("dont_update=3"), conv())
    infos = {i.name: i for i in describe_parameters(net)}
    assert infos["layers.0.conv.weight"].update_from == 5 and infos["layers.1.conv.weight"].update_from == 5
    assert infos["layers.2.conv.weight"].update_from == 4 and infos["layers.3.conv.weight"].update_from == 0
    opt = make_optimizer(net)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    drop_delayed_grads(opt, 4)
    assert net.layers[0].conv.weight.grad is None and net.layers[2].conv.weight.grad is not None


def test_params_command(tmp_path, capsys):
    cfg = tmp_path / "n.cfg"
    cfg.write_text(HEAD.format(net="") + conv("learning_rate=0.5") + conv("freeze=1"))
    assert main(["params", str(cfg), "--rule", "role=bias:lr_mult=4"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("layers.0.conv.bias"))
    assert "0.02" in line and "learning_rate=0.5 (#0, line 15)" in line and "rule 'role=bias:lr_mult=4'" in line
    assert "frozen" in next(x for x in out.splitlines() if x.startswith("layers.1.conv.weight"))
    assert main(["params", str(cfg), "--rule", "section=local:lr_mult=2"]) == 1
    assert "matches no parameter" in capsys.readouterr().err


def test_a_rule_of_the_wrong_type_is_a_netspec_error():
    with pytest.raises(netspec.NetspecError, match="a rule must be a Rule.*got int"):
        param_groups(build(conv()), rules=[3])
