"""atomic_write: the new file replaces the old in one step, with the permissions a plain open() gives."""

from __future__ import annotations

import os

import pytest

from netspec.atomic import atomic_write, write_bytes


def test_new_file_follows_the_umask_and_existing_file_keeps_its_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes(tmp_path / "new.bin", b"x")
        assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
