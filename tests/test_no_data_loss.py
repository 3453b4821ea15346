"""Nothing lost, nothing left behind: an output that is, holds or lies inside an input is refused; --overwrite
replaces only an allkit run; a killed run cleans up (SIGTERM) or is swept at the next start (a hard kill)."""

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import OFFLINE, cli, one_line_error

import allkit.study.folders
from allkit.data import build_cache, load_cnmc
from allkit.files import atomic_folder, sweep_stale


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_out_equal_to_the_data_is_refused_and_the_data_kept(data, no_preparation, capsys, command):
    before = tree(data)
    code, _, err = cli([command, "--profile", "ci", "--data", data, "--out", data, "--overwrite", *OFFLINE], capsys)
    one_line_error(code, err, "the data", "choose an output outside it")
    assert tree(data) == before


def test_out_holding_the_data_is_refused_and_the_users_files_kept(data, no_preparation, capsys, monkeypatch):
    project = data.parent
    (project / "notes.txt").write_text("the user's own file")
    before = tree(project)
    monkeypatch.chdir(project)
    code, _, err = cli(["train", "--profile", "ci", "--data", data.name, "--out", ".", "--overwrite"], capsys)
    one_line_error(code, err, "holds the data")
    assert tree(project) == before


def test_out_inside_the_data_is_refused(data, no_preparation, capsys):
    code, _, err = cli(["reproduce", "--profile", "ci", "--data", data, "--out", data / "runs" / "ci"], capsys)
    one_line_error(code, err, "is inside the data")
    assert not (data / "runs").exists()


def test_overwrite_refuses_a_folder_allkit_did_not_write(data, tmp_path, no_preparation, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("months of work")
    (mine / "metrics.json").write_text("{}")  # a file a run has too: still not a run
    code, _, err = cli(["reproduce", "--profile", "ci", "--data", data, "--out", mine, "--overwrite"], capsys)
    one_line_error(code, err, "not a folder allkit wrote", "chapter1.tex")
    assert (mine / "chapter1.tex").read_text() == "months of work"


def test_fit_hybrid_cannot_replace_the_cnn_it_reads(tmp_path, no_preparation, capsys):
    cnn = tmp_path / "cnn"
    (cnn / "outputs").mkdir(parents=True)
    for name in ("cnn.pt", "config.json", "outputs/train.plain.npy"):
        (cnn / name).write_bytes(b"weights")
    before = tree(cnn)
    for out in (cnn, cnn / "outputs"):
        code, _, err = cli(["fit-hybrid", "--cnn", cnn, "--out", out, "--overwrite"], capsys)
        one_line_error(code, err, "which this command reads")
    assert tree(cnn) == before


def test_export_cannot_write_over_the_model(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "cnn.pt").write_bytes(b"the weights")
    code, _, err = cli(["export", "--onnx", "--model", model, "--out", model / "cnn.pt"], capsys)
    one_line_error(code, err, "the model folder")
    assert (model / "cnn.pt").read_bytes() == b"the weights"


@pytest.mark.slow
def test_a_run_leaves_no_lock_file_and_marks_its_folder(data, tmp_path, capsys):
    out = tmp_path / "runs" / "ci"
    code, _, _ = cli(["reproduce", "--profile", "ci", "--data", data, "--out", out, "--quiet", *OFFLINE], capsys)
    assert code == 0 and (out / allkit.study.folders.RUN_MARKER).is_file()
    assert [p.name for p in out.parent.iterdir()] == ["ci"]  # no .ci.lock, no staging folder
    code, _, _ = cli(
        ["reproduce", "--profile", "ci", "--data", data, "--out", out, "--quiet", "--overwrite", *OFFLINE], capsys
    )
    assert code == 0 and [p.name for p in out.parent.iterdir()] == ["ci"]


@pytest.mark.slow
def test_sigterm_cleans_up_like_ctrl_c(data, tmp_path):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    env = {**os.environ, "ALLKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    args = ["reproduce", "--profile", "ci", "--data", str(data), "--out", str(runs / "ci"), "--quiet", *OFFLINE]
    process = subprocess.Popen(
        [sys.executable, "-m", "allkit", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (runs.is_dir() and any(p.name.startswith(".ci.") and p.is_dir() for p in runs.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and err.strip().count("\n") == 0 and "terminated" in err, err
    assert list(runs.iterdir()) == []  # no staging folder, no lock, no half run
    assert not list(cache.rglob("*.tmp"))


def test_a_hard_kill_is_swept_at_the_next_start_but_live_work_is_kept(tmp_path):
    dead, live = dead_pid(), os.getppid()
    left = [tmp_path / f".run.{dead}.abc123de", tmp_path / f".run.old-{dead}"]
    for folder in left:
        folder.mkdir()
    (tmp_path / f".run.{dead}.x_9yz012.tmp").write_bytes(b"half")
    working = tmp_path / f".run.{live}.def456gh"
    working.mkdir()
    others = [tmp_path / ".runner.1.tmp", tmp_path / f".run.5.{dead}.abc123de"]  # another name's, even "run.5"
    others[0].write_bytes(b"not ours")
    others[1].mkdir()
    with atomic_folder(tmp_path / "run") as staging:
        (staging / "a").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", working.name, *(p.name for p in others)])
    assert sweep_stale(tmp_path, "run") == []


def test_a_killed_cache_build_is_swept_and_caches_are_shared_readable(data, tmp_path):
    frame = load_cnmc(data).frame.head(3)
    folder = tmp_path / "cells"
    folder.mkdir()
    stale = folder / f".cells-64-0123456789abcdef0123.{dead_pid()}.zz_8a1b2.tmp"
    stale.write_bytes(np.zeros(10, np.uint8).tobytes())
    old = os.umask(0o022)
    try:
        cache = build_cache(frame, size=64, folder=folder, progress=False)
    finally:
        os.umask(old)
    assert not stale.exists()
    assert oct(cache.path.stat().st_mode & 0o777) == oct(0o644)


# ---------------------------------------------------------------------------------------- archives


def zip_with(path: Path, members: dict[str, bytes], **kwargs) -> Path:
    with zipfile.ZipFile(path, "w", **kwargs) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def patch_zip(path: Path, offset_of: bytes, patch) -> None:
    """Edit the archive's bytes (a damaged download): ``patch(bytearray, index of offset_of)``."""
    raw = bytearray(path.read_bytes())
    patch(raw, raw.index(offset_of))
    path.write_bytes(bytes(raw))


CELL = {"C-NMC_Leukemia/training_data/fold_0/all/UID_1_1_1_all.bmp": b"BM" + bytes(5000)}


def assert_refused_cleanly(archive: Path, dest: Path, capsys, *words):
    code, _, err = cli(["data", "extract", archive, "--dest", dest], capsys)
    one_line_error(code, err, str(archive), *words)
    assert not dest.exists() or list(dest.iterdir()) == [], list(dest.iterdir())  # nothing half-written


def test_a_bad_crc_names_the_archive_and_member(tmp_path, capsys):
    archive = zip_with(tmp_path / "a.zip", CELL, compression=zipfile.ZIP_STORED)
    patch_zip(archive, bytes(64), lambda raw, i: raw.__setitem__(i + 10, 1))  # one byte of the cell flipped
    assert_refused_cleanly(archive, tmp_path / "dest", capsys, "UID_1_1_1_all.bmp", "damaged")


def test_encrypted_and_unsupported_members_are_refused(tmp_path, capsys):
    for flag_offset, value, word in ((6, 0x1, "encrypted"), (8, 99, "compression method 99")):
        archive = zip_with(tmp_path / f"{word.split()[0]}.zip", CELL)

        def patch(raw, i, offset=flag_offset, value=value):  # in the local and the central header
            for start in (i for i in range(len(raw) - 4) if raw[i : i + 4] in (b"PK\x03\x04", b"PK\x01\x02")):
                at = start + offset + (2 if raw[start + 2] == 1 else 0)
                raw[at : at + 2] = value.to_bytes(2, "little")

        patch_zip(archive, b"PK", patch)
        assert_refused_cleanly(archive, tmp_path / "dest", capsys, word)


def test_a_zip_bomb_is_stopped_at_its_stated_size(tmp_path, capsys):
    archive = zip_with(
        tmp_path / "bomb.zip", {"C-NMC_Leukemia/x.bmp": bytes(3 << 20)}, compression=zipfile.ZIP_DEFLATED
    )
    stated = (3 << 20).to_bytes(4, "little")
    small = (1000).to_bytes(4, "little")
    patch_zip(archive, b"PK", lambda raw, i: raw.__init__(bytes(raw).replace(stated, small)))
    assert_refused_cleanly(archive, tmp_path / "dest", capsys)


def test_an_archive_larger_than_the_free_space_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    archive = zip_with(tmp_path / "a.zip", CELL)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100))
    assert_refused_cleanly(archive, tmp_path / "dest", capsys, "GiB free")


def test_a_truncated_tar_gz_is_one_line(tmp_path, capsys):
    source = tmp_path / "src" / "C-NMC_Leukemia"
    source.mkdir(parents=True)
    (source / "cell.bmp").write_bytes(os.urandom(200_000))
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, arcname="C-NMC_Leukemia")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert_refused_cleanly(archive, tmp_path / "dest", capsys, "damaged or truncated")


def test_extract_is_all_or_nothing_and_says_what_next(tmp_path, capsys):
    archive = zip_with(tmp_path / "a.zip", {**CELL, "C-NMC_Leukemia/readme.txt": b"x"})
    dest = tmp_path / "dest"
    code, out, _ = cli(["data", "extract", archive, "--dest", dest], capsys)
    assert code == 0 and f"allkit data check {dest}" in out
    assert (dest / "C-NMC_Leukemia" / "readme.txt").read_bytes() == b"x"
    assert [p.name for p in dest.iterdir()] == ["C-NMC_Leukemia"]  # no staging folder left
    code, _, err = cli(["data", "extract", archive, "--dest", dest], capsys)  # never merged into an existing tree
    one_line_error(code, err, "already exists")


@pytest.mark.parametrize("name", ["../outside.bmp", "C-NMC_Leukemia/../../outside.bmp", "C-NMC_Leukemia/../x.bmp"])
def test_a_member_that_climbs_is_refused_even_back_inside(tmp_path, capsys, name):
    archive = zip_with(tmp_path / "a.zip", {**CELL, name: b"x"})
    assert_refused_cleanly(archive, tmp_path / "dest", capsys, "would be written outside")
    assert not (tmp_path / "outside.bmp").exists()


def test_a_link_in_a_tar_is_refused(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    (source / "cell.bmp").write_bytes(b"BM" + bytes(100))
    (source / "link.bmp").symlink_to("/etc/hostname")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(source, arcname="C-NMC_Leukemia")
    assert_refused_cleanly(archive, tmp_path / "dest", capsys, "link.bmp", "is a link")
