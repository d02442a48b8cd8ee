"""Resource limits: an absurdly large network is refused from its inferred shapes, before any tensor exists."""

from __future__ import annotations

import pytest
import torch

import netspec
from netspec import LimitError, Limits
from netspec.cli import main

NET = "[net]\nwidth={w}\nheight={h}\nchannels=3\n\n"
SMALL = NET.format(w=16, h=16) + "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail the test if any nn.Module (and so any parameter tensor) is created."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a module was created before the limits were checked")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)


def test_huge_filters_refused_with_the_parameter_estimate(no_allocation):
    cfg = NET.format(w=8, h=8) + "[convolutional]\nfilters=1000000000\nsize=3\n"
    with pytest.raises(LimitError) as info:
        netspec.build(cfg)
    text = str(info.value)
    assert "28,000,000,000 parameters" in text  # 1e9 filters x 3 channels x 3 x 3 + biases
    assert "104.3 GiB" in text and "2,000,000,000" in text and "--max-params" in text
    assert info.value.line == 6  # the [convolutional] block, where the cfg needs changing


def test_huge_width_refused_with_the_activation_estimate(no_allocation):
    cfg = NET.format(w=10**6, h=10**6) + "[convolutional]\nfilters=16\nsize=3\npad=1\n"
    with pytest.raises(LimitError) as info:
        netspec.build(cfg)
    text = str(info.value)
    assert "GiB of layer outputs" in text and "16x1000000x1000000" in text
    assert "--max-activation-bytes" in text
    assert "448 parameters" in text


def test_huge_layer_count_refused_before_any_layer_is_built(no_allocation, monkeypatch):
    from netspec.sections.base import registry

    def no_inference(*args, **kwargs):
        raise AssertionError("a layer was inferred before the layer count was checked")

    monkeypatch.setattr(type(registry()["dropout"]), "infer", no_inference)
    cfg = NET.format(w=8, h=8) + "[dropout]\n" * 100_000
    with pytest.raises(LimitError) as info:
        netspec.build(cfg)
    assert "100000 layers" in str(info.value) and "20000" in str(info.value)
    assert info.value.line is not None


def test_limits_are_configurable():
    spec = netspec.build_spec(SMALL)
    assert spec.total_params == 8 * 3 * 9 + 8
    with pytest.raises(LimitError, match="limit of 100"):
        netspec.build_spec(SMALL, limits=Limits(max_params=100))
    with pytest.raises(LimitError, match="layer outputs"):
        netspec.build_spec(SMALL, limits=Limits(max_activation_bytes=1000))
    with pytest.raises(LimitError, match="more than the limit of 0"):
        netspec.build_spec(SMALL + "[dropout]\n", limits=Limits(max_layers=0))
    # exactly at the limit is allowed
    netspec.build_spec(SMALL, limits=Limits(max_params=spec.total_params,
                                            max_activation_bytes=spec.activation_bytes(), max_layers=1))


def test_cli_limits(tmp_path, capsys):
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL)
    assert main(["build", str(cfg), "--max-params", "100"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "small.cfg:6:2:" in err and "limit of 100" in err
    assert main(["build", str(cfg), "--max-activation-bytes", "1000"]) == 1
    assert "--max-activation-bytes" in capsys.readouterr().err
    assert main(["build", str(cfg)]) == 0
