"""allkit.atomic: a write is all or nothing, and the file gets ordinary permissions (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from allkit.atomic import atomic_file, write_json


def test_new_files_get_the_permissions_the_umask_allows(tmp_path):
    before = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.bin") as handle:
            handle.write(b"x")
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"k": 1})
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(target) as handle:
            handle.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.bin"]
