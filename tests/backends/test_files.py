"""Atomic output keeps the permissions a plain write would give, and leaves nothing on failure."""

from __future__ import annotations

import os

import pytest

from irtool.backends.files import atomic_write, atomic_write_bytes


def test_new_files_get_the_umask_mode_not_a_private_one(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "out.bin", b"abc")
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"abc"
    assert path.stat().st_mode & 0o777 == 0o644


def test_an_existing_file_keeps_its_mode(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
