"""``python -m netspec``: the build table, ``--json`` (the stable Network.summary() schema), ``check``,
``--help`` on every subcommand, ``--width/--height`` and the exit codes 0 / 1 / 2."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

import netspec
from netspec.cli import COMMANDS, main

from .conftest import CFGS, REPO

TINY = CFGS / "yolov3-tiny.cfg"
SMALL_CFG = """[net]
width=16
height=16
channels=3

[convolutional]
filters=4
size=3
pad=1
batch_normalize=1
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=10
activation=linear

[softmax]
"""


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _json(argv, capsys) -> dict:
    code, out, err = _run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


# ---- build --json: the stable public schema ----------------------------------------------------

def test_json_schema_is_exactly_the_documented_one(capsys):
    data = _json(["build", str(TINY)], capsys)
    assert set(data) == {"input", "layers", "total"}
    assert data["input"] == [3, 416, 416]
    assert set(data["total"]) == {"params", "weights_floats", "bflops"}
    for i, layer in enumerate(data["layers"]):
        assert set(layer) == {"index", "type", "output", "params", "weights_floats", "bflops"}
        assert layer["index"] == i
        assert isinstance(layer["type"], str)
        assert isinstance(layer["output"], list) and len(layer["output"]) == 3
        assert all(isinstance(v, int) for v in layer["output"])
        assert isinstance(layer["params"], int) and isinstance(layer["weights_floats"], int)
        assert isinstance(layer["bflops"], float)
    assert len(data["layers"]) == 24


def test_json_values_are_darknets_and_the_modules(capsys):
    data = _json(["build", str(TINY)], capsys)
    types = [layer["type"] for layer in data["layers"]]
    assert types[:2] == ["convolutional", "maxpool"] and types.count("yolo") == 2 and types.count("route") == 2
    assert data["layers"][0]["output"] == [16, 416, 416]
    assert data["layers"][16]["output"] == [255, 13, 13]
    assert data["total"]["weights_floats"] == 8_858_734  # Darknet's yolov3-tiny.weights body
    assert data["total"]["bflops"] == pytest.approx(5.57067248, rel=1e-6)
    layers = data["layers"]
    assert data["total"]["params"] == sum(layer["params"] for layer in layers)
    assert data["total"]["weights_floats"] == sum(layer["weights_floats"] for layer in layers)
    assert data["total"]["bflops"] == pytest.approx(sum(layer["bflops"] for layer in layers))
    net = netspec.build(TINY)
    assert data == json.loads(json.dumps(net.summary()))
    # params counts trainable parameters; weights_floats adds BN running statistics
    assert data["total"]["params"] == sum(p.numel() for p in net.parameters() if p.requires_grad)
    conv0 = layers[0]
    assert conv0["params"] == 16 * 3 * 3 * 3 + 2 * 16
    assert conv0["weights_floats"] == 16 * 3 * 3 * 3 + 4 * 16


def test_json_for_a_classifier(tmp_path, capsys):
    path = tmp_path / "small.cfg"
    path.write_text(SMALL_CFG)
    data = _json(["build", str(path)], capsys)
    assert [layer["type"] for layer in data["layers"]] == ["convolutional", "maxpool", "connected", "softmax"]
    assert [layer["output"] for layer in data["layers"]] == [[4, 16, 16], [4, 8, 8], [10, 1, 1], [10, 1, 1]]
    assert data["layers"][2]["params"] == 4 * 8 * 8 * 10 + 10


# ---- build table -------------------------------------------------------------------------------

def test_table_has_a_row_per_layer_and_totals(capsys):
    code, out, err = _run(["build", str(TINY)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert all(word in lines[0] for word in ("layer", "type", "filters", "size", "input", "output", "params",
                                              "BFLOPs"))
    rows = lines[1:-1]
    assert len(rows) == 24
    assert rows[0].split()[:3] == ["0", "convolutional", "16"]
    assert "3x3/1" in rows[0] and "416 x 416 x    3" in rows[0] and "416 x 416 x   16" in rows[0]
    assert rows[20].split()[:3] == ["20", "route", "19,8"]
    assert lines[-1] == "total: 24 layers, 8,852,366 parameters, 8,858,734 .weights floats, 5.571 BFLOPs"


def test_table_and_json_agree(capsys):
    data = _json(["build", str(TINY)], capsys)
    _, out, _ = _run(["build", str(TINY)], capsys)
    for layer, row in zip(data["layers"], out.splitlines()[1:-1]):
        assert row.split()[1] == layer["type"]
        assert f"{layer['params']:,}" in row.split()
        assert row.split()[-1] == f"{layer['bflops']:.3f}"


# ---- --width / --height ------------------------------------------------------------------------

def test_width_and_height_override_net(capsys):
    data = _json(["build", str(TINY), "--width", "320", "--height", "192"], capsys)
    assert data["input"] == [3, 192, 320]
    yolo = [layer["output"] for layer in data["layers"] if layer["type"] == "yolo"]
    assert yolo == [[255, 6, 10], [255, 12, 20]]
    full = _json(["build", str(TINY)], capsys)
    assert data["total"]["weights_floats"] == full["total"]["weights_floats"]  # weights do not depend on size
    assert data["total"]["bflops"] < full["total"]["bflops"]


def test_width_alone_keeps_the_net_height(capsys):
    assert _json(["build", str(TINY), "--width", "608"], capsys)["input"] == [3, 416, 608]


def test_size_the_network_cannot_take_is_a_cfg_error_at_the_layer(capsys):
    code, out, err = _run(["build", str(CFGS / "yolov3.cfg"), "--width", "33", "--height", "33"], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"{CFGS / 'yolov3.cfg'}:")
    assert "[route] #86" in err and "same spatial size" in err


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5"])
def test_bad_width_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["build", str(TINY), "--width", value])
    assert info.value.code == 2
    assert "--width" in capsys.readouterr().err


def test_api_rejects_bad_sizes():
    with pytest.raises(netspec.CfgError, match="positive integer"):
        netspec.build_spec(TINY, width=0)
    with pytest.raises(netspec.CfgError, match="positive integer"):
        netspec.build_spec(TINY, height=-416)


# ---- check -------------------------------------------------------------------------------------

def test_check_several_valid_files(capsys):
    files = [str(CFGS / n) for n in ("yolov3.cfg", "yolov3-tiny.cfg", "yolov4-tiny.cfg")]
    code, out, err = _run(["check", *files], capsys)
    assert code == 0 and err == ""
    assert out.splitlines() == [f"{files[0]}: ok (107 layers)", f"{files[1]}: ok (24 layers)",
                                f"{files[2]}: ok (38 layers)"]


def test_check_quiet(capsys):
    assert _run(["check", "-q", str(TINY)], capsys) == (0, "", "")


def test_check_mixed_files_reports_each_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.cfg"
    bad.write_text(SMALL_CFG.replace("filters=4", "filters=0").replace("stride=2", "strid=2"))
    code, out, err = _run(["check", str(TINY), str(bad), str(tmp_path / "missing.cfg")], capsys)
    assert code == 1
    assert f"{TINY}: ok" in out
    assert f"{bad}:7:9: [convolutional] #0: 'filters=0' is out of range" in err
    assert f"{bad}:15:1: [maxpool] #1: unknown key 'strid' (did you mean 'stride'?)" in err
    assert f"{tmp_path / 'missing.cfg'}: no such file" in err


def test_check_lenient_warns_and_passes(tmp_path, capsys):
    path = tmp_path / "dup.cfg"
    path.write_text(SMALL_CFG.replace("filters=4\n", "filters=4\nfilters=8\n"))
    assert _run(["check", str(path)], capsys)[0] == 1
    code, out, err = _run(["check", "--lenient", str(path)], capsys)
    assert code == 0
    assert f"{path}:8:1: warning: [convolutional] #0: duplicate key 'filters'" in err


# ---- input sources -----------------------------------------------------------------------------

def test_build_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SMALL_CFG.encode())))
    data = _json(["build", "-"], capsys)
    assert data["input"] == [3, 16, 16]


def test_build_errors_on_stdin_name_stdin(monkeypatch, capsys):
    text = b"[net]\nwidth=16\nheight=16\nchannels=3\n[max]\nsiz=2\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    code, _, err = _run(["build", "-"], capsys)
    assert code == 1
    assert err.startswith("<stdin>:6:1: [max] #0: unknown key 'siz'")


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_input_is_exit_1(make, tmp_path, capsys):
    path = tmp_path / "x.cfg"
    if make == "directory":
        path.mkdir()
    code, out, err = _run(["build", str(path)], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"{path}: ")
    assert "Traceback" not in err


# ---- help and usage ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: netspec {command}")
    assert COMMANDS[command] in " ".join(out.split())


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["build"], ["build", str(TINY), "--bogus"], ["check"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_real_process_exit_codes(tmp_path):
    """0 / 1 / 2 from a real ``python -m netspec`` process, run from another directory."""
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=-1\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "netspec", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    ok = run("check", str(REPO / "cfgs" / "yolov3-tiny.cfg"))
    assert ok.returncode == 0, ok.stderr
    invalid = run("build", "bad.cfg")
    assert invalid.returncode == 1
    assert invalid.stderr == "bad.cfg:6:9: [convolutional] #0: 'filters=-1' is out of range (must be >= 1)\n"
    usage = run("build")
    assert usage.returncode == 2 and "usage:" in usage.stderr
