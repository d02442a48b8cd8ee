"""Broken cfgs in tests/broken/: each one is reported at its exact line:col, with every problem it has, as
``path:line:col: message`` on stderr and exit status 1, never a traceback.

Each file states what it expects in its leading comment lines::

    # <what is wrong>
    # expect: LINE:COL message fragment      (one line per problem, in the order reported)
    # lenient: warning                       (optional: --lenient / strict=False accept it with warnings)
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import netspec
from netspec import CfgError
from netspec.cli import main

from .conftest import REPO

BROKEN = Path(__file__).resolve().parent / "broken"
FILES = sorted(BROKEN.glob("*.cfg"))


@dataclass
class Expectation:
    line: int
    col: int
    fragment: str  # ' ... ' separates parts that must all appear, in any order

    @property
    def fragments(self) -> list[str]:
        return self.fragment.split(" ... ")


def _expectations(path: Path) -> tuple[list[Expectation], bool]:
    expects, lenient = [], False
    for raw in path.read_bytes().split(b"\n"):
        if not raw.startswith(b"#"):
            break
        line = raw.decode("ascii")
        m = re.match(r"# expect: (\d+):(\d+) (.+)$", line)
        if m:
            expects.append(Expectation(int(m.group(1)), int(m.group(2)), m.group(3)))
        elif line.strip() == "# lenient: warning":
            lenient = True
    assert expects, f"{path.name} has no '# expect: LINE:COL message' line"
    return expects, lenient


def _errors(path: Path, strict: bool = True) -> CfgError:
    with pytest.raises(CfgError) as info:
        netspec.build(path, strict=strict)
    return info.value


def test_there_are_enough_broken_cfgs():
    assert len(FILES) >= 25


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_build_reports_every_problem_at_its_line_and_column(path):
    expects, _ = _expectations(path)
    err = _errors(path)
    assert err.path == str(path)
    assert (err.line, err.col) == (expects[0].line, expects[0].col), str(err)
    errors = [p for p in err.problems if p.severity == "error"]
    found = [(p.line, p.col) for p in errors]
    assert found == [(e.line, e.col) for e in expects], str(err)
    for problem, expect in zip(errors, expects):
        for fragment in expect.fragments:
            assert fragment in problem.message, (str(problem), fragment)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_cli_build_exits_1_with_path_line_col_on_stderr(path, capsys):
    expects, _ = _expectations(path)
    assert main(["build", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    for expect in expects:
        prefix = f"{path}:{expect.line}:{expect.col}: "
        assert any(line.startswith(prefix) and all(f in line for f in expect.fragments) for line in lines), (
            prefix, err)
    assert "Traceback" not in err


LENIENT = [p for p in FILES if _expectations(p)[1]]


def test_some_cfgs_are_only_darknet_tolerated_mistakes():
    assert len(LENIENT) >= 5


@pytest.mark.parametrize("path", LENIENT, ids=lambda p: p.stem)
def test_lenient_turns_darknet_tolerated_mistakes_into_warnings(path, capsys):
    expects, _ = _expectations(path)
    net = netspec.build(path, strict=False)
    # the warning is on the error's line (some sections warn at the key rather than at the list item)
    assert expects[0].line in [w.line for w in net.warnings]
    assert main(["build", str(path), "--lenient"]) == 0
    out, err = capsys.readouterr()
    assert f"{path}:{expects[0].line}:" in err and ": warning: " in err
    assert "total:" in out


@pytest.mark.parametrize("path", [p for p in FILES if p not in LENIENT], ids=lambda p: p.stem)
def test_lenient_does_not_excuse_real_errors(path):
    expects, _ = _expectations(path)
    err = _errors(path, strict=False)
    assert (err.line, err.col) in [(e.line, e.col) for e in expects]


def test_check_reports_every_file_and_exits_1(capsys):
    good = REPO / "cfgs" / "yolov3-tiny.cfg"
    assert main(["check", str(good), *map(str, FILES)]) == 1
    out, err = capsys.readouterr()
    assert f"{good}: ok" in out
    for path in FILES:
        assert f"{path}:" in err, path.name


def test_real_process_prints_no_traceback():
    """The same through a real ``python -m netspec`` process: message on stderr, exit 1, nothing else."""
    for name in ("unknown_key", "route_spatial_mismatch", "not_utf8"):
        path = BROKEN / f"{name}.cfg"
        expects, _ = _expectations(path)
        run = subprocess.run([sys.executable, "-m", "netspec", "build", str(path)], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 1, run.stderr
        assert run.stdout == ""
        assert run.stderr.startswith(f"{path}:{expects[0].line}:{expects[0].col}: "), run.stderr
        assert "Traceback" not in run.stderr
