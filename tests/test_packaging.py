"""A non-editable install works: the wheel ships the grammar and every subpackage, and ``python -m netspec``
and the ``netspec`` script run from another directory with nothing of the checkout on the path.

Fast and honest: the wheel is built by the real build backend (``pip wheel --no-deps``) from a copy of the
checkout, installed with ``--no-deps`` into a fresh virtualenv, and only the already installed dependencies
(torch, lark, numpy) are borrowed from the project environment, through a ``.pth`` file that adds their
directories to ``sys.path`` without running that environment's editable-install hooks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from .conftest import CFGS, REPO

IGNORED = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".hypothesis", ".ruff_cache", "out", "runs")


def _run(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel path, venv python) with netspec installed from its wheel."""
    if shutil.which("pip") is None and subprocess.run([sys.executable, "-m", "pip", "--version"],
                                                      capture_output=True).returncode:
        pytest.skip("pip is not available")
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=IGNORED)
    wheel_dir = root / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                  "-w", wheel_dir, source], cwd=root)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheel_dir.glob("netspec-*.whl")

    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q",
                      wheel], cwd=root)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
                .stdout.strip())
    import lark
    import numpy
    import torch

    dep_dirs = sorted({str(Path(m.__file__).resolve().parent.parent) for m in (torch, lark, numpy)})
    (site / "_borrowed_dependencies.pth").write_text("\n".join(dep_dirs) + "\n")
    return wheel, python, env_dir, site


def test_wheel_ships_the_grammar_and_every_module(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "netspec/grammar/cfg.lark" in names
    assert "netspec/py.typed" in names  # PEP 561 marker: type checkers read netspec's annotations
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "netspec").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules and modules <= names, sorted(modules - names)
    assert not any(n.startswith(("tests/", "cfgs/", "grammar/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "netspec = netspec.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    _, python, _, site = installed
    code = "import netspec, netspec.parser as p; print(netspec.__file__); print(p.grammar_path())"
    probe = _run([python, "-c", code], cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    module, grammar = probe.stdout.split()
    assert Path(module).is_relative_to(site)
    assert Path(grammar) == site / "netspec" / "grammar" / "cfg.lark"


def test_python_m_netspec_build_from_another_directory(installed, tmp_path):
    _, python, _, _ = installed
    shutil.copy(CFGS / "yolov3-tiny.cfg", tmp_path / "model.cfg")
    run = _run([python, "-m", "netspec", "build", "model.cfg"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith("total: 24 layers")
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilter=4\n")
    run = _run([python, "-m", "netspec", "check", "bad.cfg"], cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.startswith("bad.cfg:6:1: [convolutional] #0: unknown key 'filter'")


def test_console_script(installed, tmp_path):
    _, _, env_dir, _ = installed
    script = env_dir / ("Scripts/netspec.exe" if os.name == "nt" else "bin/netspec")
    run = _run([script, "check", CFGS / "yolov4-tiny.cfg"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok (38 layers)")
