"""``netspec fmt``: idempotent; the formatted file builds the same network; Darknet reads it as netspec does."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import example, given, settings

import netspec
from netspec.cli import main
from netspec.errors import CfgError
from netspec.fmt import format_text
from netspec.parser import read_source

from .conftest import DARKNET_CFGS, REPO
from .strategies import mutated_cfgs, valid_cfgs
from .test_fuzz_cfg import PROFILE

OFFICIAL = sorted(DARKNET_CFGS.glob("*.cfg")) if DARKNET_CFGS.is_dir() else []


# ------------------------------------------------------------------------------------------- helpers

def darknet_sections(text: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """How Darknet's reader sees a file (reference §1): whitespace deleted everywhere, '#'/';' only at the start
    of a line, a section name is the whole stripped line, an option splits at the first '='."""
    sections: list[tuple[str, list[tuple[str, str | None]]]] = []
    for line in text.split("\n"):
        line = re.sub(r"[ \t\r\n]", "", line)
        if not line or line[0] in "#;\0":
            continue
        if line[0] == "[":
            sections.append((line, []))
        else:
            key, eq, value = line.partition("=")
            sections[-1][1].append((key, value if eq else None))
    return sections


def netspec_sections(text: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The same view of what netspec reads (section names and raw values, whitespace deleted like Darknet)."""
    return [(f"[{b.section}]", [(o.key, re.sub(r"[ \t]", "", o.raw)) for o in b.options])
            for b in netspec.parse(text).blocks]


def comments(text: str) -> list[str]:
    found = []
    for line in text.replace("\r", "\n").split("\n"):
        m = re.search(r"[#;].*", line)
        if m:
            found.append(m.group(0).strip())
    return found


def _messages(exc: CfgError) -> list[str]:
    # without positions, and without the section name as written ([conv] and [convolutional] are one section)
    return sorted(re.sub(r"^\[[^\]]*\] #", "#", p.message) for p in exc.problems)


def spec_summary(text: str):
    """What the cfg builds, without tensors; for a cfg that does not build, its messages."""
    def build(strict):
        spec = netspec.build_spec(text, strict=strict)
        return (spec.input_shape, [(s.type, s.out_shape, s.info.params, s.info.weights_floats, s.info.bflops)
                                   for s in spec.layers])
    try:
        return build(True)
    except CfgError as exc:
        strict_errors = _messages(exc)
    try:
        return build(False), strict_errors
    except CfgError as exc:
        return _messages(exc)


def check_format_properties(text: str, normalize: bool = False) -> str:
    formatted = format_text(text, normalize)
    assert format_text(formatted, normalize) == formatted, "not idempotent"
    assert darknet_sections(formatted) == netspec_sections(formatted), "Darknet would read it differently"
    assert comments(formatted) == comments(text), "comments lost or reordered"
    if not normalize:
        assert netspec_sections(formatted) == netspec_sections(text), "sections, keys or values changed"
    assert "\r" not in formatted and "\n\n\n" not in formatted and not formatted.startswith("\n")
    return formatted


# ------------------------------------------------------------------------------------------- properties

@pytest.mark.parametrize("path", OFFICIAL, ids=[p.name for p in OFFICIAL])
def test_official_cfg_round_trips(path):
    text, _ = read_source(path)
    for normalize in (False, True):
        formatted = check_format_properties(text, normalize)
        assert spec_summary(formatted) == spec_summary(text)


def test_official_cfgs_present(darknet_cfgs):
    assert OFFICIAL, f"no cfgs in {darknet_cfgs}"


@settings(PROFILE)
@given(valid_cfgs().map(lambda cfg: cfg.text))
@example("[net]\nwidth=8\nheight=8\nchannels=1\n[conv]\nfilters=1  # x;y\n")
def test_generated_cfg_round_trips(text):
    for normalize in (False, True):
        formatted = check_format_properties(text, normalize)
        assert spec_summary(formatted) == spec_summary(text)


@settings(PROFILE)
@given(mutated_cfgs())
def test_any_parsable_text_round_trips(data):
    try:
        text = data.decode("utf-8")
        netspec.parse(text)
    except (UnicodeDecodeError, CfgError):
        return
    check_format_properties(text)


# ------------------------------------------------------------------------------------------- examples

def test_layout():
    text = ("\n\n# top\n[net]   # the net\n  width = 416\nheight=416 ; h\n\n\n\nchannels=3\n# about conv\n[conv]\n"
            "filters = 32  # stem\nlayers = -1, 61\n# end of conv\n\n# route\n\n[route]\nlayers=-1\n\n\n")
    assert format_text(text) == ("# top\n# the net\n[net]\nwidth=416\n; h\nheight=416\n\nchannels=3\n\n"
                                 "# about conv\n[conv]\n# stem\nfilters=32\nlayers=-1, 61\n# end of conv\n\n"
                                 "# route\n\n[route]\nlayers=-1\n")


def test_inline_comment_moves_above_its_option_so_darknet_reads_the_same_value():
    text = "[net]\nwidth=8\n[conv]\nactivation=leaky#x\n"
    # Darknet reads the value 'leaky#x' (an unknown activation); netspec reads 'leaky'
    assert darknet_sections(text)[1][1] == [("activation", "leaky#x")]
    formatted = format_text(text)
    assert formatted == "[net]\nwidth=8\n\n[conv]\n#x\nactivation=leaky\n"
    assert darknet_sections(formatted)[1][1] == [("activation", "leaky")]


def test_crlf_bom_and_cr_only_input():
    expected = "[net]\nwidth=8\n\n[conv]\nfilters=2\n"
    assert format_text("\ufeff[net]\r\nwidth=8\r\n[conv]\r\nfilters=2\r\n") == expected
    assert format_text("[net]\rwidth=8\r[conv]\rfilters=2") == expected


def test_normalize_replaces_only_aliases():
    text = "[network]\nwidth=8\n[conv]\nfilters=2\n[max]\n[shortcut]\nfrom=-2\nweights_type=per_layer\n" \
           "weights_normalization=avg_relu\n[Gaussian_yolo]\n"
    assert format_text(text) == text.replace("\n[", "\n\n[")
    assert format_text(text, normalize=True) == (
        "[net]\nwidth=8\n\n[convolutional]\nfilters=2\n\n[maxpool]\n\n[shortcut]\nfrom=-2\nweights_type=per_feature\n"
        "weights_normalization=relu\n\n[Gaussian_yolo]\n")


def test_syntax_error_is_reported_not_formatted():
    with pytest.raises(CfgError) as info:
        format_text("[net]\nwidth\n")
    assert info.value.line == 2


def test_empty_file_formats_to_nothing():
    assert format_text("") == "" and format_text("\n\n# c\n\n") == "# c\n"


# ------------------------------------------------------------------------------------------- command line

def _cfg(tmp_path: Path, text: str, name: str = "a.cfg") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_cli_prints_formatted_text(tmp_path, capsys):
    path = _cfg(tmp_path, "[net]\n width = 8\n")
    assert main(["fmt", str(path)]) == 0
    assert capsys.readouterr().out == "[net]\nwidth=8\n"
    assert path.read_text() == "[net]\n width = 8\n"  # untouched


def test_cli_check_and_in_place(tmp_path, capsys):
    messy = _cfg(tmp_path, "[net]\n width = 8\n", "messy.cfg")
    clean = _cfg(tmp_path, "[net]\nwidth=8\n", "clean.cfg")
    os.chmod(messy, 0o640)
    assert main(["fmt", "--check", str(messy), str(clean)]) == 1
    err = capsys.readouterr().err
    assert "messy.cfg: not formatted" in err and "clean.cfg" not in err
    assert messy.read_text() == "[net]\n width = 8\n"
    assert main(["fmt", "--in-place", str(messy), str(clean)]) == 0
    assert messy.read_text() == "[net]\nwidth=8\n"
    assert stat.S_IMODE(os.stat(messy).st_mode) == 0o640  # permissions kept
    assert main(["fmt", "--check", str(messy), str(clean)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.cfg", "messy.cfg"]  # no temporary files left


def test_cli_invalid_file_and_usage_errors(tmp_path, capsys):
    bad = _cfg(tmp_path, "[net]\nwidth\n", "bad.cfg")
    good = _cfg(tmp_path, "[net]\n width=8\n", "good.cfg")
    assert main(["fmt", "--in-place", str(bad), str(good)]) == 1
    assert "bad.cfg:2:" in capsys.readouterr().err
    assert bad.read_text() == "[net]\nwidth\n" and good.read_text() == "[net]\nwidth=8\n"
    assert main(["fmt", str(bad), str(good)]) == 2  # one file to print at a time
    assert main(["fmt", "--in-place", "-"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["fmt", "--check", "--in-place", str(good)])
    assert info.value.code == 2


def test_cli_in_place_not_writable(tmp_path, capsys, monkeypatch):
    path = _cfg(tmp_path, "[net]\n width = 8\n")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # a read-only file, even for root
    assert main(["fmt", "--in-place", str(path)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and "read-only" in err
    assert path.read_text() == "[net]\n width = 8\n"


def test_pre_commit_hooks_file():
    from netspec.cli import COMMANDS

    text = (REPO / ".pre-commit-hooks.yaml").read_text()
    hooks = re.findall(r"^- id: (\S+)\n(?:  .*\n)*?  entry: (.+)\n(?:  .*\n)*?  files: (.+)$", text, re.M)
    assert [h[0] for h in hooks] == ["netspec-fmt", "netspec-fmt-fix", "netspec-check"]
    assert hooks[0][1] == "netspec fmt --check"
    for _, entry, files in hooks:
        assert entry.split()[0] == "netspec" and entry.split()[1] in COMMANDS
        assert re.search(files, "cfgs/yolov3.cfg") and not re.search(files, "README.md")
