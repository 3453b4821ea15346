"""allkit.files: a write (of a file or a whole folder) is all or nothing, new files get ordinary permissions
(not mkstemp's 0600), and JSON that cannot be read is reported with the file's name."""

import hashlib
import os
import stat

import pytest

from allkit.errors import DataError, ModelError
from allkit.files import atomic_file, atomic_folder, read_json, sha256_file, write_json


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


def test_json_round_trips_and_unreadable_json_names_the_file(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"a": [1, 2], "b": None})
    assert read_json(path, DataError) == {"a": [1, 2], "b": None}
    path.write_text("{not json")
    with pytest.raises(ModelError, match=r"a\.json is not readable JSON.*; save it again"):
        read_json(path, ModelError, "; save it again")
    with pytest.raises(DataError, match="missing.json"):
        read_json(tmp_path / "missing.json", DataError)


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    data = os.urandom(3 << 20)  # several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_atomic_folder_replaces_the_old_folder_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as tmp:
        assert tmp != target and tmp.parent == target.parent and tmp.is_dir()
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # nothing visible until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or moved-aside folder left


def test_atomic_folder_creates_a_new_folder(tmp_path):
    target = tmp_path / "a" / "b"
    with atomic_folder(target) as tmp:
        (tmp / "x").write_bytes(b"1")
    assert (target / "x").read_bytes() == b"1"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]


def test_atomic_folder_failure_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_folder_failure_without_an_old_folder_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_folder(tmp_path / "model") as tmp:
            (tmp / "x").write_text("x")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if str(src).startswith(str(tmp_path / ".model.")) and "old-" not in str(src) and dst == target:
            raise OSError("rename refused")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename refused"):
        with atomic_folder(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
