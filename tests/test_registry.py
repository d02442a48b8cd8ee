"""The section registry: third-party sections registered from outside the package (directly and through the
``netspec.sections`` entry point group), sections found without a fixed import list, and the hooks a
registered section gets (init, decay, output, table, fuse) used without netspec knowing its name."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest
import torch
import torch.nn as nn

import netspec
import netspec.sections as sections_pkg
from netspec.keys import Float
from netspec.sections import base

CFG = """[net]
width=8
height=8
channels=3

[convolutional]
filters=4
size=3
pad=1
activation=leaky

[channel_gain]
start=2
"""


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test disappear after it."""
    base.registry()  # built-ins loaded into the real registry first
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return base._REGISTRY


class ChannelGain(nn.Module):
    def __init__(self, channels: int, start: float) -> None:
        super().__init__()
        self.start = start
        self.gain = nn.Parameter(torch.empty(channels))
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1, 1).to(x.dtype)

    def darknet_record(self):
        return [(self.gain, "flat")]


def _start(tensor: torch.Tensor, generator: torch.Generator) -> None:
    tensor.fill_(2.0)


def _gain_section():
    class ChannelGainSection(netspec.Section):
        """A learned per-channel gain: one float per channel in .weights."""

        name = "channel_gain"
        aliases = ("gain",)
        decays_weights = True
        keys = {"start": Float(1.0, "initial gain")}

        def infer(self, p, inputs, ctx):
            c = inputs[0][0]
            return netspec.Inference(inputs[0], c, c, 0.0)

        def module(self, spec, ctx):
            return ChannelGain(spec.in_shape[0], spec.p.start)

        def init_targets(self, spec, module):
            return [netspec.InitTarget("gain", module.gain, "weight", (1, 1), net_init=False, darknet_start=_start)]

        def fuse(self, spec, module):
            module.fused = True

        def describe(self, spec):
            return f"x{spec.p.start:g}", ""

    return ChannelGainSection


def test_a_section_registered_from_outside_builds_and_gets_every_hook(isolated_registry, tmp_path):
    section = netspec.register_section(_gain_section())
    assert isolated_registry["channel_gain"] is isolated_registry["gain"]
    assert isinstance(isolated_registry["gain"], section)
    net = netspec.build(CFG, seed=1)
    assert net.outputs == (1,)
    assert tuple(net(torch.rand(2, 3, 8, 8)).shape) == (2, 4, 8, 8)
    assert torch.equal(net.layers[1].gain, torch.full((4,), 2.0))  # its own Darknet start, via init_targets
    groups = netspec.param_groups(net)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert "layers.1.gain" in decayed and "layers.0.conv.bias" not in decayed
    from netspec.commands.build import format_table

    assert any(row.split()[1:3] == ["channel_gain", "x2"] for row in format_table(net).splitlines())
    net.fuse()
    assert net.layers[1].fused
    path = tmp_path / "gain.weights"
    source = netspec.build(CFG, seed=1)
    with torch.no_grad():
        source.layers[1].gain.copy_(torch.arange(4.0))
    netspec.save_darknet_weights(source, path)
    loaded = netspec.build(CFG, seed=3)
    report = netspec.load_darknet_weights(loaded, path)
    assert report.complete and report.floats_read == net.spec.total_weights_floats == 4 * 27 + 4 + 4
    assert torch.equal(loaded.layers[1].gain, torch.arange(4.0))


def test_registering_a_taken_name_or_a_non_section_is_an_error(isolated_registry):
    class Clash(netspec.Section):
        name = "yolo"

    with pytest.raises(netspec.SectionError, match="'yolo' .* already registered"):
        netspec.register_section(Clash)
    with pytest.raises(netspec.SectionError, match="subclass of netspec.Section"):
        netspec.register_section(ChannelGain)

    class BadKey(netspec.Section):
        name = "bad_key_section"
        keys = {"start": 1.0}

    with pytest.raises(netspec.SectionError, match="must be a netspec.keys.Key"):
        netspec.register_section(BadKey)

    class Spaced(netspec.Section):
        name = "two words"

    with pytest.raises(netspec.SectionError, match="not a valid"):
        netspec.register_section(Spaced)
    assert "bad_key_section" not in isolated_registry
    assert issubclass(netspec.SectionError, ValueError)


PLUGIN = '''
import netspec
from netspec.keys import Int


class PluginSection(netspec.Section):
    name = "plugin_identity"
    keys = {"unused": Int(0, "a key of the plugin")}

    def module(self, spec, ctx):
        import torch.nn as nn

        return nn.Identity()


class Clash(netspec.Section):
    name = "route"


NOT_A_SECTION = 42
'''


def _self_registering(name: str) -> str:
    """The plugin as a module that registers its section on import."""
    return PLUGIN.replace("class PluginSection", "@netspec.register_section\nclass PluginSection").replace(
        "plugin_identity", name)


def _fake_entry_points(monkeypatch, *entries):
    eps = [importlib.metadata.EntryPoint(name=n, value=v, group=sections_pkg.ENTRY_POINT_GROUP) for n, v in entries]
    other = importlib.metadata.EntryPoint(name="x", value="nowhere_at_all", group="some.other.group")
    everything = importlib.metadata.EntryPoints([*eps, other])
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: everything.select(**kw) if kw else everything)


def test_sections_from_the_entry_point_group_are_loaded(isolated_registry, monkeypatch, tmp_path):
    (tmp_path / "netspec_fake_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "netspec_fake_plugin", raising=False)
    _fake_entry_points(monkeypatch, ("identity", "netspec_fake_plugin:PluginSection"),
                       ("broken", "netspec_fake_plugin_missing"), ("clash", "netspec_fake_plugin:Clash"),
                       ("odd", "netspec_fake_plugin:NOT_A_SECTION"))
    monkeypatch.setitem(sections_pkg._state, "loaded", False)
    with pytest.warns(RuntimeWarning) as caught:
        known = base.registry()
    messages = [str(w.message) for w in caught]
    assert any("'broken = netspec_fake_plugin_missing'" in m and "failed to load" in m for m in messages), messages
    assert any("'clash = " in m and "'route' " in m and "already registered" in m for m in messages), messages
    assert any("'odd = " in m and "neither a module nor a netspec.Section subclass" in m for m in messages), messages
    assert "plugin_identity" in known and "convolutional" in known
    net = netspec.build(CFG.replace("[channel_gain]\nstart=2", "[plugin_identity]\nunused=3"))
    assert net.spec.layers[1].type == "plugin_identity"
    base.registry()  # loaded once: no second warning, no double registration


def test_a_module_that_registers_itself_on_import_works_as_an_entry_point(isolated_registry, monkeypatch, tmp_path):
    (tmp_path / "netspec_fake_plugin2.py").write_text(_self_registering("plugin_two"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "netspec_fake_plugin2", raising=False)
    _fake_entry_points(monkeypatch, ("two", "netspec_fake_plugin2"))
    monkeypatch.setitem(sections_pkg._state, "loaded", False)
    assert "plugin_two" in base.registry()


def test_every_module_of_the_sections_package_is_discovered(isolated_registry, monkeypatch, tmp_path):
    # A new file beside the built-in ones is found without editing any import list.
    (tmp_path / "zz_extra.py").write_text(_self_registering("plugin_extra"))
    monkeypatch.setattr(sections_pkg, "__path__", [*sections_pkg.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "netspec.sections.zz_extra", raising=False)
    monkeypatch.setitem(sections_pkg._state, "loaded", False)
    assert "plugin_extra" in base.registry()
