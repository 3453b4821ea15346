"""Bad input and faults: one clear error (one line from the CLI, exit code 2), nothing silently wrong,
nothing lost. One test per case found by trying 82 bad inputs against the CLI (issue "Reliability")."""

import errno
import fcntl
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import OFFLINE, cli, one_line_error
from PIL import Image

import allkit.study.store
from allkit.cli.main import main
from allkit.data import Split, build_cache, load_cnmc
from allkit.errors import DataError, ModelError
from allkit.hybrid import HybridClassifier
from allkit.study.config import get_config
from allkit.study.data_check import check_report
from allkit.study.prepare import prepare
from allkit.study.synthetic import make_synthetic_cnmc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished ci-profile run on a synthetic tree: (data folder, run folder)."""
    root = make_synthetic_cnmc(tmp_path_factory.mktemp("finished") / "data", seed=4, cells_per_subject=4, final_cells=0)
    root, out = root.parent, root.parent.parent / "run"
    assert main(["reproduce", "--profile", "ci", "--data", str(root), "--out", str(out), "--quiet", *OFFLINE]) == 0
    return root, out


# ---------------------------------------------------------------------------------------- data lost or mixed


def test_a_finished_run_is_not_replaced_without_overwrite(finished, no_preparation, capsys):
    root, out = finished
    before = (out / "metrics.json").read_bytes()
    code, _, err = cli(["reproduce", "--profile", "ci", "--data", root, "--out", out, "--quiet", *OFFLINE], capsys)
    one_line_error(code, err, "already holds results", "--overwrite")
    assert (out / "metrics.json").read_bytes() == before


def test_overwrite_replaces_the_whole_run(finished, tmp_path, capsys):
    root, out = finished
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "stale-figure.png").write_bytes(b"from an older run")
    code, _, _ = cli(
        ["reproduce", "--profile", "ci", "--data", root, "--out", copy, "--quiet", "--overwrite", *OFFLINE], capsys
    )
    assert code == 0 and not (copy / "stale-figure.png").exists() and (copy / "metrics.json").is_file()


def test_a_run_folder_being_written_is_refused(tmp_path, data, no_preparation, capsys):
    out = tmp_path / "run"
    with open(tmp_path / ".run.lock", "a") as lock:  # what a concurrent `allkit reproduce --out run` holds
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, _, err = cli(["reproduce", "--profile", "ci", "--data", data, "--out", out, *OFFLINE], capsys)
    one_line_error(code, err, "being written by another allkit process")


def test_a_failed_run_leaves_no_half_written_folder(tmp_path, data, monkeypatch, capsys):
    out = tmp_path / "run"

    def crash(*args, **kwargs):
        raise ModelError("simulated failure in the middle of the run")

    monkeypatch.setattr(allkit.study.store.Run, "save_hybrid", crash)
    code, _, err = cli(["reproduce", "--profile", "ci", "--data", data, "--out", out, "--quiet", *OFFLINE], capsys)
    one_line_error(code, err, "simulated failure")
    assert not out.exists() and not [
        p for p in tmp_path.iterdir() if p.name.startswith(".run.") and "lock" not in p.name
    ]


def test_full_disk_while_caching_is_an_error_and_leaves_no_temp_file(tmp_path, data, monkeypatch):
    frame = load_cnmc(data).frame

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError, match="No space left"):
        build_cache(frame, size=32, folder=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_full_disk_while_saving_a_model_keeps_the_old_one(finished, tmp_path, monkeypatch):
    _, out = finished
    model_dir = tmp_path / "model"
    shutil.copytree(out / "model", model_dir)
    hybrid = HybridClassifier.load(model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4374")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ModelError, match="cannot save the model") as info:
        hybrid.save(model_dir)
    assert "\n" not in str(info.value) and "unchanged" in str(info.value)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


# ------------------------------------------------------------------------------------------ silently wrong


def test_fit_hybrid_refuses_a_cnn_whose_split_changed(tmp_path, data, capsys):
    cnn = tmp_path / "cnn"
    code, _, _ = cli(["train", "--profile", "ci", "--data", data, "--out", cnn, "--quiet", *OFFLINE], capsys)
    assert code == 0
    train_subjects = json.loads((cnn / "config.json").read_text())["split"]["subjects"]["train"]
    gone = next(p for p in (data / "C-NMC_Leukemia").rglob("*.png") if f"_{train_subjects[0]}_" in p.name)
    gone.unlink()  # the data changed after training
    code, _, err = cli(["fit-hybrid", "--cnn", cnn, "--quiet"], capsys)
    one_line_error(code, err, "changed since the CNN", "Train the CNN again")
    assert not (cnn / "model").exists()


def test_evaluate_on_cells_the_model_was_trained_on_warns(finished, capsys):
    root, out = finished
    code, stdout, err = cli(["evaluate", "--model", out / "model", "--data", root, "--json"], capsys)
    result = json.loads(stdout)
    train = json.loads((out / "config.json").read_text())["split"]["subjects"]["train"]
    assert code == 0 and set(train) <= set(result["seen_subjects"])
    assert "WARNING" in err and "not on unseen people" in err


def test_a_file_copied_to_another_subject_is_leakage(data):
    hem = sorted((data / "C-NMC_Leukemia" / "training_data" / "fold_0" / "hem").iterdir())[0]
    target = data / "C-NMC_Leukemia" / "training_data" / "fold_1" / "hem" / "UID_H99_1_1_hem.png"
    shutil.copy(hem, target)  # an identical cell under a new subject, in another fold
    original = load_cnmc(data).frame.set_index("path").loc[str(hem), "subject"]

    def apart(frame):  # the original subject in training, the copy's in the test part
        rest = frame[~frame["subject"].isin([original, "H99"])]
        return Split(frame[frame["subject"] == original], rest, frame[frame["subject"] == "H99"], "subject", 0)

    with pytest.raises(DataError, match="identical picture") as info:
        config = replace(get_config("ci"), backbone="efficientnet_lite0", weights="offline", fallback_backbone=None)
        prepare(config, data, split=apart, progress=False)
    assert str(target) in str(info.value) or str(hem) in str(info.value)


@pytest.mark.parametrize(
    "edit, value", [("threshold", 0.3), ("threshold", float("nan")), ("size", 224), ("size", -1), ("normalize", "zzz")]
)
def test_an_edited_manifest_is_refused(finished, tmp_path, capsys, edit, value):
    root, out = finished
    model = tmp_path / "model"
    shutil.copytree(out / "model", model)
    manifest = json.loads((model / "manifest.json").read_text())
    if edit == "size":
        manifest["preprocessing"]["size"] = value
    else:
        manifest["params"][edit] = value
    (model / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(["evaluate", "--model", model, "--data", root], capsys)
    one_line_error(code, err, "was edited")


def _prelim_csv(data: Path) -> Path:
    return data / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"


def test_labels_csv_with_only_a_header_is_refused(data):
    csv = _prelim_csv(data)
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="lists no cells"):
        load_cnmc(data)


def test_a_duplicated_csv_row_is_refused(data):
    csv = _prelim_csv(data)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match="both list"):
        load_cnmc(data)


def test_spaces_around_csv_separators_are_read(data):
    csv = _prelim_csv(data)
    csv.write_text("\n".join(" , ".join(line.split(",")) for line in csv.read_text().splitlines()) + "\n")
    assert (load_cnmc(data).frame["fold"] == "prelim").sum() > 0


def test_an_image_changed_with_its_mtime_restored_is_decoded_again(tmp_path, data):
    frame = load_cnmc(data).frame.head(3)
    first = build_cache(frame, size=16, folder=tmp_path / "cache", progress=False).images[0].copy()
    path = frame["path"].iloc[0]
    stat = os.stat(path)
    Image.new("RGB", (450, 450), (255, 0, 0)).save(path)  # other pixels ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... under the old modification time
    second = build_cache(frame, size=16, folder=tmp_path / "cache", progress=False).images[0]
    assert not np.array_equal(first, second) and tuple(second[8, 8]) == (255, 0, 0)


@pytest.mark.parametrize("damage", ["truncated", "float"])
def test_data_check_and_the_run_agree_on_bad_images(data, damage):
    victim = sorted((data / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all").iterdir())[0]
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:300])
    else:  # a float image with NaN: no defined intensity range
        Image.fromarray(np.full((450, 450), np.nan, np.float32)).save(victim.with_suffix(".tiff"))
        victim.unlink()
        victim = victim.with_suffix(".tiff")
    report = check_report(data, progress=False)
    assert not report["usable"] and [b["path"] for b in report["bad_files"]] == [str(victim)]
    with pytest.raises(DataError, match="remove or replace the file") as info:
        build_cache(load_cnmc(data).frame, size=32, progress=False)
    assert str(victim) in str(info.value) and "--on-error" not in str(info.value)


# ------------------------------------------------------------------------------------- one line, not a traceback


@pytest.mark.parametrize("epochs", ["0", "-1", "two"])
def test_bad_epochs_are_refused_before_any_work(data, tmp_path, epochs, no_preparation, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--profile", "ci", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", epochs])
    assert info.value.code == 2 and "whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("device, words", [("toaster", "expected 'auto'"), ("cuda", "no CUDA device")])
def test_bad_devices_are_one_line(data, tmp_path, device, words, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = cli(
        ["reproduce", "--profile", "ci", "--data", data, "--out", tmp_path / "o", "--device", device, *OFFLINE], capsys
    )
    one_line_error(code, err, words)


def test_an_unreadable_class_folder_is_one_line(data, tmp_path, monkeypatch, capsys):
    folder = data / "C-NMC_Leukemia" / "training_data" / "fold_1" / "hem"
    real = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    code, _, err = cli(["reproduce", "--profile", "ci", "--data", data, "--out", tmp_path / "o", *OFFLINE], capsys)
    one_line_error(code, err, str(folder), "Permission denied")


def test_out_that_is_a_file_or_not_writable_is_refused_first(data, tmp_path, no_preparation, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    code, _, err = cli(["reproduce", "--profile", "ci", "--data", data, "--out", a_file, *OFFLINE], capsys)
    one_line_error(code, err, "is a file")
    code, _, err = cli(["train", "--profile", "ci", "--data", data, "--out", a_file / "run", *OFFLINE], capsys)
    one_line_error(code, err, "cannot write to")
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("field, value", [("xgb_estimators", -3), ("image_size", -5)])
def test_a_damaged_config_json_is_one_line(finished, tmp_path, field, value, capsys):
    root, _ = finished
    cnn = tmp_path / "cnn"
    assert main(["train", "--profile", "ci", "--data", str(root), "--out", str(cnn), "--quiet", *OFFLINE]) == 0
    manifest = json.loads((cnn / "config.json").read_text())
    manifest["config"][field] = value
    (cnn / "config.json").write_text(json.dumps(manifest))
    code, _, err = cli(["fit-hybrid", "--cnn", cnn, "--quiet"], capsys)
    one_line_error(code, err, "config.json", field)


def test_a_second_fit_hybrid_does_not_replace_the_model_silently(finished, tmp_path, capsys):
    root, _ = finished
    cnn = tmp_path / "cnn"
    assert main(["train", "--profile", "ci", "--data", str(root), "--out", str(cnn), "--quiet", *OFFLINE]) == 0
    assert main(["fit-hybrid", "--cnn", str(cnn), "--quiet"]) == 0
    capsys.readouterr()
    code, _, err = cli(["fit-hybrid", "--cnn", cnn, "--quiet"], capsys)
    one_line_error(code, err, "already holds results")
    assert main(["fit-hybrid", "--cnn", str(cnn), "--quiet", "--overwrite"]) == 0


@pytest.mark.parametrize("cells", ["-5", "0"])
def test_negative_calibration_cells_are_refused(finished, tmp_path, cells, capsys):
    pytest.importorskip("onnxruntime")
    _, out = finished
    code, _, err = cli(
        [
            "export",
            "--onnx",
            "--model",
            out / "model",
            "--out",
            tmp_path / "m.onnx",
            "--int8",
            "--calibration-cells",
            cells,
        ],
        capsys,
    )
    one_line_error(code, err, "--calibration-cells")


def test_export_to_a_place_that_cannot_be_written_is_one_line(finished, tmp_path, capsys):
    pytest.importorskip("onnx")
    _, out = finished
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    code, _, err = cli(["export", "--onnx", "--model", out / "model", "--out", blocker / "m.onnx"], capsys)
    one_line_error(code, err)
