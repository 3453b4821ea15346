"""Bad input gets one clear line: odd trees and CSVs, images that are no cells, damaged or edited models, seeds
and sizes out of range (read where they are read, before any large allocation)."""

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import OFFLINE, cli, one_line_error
from PIL import Image

from allkit.cli.main import main
from allkit.data import build_cache, load_cnmc, read_cell
from allkit.errors import ConfigError, DataError
from allkit.hybrid import _content_sha256
from allkit.study.config import Config
from allkit.study.synthetic import make_synthetic_cnmc


@pytest.fixture
def data(tmp_path):
    return make_synthetic_cnmc(tmp_path / "data", seed=3, cells_per_subject=4, final_cells=3).parent


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A saved ci-profile hybrid on a synthetic tree: (data folder, model folder)."""
    root = make_synthetic_cnmc(tmp_path_factory.mktemp("m") / "data", seed=5, cells_per_subject=4, final_cells=0)
    out = root.parent.parent / "run"
    assert (
        main(["reproduce", "--profile", "ci", "--data", str(root.parent), "--out", str(out), "--quiet", *OFFLINE]) == 0
    )
    return root.parent, out / "model"


def resign(folder: Path, edit) -> None:
    """Edit a saved model and make its manifest match again (the sha256 of its files and of its own values), as
    someone who knows the format would: what is left to catch is the content itself."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("sha256")
    edit(folder, manifest)
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({**manifest, "sha256": _content_sha256(manifest)}))


# ---------------------------------------------------------------------------------------- trees and CSVs


def cells_dir(data: Path, fold="fold_0", cls="all") -> Path:
    return data / "C-NMC_Leukemia" / "training_data" / fold / cls


@pytest.mark.parametrize("where", ["nested", "beside-folds", "unlisted-prelim"])
def test_every_image_that_is_not_counted_is_reported(data, capsys, where):
    cell = next(cells_dir(data).iterdir())
    target = {
        "nested": cells_dir(data) / "batch1" / cell.name.replace("_1_all", "_91_all"),
        "beside-folds": data / "C-NMC_Leukemia" / "training_data" / cell.name.replace("_1_all", "_92_all"),
        "unlisted-prelim": data / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data" / "999.png",
    }[where]
    target.parent.mkdir(exist_ok=True)
    shutil.copy(cell, target)
    assert load_cnmc(data).uncounted == [str(target)]
    code, out, _ = cli(["data", "check", data, "--json", "--quick"], capsys)
    report = json.loads(out)
    assert report["uncounted"] == [str(target)] and any("not counted" in n for n in report["notes"])
    code, out, _ = cli(["data", "check", data, "--quick"], capsys)
    assert f"not counted: 1 image(s), e.g. {target}" in out


def test_a_copied_fold_names_both_copies_of_one_cell(data):
    fold = data / "C-NMC_Leukemia" / "training_data" / "fold_1"
    shutil.copytree(fold, fold.with_name("fold_1_backup"))
    with pytest.raises(DataError) as info:
        load_cnmc(data)
    first, second = str(info.value).split(": ", 1)[1].split("; ")[0].split(" and ")
    assert Path(first).name == Path(second).name and {Path(first).parts[-3], Path(second).parts[-3]} == {
        "fold_1",
        "fold_1_backup",
    }


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/hostname", "sub/1.png", ".."])
def test_a_csv_name_outside_the_prelim_folder_is_refused(data, name):
    csv = data / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    lines = csv.read_text().splitlines()
    patient, _, label = lines[1].split(",")
    csv.write_text("\n".join([lines[0], f"{patient},{name},{label}", *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="is not a file name"):
        load_cnmc(data)


def test_data_check_reports_training_prelim_and_final_apart_and_decodes_the_final_set(data, capsys):
    final = sorted((data / "C-NMC_Leukemia" / "testing_data" / "C-NMC_test_final_phase_data").iterdir())
    final[0].write_bytes(b"not an image")
    code, out, _ = cli(["data", "check", data, "--json"], capsys)
    report = json.loads(out)
    frame = load_cnmc(data).frame
    assert report["images"]["ALL"] == int(((frame.fold != "prelim") & (frame.label == 1)).sum())
    assert report["prelim"]["images"]["ALL"] == int(((frame.fold == "prelim") & (frame.label == 1)).sum())
    assert [b["path"] for b in report["bad_files"]] == [str(final[0])] and not report["usable"]


# ---------------------------------------------------------------------------------------- images that are no cells


@pytest.mark.parametrize("size", [(1, 1), (3000, 1), (450, 100), (10_000, 10_000)])
def test_images_that_are_no_cells_are_refused_before_decoding(tmp_path, size):
    path = tmp_path / "x.png"
    Image.new("L", size).save(path)  # 10,000 x 10,000 of one grey: a tiny file, 100 M pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw DecompressionBombWarning either
        with pytest.raises(DataError, match=f"{size[0]}x{size[1]} pixels is not a cell image"):
            read_cell(path)


def test_the_releases_size_and_ordinary_variations_are_cells(tmp_path):
    for size in ((450, 450), (257, 300), (64, 128)):
        Image.new("RGB", size, (200, 100, 50)).save(tmp_path / "c.png")
        assert read_cell(tmp_path / "c.png").shape == (224, 224, 3)


# ---------------------------------------------------------------------------------------- models and settings


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload, words",
    [
        (b"\x00garbage\xff" * 50, ["xgboost.json", "not a readable XGBoost model"]),
        (b'{"learner":{}}', ["xgboost.json"]),
    ],
)
def test_a_damaged_xgboost_file_is_one_line_naming_it(model, tmp_path, capsys, payload, words):
    root, saved = model
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    resign(folder, lambda f, m: (f / "xgboost.json").write_bytes(payload))
    code, _, err = cli(["evaluate", "--model", folder, "--data", root], capsys)
    one_line_error(code, err, *words)


@pytest.mark.slow
@pytest.mark.parametrize("size", [100_000, 0, "224"])
def test_a_preprocessing_size_out_of_range_is_refused_before_any_allocation(model, tmp_path, capsys, size):
    root, saved = model
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    resign(folder, lambda f, m: m["preprocessing"].update(size=size))
    code, _, err = cli(["evaluate", "--model", folder, "--data", root], capsys)
    one_line_error(code, err, "manifest.json", "preprocessing", "1 to 1024")


def test_sizes_are_checked_without_allocating(tmp_path):
    frame = load_cnmc(make_synthetic_cnmc(tmp_path / "d", cells_per_subject=2, final_cells=0)).frame
    with pytest.raises(ConfigError, match="1 to 1024"):
        build_cache(frame, size=100_000, folder=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("seed", [2**33, -1, 1.5, True])
def test_a_seed_out_of_range_is_refused_where_it_is_read(seed):
    with pytest.raises(ConfigError, match="seed"):
        Config(name="x", seed=seed)


@pytest.mark.slow
def test_a_seed_out_of_range_in_config_json_is_one_line(data, tmp_path, capsys):
    cnn = tmp_path / "cnn"
    code, _, _ = cli(["train", "--profile", "ci", "--data", data, "--out", cnn, "--quiet", *OFFLINE], capsys)
    assert code == 0
    record = json.loads((cnn / "config.json").read_text())
    record["config"]["seed"] = 2**33
    (cnn / "config.json").write_text(json.dumps(record))
    code, _, err = cli(["fit-hybrid", "--cnn", cnn, "--quiet"], capsys)
    one_line_error(code, err, "config.json", "seed")


def test_the_offline_fallback_is_said_before_any_work(data, capsys, monkeypatch):
    import allkit.study.prepare as prepare
    import allkit.study.store as store
    from allkit.study.config import get_config

    def no_b0(name, weights, **kwargs):
        if name == "efficientnet_b0":
            raise prepare.ModelError("no internet")
        return real(name, weights, **kwargs)

    class DataRead(Exception):
        pass

    def stop(*args, **kwargs):
        raise DataRead

    real = prepare.build_model
    monkeypatch.setattr(prepare, "build_model", no_b0)
    monkeypatch.setattr(prepare, "_SAID", set())  # said once per process: this test's process may have said it
    monkeypatch.setattr(prepare, "load_cnmc", stop)
    monkeypatch.setattr(store, "load_cnmc", stop)
    with pytest.raises(DataRead):  # stopped at the first data read: the fallback must be said by then
        prepare.prepare(get_config("ci"), data, progress=False)
    assert "using efficientnet_lite0" in capsys.readouterr().err
    with pytest.raises(DataRead):  # said once per process, not again for each run a chapter opens
        prepare.prepare(get_config("ci"), data, progress=False)
    assert "using efficientnet_lite0" not in capsys.readouterr().err
    prepare._SAID.clear()
    with pytest.raises(DataRead):  # the store too: it keys a run by the backbone it gets
        store.run(get_config("ci"), data, runs=data / "runs", progress=False)
    assert "using efficientnet_lite0" in capsys.readouterr().err


def test_cells_cached_at_a_legal_size_still_match(data, tmp_path):
    frame = load_cnmc(data).frame.head(2)
    cache = build_cache(frame, size=32, folder=tmp_path, progress=False)
    assert cache.images.shape == (2, 32, 32, 3) and cache.images.dtype == np.uint8
