"""Command-line edge cases: every bad input or unwritable output gives one line and a documented exit code
(0 ok, 1 invalid input, 2 usage, 3 output not writable; see netspec/cli.py), never a traceback, and nothing is
left half-written."""

from __future__ import annotations

import pytest

import netspec
from netspec.errors import CfgError


@pytest.mark.parametrize("source, message", [("\x00", "is not a valid file name"),
                                             ("/dev/zero", "is a device, not a cfg file")])
def test_unreadable_sources_are_cfg_errors(source, message):
    # found by hypothesis (NUL: ValueError from open) and by probing (/dev/zero: read until out of memory)
    with pytest.raises(CfgError, match=message):
        netspec.parse(source)


# ------------------------------------------------------------------------------------------- command line

import io  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from netspec import parser  # noqa: E402
from netspec.cli import main  # noqa: E402

VALID = "[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
READERS = [["build"], ["check"], ["fmt"]]  # commands that take a cfg and only read


def run_cli(argv, capsys, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_missing_file(command, tmp_path, capsys):
    code, _, err = run_cli(command + [tmp_path / "nope.cfg"], capsys)
    assert code == 1 and "nope.cfg: no such file" in one_line(err)


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_directory(command, tmp_path, capsys):
    code, _, err = run_cli(command + [tmp_path], capsys)
    assert code == 1 and "is a directory" in one_line(err)


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_no_permission(command, tmp_path, capsys, monkeypatch):
    path = tmp_path / "secret.cfg"
    path.write_text(VALID)
    if os.geteuid() == 0:  # root reads anything: make open() refuse as it would for another user
        def refuse(name, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(name))
        monkeypatch.setattr(parser, "open", refuse, raising=False)
    else:
        path.chmod(0)
    code, _, err = run_cli(command + [path], capsys)
    assert code == 1 and "secret.cfg: permission denied" in one_line(err)


@pytest.mark.parametrize("command", [["build"], ["check"]], ids=lambda c: c[0])
def test_empty_file(command, tmp_path, capsys):
    path = tmp_path / "empty.cfg"
    path.write_bytes(b"")
    code, _, err = run_cli(command + [path], capsys)
    assert code == 1 and "empty.cfg:1:1: the cfg has no sections" in one_line(err)


def test_empty_file_is_formatted(tmp_path, capsys):
    path = tmp_path / "empty.cfg"
    path.write_bytes(b"")
    assert run_cli(["fmt", "--check", path], capsys)[0] == 0


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize("data, message", [(b"\x7fELF\x02\x01\x01\x00\x00\x00", "NUL byte"),
                                           (b"[net]\nwidth=\xff\xfe\n", "not UTF-8 text"),
                                           (bytes(range(256)), "not UTF-8 text")])
def test_binary_file(command, data, message, tmp_path, capsys):
    path = tmp_path / "binary.cfg"
    path.write_bytes(data)
    code, _, err = run_cli(command + [path], capsys)
    assert code == 1 and message in one_line(err) and "binary.cfg:" in err


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
def test_stdin(command, capsys, monkeypatch):
    code, out, err = run_cli(command + ["-"], capsys, VALID.encode(), monkeypatch)
    assert code == 0, err
    assert out
    code, _, err = run_cli(command + ["-"], capsys, b"[net]\nwidth\n", monkeypatch)
    assert code == 1 and "<stdin>:2:" in err


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize("name", ["with space.cfg", "réseau ünïcode.cfg", "-dash.cfg"])
def test_unusual_file_names(command, name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(VALID, encoding="utf-8")
    argv = command + ["--", name] if name.startswith("-") else command + [tmp_path / name]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err


def test_bad_arguments_are_usage_errors(capsys):
    assert run_cli(["build"], capsys)[0] == 2
    assert run_cli(["nosuchcommand"], capsys)[0] == 2
    assert run_cli(["build", "x.cfg", "--width", "abc"], capsys)[0] == 2


# ------------------------------------------------------------------------------------------- outputs

def _unwritable(target, monkeypatch):
    """Make ``target`` a directory netspec cannot write into (read-only; for root, every new file is refused)."""
    target.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        target.chmod(0o555)
    return target


def test_fmt_in_place_into_read_only_directory(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    path = ro / "a.cfg"
    path.write_text("[net]\n width = 8\n")
    _unwritable(ro, monkeypatch)
    try:
        code, _, err = run_cli(["fmt", "--in-place", path], capsys)
    finally:
        ro.chmod(0o755)
    assert code == 3 and "cannot write" in one_line(err)
    assert path.read_text() == "[net]\n width = 8\n" and sorted(p.name for p in ro.iterdir()) == ["a.cfg"]


def test_export_into_read_only_directory(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    cfg = tmp_path / "a.cfg"
    cfg.write_text(VALID)
    ro = _unwritable(tmp_path / "ro", monkeypatch)
    try:
        code, _, err = run_cli(["export", cfg, "--onnx", ro / "a.onnx"], capsys)
    finally:
        ro.chmod(0o755)
    assert code == 3, err
    assert "Traceback" not in err and list(ro.iterdir()) == []


def test_convert_into_missing_directory(tmp_path, capsys):
    from netspec.weights import save_darknet_weights

    cfg = tmp_path / "a.cfg"
    cfg.write_text(VALID)
    weights = tmp_path / "a.weights"
    save_darknet_weights(netspec.build(cfg), weights)
    code, _, err = run_cli(["convert", weights, "--cfg", cfg, "-o", tmp_path / "no" / "dir" / "a.safetensors"], capsys)
    assert code == 3, err
    assert not (tmp_path / "no").exists()


def test_no_traceback_from_a_real_process(tmp_path):
    """The same through ``python -m netspec``: a bad file gives one line on stderr and exit 1."""
    bad = tmp_path / "bad file.cfg"
    bad.write_bytes(b"\xef\xbb\xbf[net]\r\nwidth=8\r\n[conv]\r\nfilters=-1\r\n")
    proc = subprocess.run([sys.executable, "-m", "netspec", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "bad file.cfg:4:" in proc.stderr
