"""allkit.data: discovery, bad input, splits and the leakage guard, the cache, loaders; and the study layer's
data plumbing (root resolution, download, safe extraction, ``allkit data check``)."""

import importlib
import json
import os
import shutil
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from allkit.data import (
    CellDataset,
    build_cache,
    check_leakage,
    decode_cell,
    linked_subjects,
    load_cnmc,
    make_loader,
    parse_cell_name,
    pixel_digest,
    pixel_digests,
    split_by_image,
    split_by_subject,
    split_folds,
    split_paper,
)
from allkit.data.cache import VERSION as CACHE_VERSION
from allkit.errors import ConfigError, DataError, SubjectLeakageError
from allkit.study import download
from allkit.study.data_check import copy_groups
from allkit.study.download import download_cnmc, safe_extract
from allkit.study.workspace import SyntheticDataWarning, data_root, fingerprint


def copy_fold(synthetic_root: Path, dest: Path, fold: str = "fold_0") -> Path:
    source = synthetic_root / "C-NMC_Leukemia" / "training_data" / fold
    target = dest / fold
    shutil.copytree(source, target)
    shutil.copy(synthetic_root / "C-NMC_Leukemia" / "SYNTHETIC.md", target)  # still synthetic: no count notes
    return target


def pixels(cache, frame: pd.DataFrame) -> np.ndarray:
    return cache.images[cache.rows(frame)]


# ---------------------------------------------------------------- discovery


def test_parse_cell_name_handles_case_and_rejects_others():
    assert parse_cell_name("UID_h3_12_1_hem.bmp") == {"subject": "H3", "image": 12, "cell": 1, "class_name": "HEM"}
    assert parse_cell_name("uid_57_29_2_ALL.png")["subject"] == "57"
    assert parse_cell_name("cell_001.png") is None
    assert parse_cell_name("UID_57_x_2_all.png") is None


def test_full_layout_records(synthetic_root):
    data = load_cnmc(synthetic_root)
    frame = data.frame
    assert data.layout == "full" and data.synthetic
    assert list(frame.columns) == ["path", "label", "class_name", "subject", "fold", "split"]
    assert set(frame["fold"]) == {"fold_0", "fold_1", "fold_2", "prelim"}
    # one convention everywhere: ALL = 1, HEM = 0
    assert (frame.loc[frame.class_name == "ALL", "label"] == 1).all()
    assert (frame.loc[frame.class_name == "HEM", "label"] == 0).all()
    hem_subjects = frame.loc[frame.label == 0, "subject"]
    assert hem_subjects.str.startswith("H").all()
    assert frame.groupby("subject")["fold"].nunique().max() == 1
    # the final test set is unlabelled: its paths only, never in the labelled frame
    assert len(data.unlabelled) > 0 and all(Path(p).is_file() for p in data.unlabelled)
    assert set(data.unlabelled).isdisjoint(frame["path"])
    # prelim subjects come from the CSV's Patient_ID, not from the renamed files
    prelim = frame[frame.fold == "prelim"]
    assert prelim["subject"].nunique() >= 2
    assert set(prelim["subject"]).isdisjoint(set(frame.loc[frame.fold != "prelim", "subject"]))
    assert set(load_cnmc(synthetic_root, include_prelim=False).frame["fold"]) == {"fold_0", "fold_1", "fold_2"}


@pytest.mark.parametrize(
    "sub", ["", "C-NMC_Leukemia", "C-NMC_Leukemia/training_data", "C-NMC_Leukemia/training_data/fold_1"]
)
def test_accepts_any_level_of_the_layout(synthetic_root, sub):
    data = load_cnmc(synthetic_root / sub)
    expected = {
        "": "full",
        "C-NMC_Leukemia": "full",
        "C-NMC_Leukemia/training_data": "training",
        "C-NMC_Leukemia/training_data/fold_1": "fold",
    }[sub]
    assert data.layout == expected
    assert set(data.frame["class_name"]) == {"ALL", "HEM"}
    if sub.endswith("fold_1"):
        assert set(data.frame["fold"]) == {"fold_1"}


def test_nested_download_folder_is_found(synthetic_root, tmp_path):
    nested = tmp_path / "datasets" / "versions" / "1"
    shutil.copytree(synthetic_root / "C-NMC_Leukemia", nested / "C-NMC_Leukemia")
    assert load_cnmc(tmp_path).root == nested / "C-NMC_Leukemia"


def test_plain_class_folder_and_stray_files(synthetic_root, tmp_path):
    folder = copy_fold(synthetic_root, tmp_path)
    plain = tmp_path / "mycells"
    folder.rename(plain)
    for stray in (".DS_Store", "Thumbs.db", "notes.txt"):
        (plain / "all" / stray).write_bytes(b"junk")
    data = load_cnmc(plain)
    assert data.layout == "classes"
    assert not data.frame["path"].str.contains("DS_Store|Thumbs|notes").any()


def test_mode_conversions_in_cache(synthetic_root, tmp_path):
    folder = copy_fold(synthetic_root, tmp_path)
    files = sorted((folder / "all").iterdir())[:4]
    rgb = np.asarray(Image.open(files[0]).convert("RGB"))
    Image.fromarray(rgb).convert("L").save(files[0])
    Image.fromarray(rgb).convert("RGBA").save(files[1])
    Image.fromarray(rgb).convert("P").save(files[2])
    gray16 = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 257
    image16 = Image.fromarray(gray16)
    assert image16.mode.startswith("I;16")
    image16.save(files[3])
    data = load_cnmc(folder)
    cache = build_cache(data.frame, size=32, folder=tmp_path / "cache", progress=False)
    assert cache.images.shape[1:] == (32, 32, 3)
    got = pixels(cache, data.frame[data.frame.path == str(files[3])])[0]
    expected = pixels(cache, data.frame[data.frame.path == str(files[0])])[0]
    # a 16-bit grey image is scaled to 8 bits, not clipped to white
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert got.max() < 255 or expected.max() == 255


# ---------------------------------------------------------------- bad input


def test_missing_root():
    with pytest.raises(DataError, match="does not exist"):
        load_cnmc("/nonexistent/cnmc")


def test_root_without_images(tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "hem").mkdir()
    with pytest.raises(DataError, match="no images in"):
        load_cnmc(tmp_path)
    with pytest.raises(DataError, match="no C-NMC images under"):
        load_cnmc(tmp_path / "all")


def test_only_one_class(synthetic_root, tmp_path):
    folder = copy_fold(synthetic_root, tmp_path)
    shutil.rmtree(folder / "hem")
    with pytest.raises(DataError, match="only ALL cells"):
        load_cnmc(folder)


@pytest.mark.parametrize("damage", ["zero", "garbage", "truncated"])
def test_unreadable_image_named_when_caching(synthetic_root, tmp_path, damage):
    folder = copy_fold(synthetic_root, tmp_path)
    victim = sorted((folder / "hem").iterdir())[0]
    payload = victim.read_bytes()
    victim.write_bytes(
        {"zero": b"", "garbage": b"not an image at all", "truncated": payload[: len(payload) // 3]}[damage]
    )
    data = load_cnmc(folder)  # records only: pixels are decoded when the cache is built
    assert str(victim) in set(data.frame["path"])
    with pytest.raises(DataError, match=victim.name):
        build_cache(data.frame, size=32, folder=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == [], "a failed build must leave neither a cache nor a temp file"


def test_dataset_refuses_cells_missing_from_the_cache(synthetic_root, tmp_path):
    frame = load_cnmc(copy_fold(synthetic_root, tmp_path)).frame
    cache = build_cache(frame.iloc[1:], size=16, folder=tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match="not in the cache"):
        CellDataset(cache, frame)


def test_names_without_uid_refused_unless_allowed(synthetic_root, tmp_path):
    folder = copy_fold(synthetic_root, tmp_path)
    victim = sorted((folder / "all").iterdir())[0]
    victim.rename(victim.with_name("cell_0001.png"))
    with pytest.raises(DataError, match="UID_<subject>"):
        load_cnmc(folder)
    data = load_cnmc(folder, allow_unknown_subjects=True)
    unknown = data.frame[data.frame["path"].str.endswith("cell_0001.png")]
    assert unknown["subject"].tolist() == ["?cell_0001"]
    with pytest.raises(DataError, match="no subject id"):
        split_by_subject(data.frame)


def test_name_class_must_match_folder(synthetic_root, tmp_path):
    folder = copy_fold(synthetic_root, tmp_path)
    victim = sorted((folder / "all").iterdir())[0]
    shutil.move(victim, folder / "hem" / victim.name)
    with pytest.raises(DataError, match=f"{victim.name}: the name says ALL but the file lies in hem/"):
        load_cnmc(folder)


def test_same_image_in_two_folds(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / "C-NMC_Leukemia", tmp_path / "C-NMC_Leukemia")
    training = tmp_path / "C-NMC_Leukemia" / "training_data"
    victim = sorted((training / "fold_0" / "all").iterdir())[0]
    shutil.copy(victim, training / "fold_1" / "all" / victim.name)
    with pytest.raises(DataError, match="stored twice"):
        load_cnmc(tmp_path)


@pytest.fixture
def prelim_copy(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / "C-NMC_Leukemia", tmp_path / "C-NMC_Leukemia")
    csv = tmp_path / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    return tmp_path, csv


def test_prelim_csv_missing_column(prelim_copy):
    root, csv = prelim_copy
    pd.read_csv(csv).drop(columns=["labels"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"columns \['labels'\] missing"):
        load_cnmc(root)


def test_prelim_csv_listed_file_absent(prelim_copy):
    root, csv = prelim_copy
    table = pd.read_csv(csv)
    (csv.parent / "C-NMC_test_prelim_phase_data" / table.loc[0, "new_names"]).unlink()
    with pytest.raises(DataError, match="does not exist"):
        load_cnmc(root)


def test_prelim_csv_bad_label(prelim_copy):
    root, csv = prelim_copy
    table = pd.read_csv(csv)
    table.loc[1, "labels"] = 2
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match="line 3: label '2'"):
        load_cnmc(root)


# ---------------------------------------------------------------- splits


def test_subject_split_has_no_leakage_and_both_classes(synthetic_root):
    frame = load_cnmc(synthetic_root).frame
    split = split_by_subject(frame[frame.fold != "prelim"], val_size=0.2, test_size=0.2, seed=1)
    parts = split.parts()
    for name, part in parts.items():
        assert set(part["label"]) == {0, 1}, name
    subjects = [set(p["subject"]) for p in parts.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert sum(len(p) for p in parts.values()) == (frame.fold != "prelim").sum()
    assert split.protocol == "subject" and not split.leaky
    assert split.frame.groupby("split").size().to_dict() == {k: len(v) for k, v in parts.items()}
    again = split_by_subject(frame[frame.fold != "prelim"], val_size=0.2, test_size=0.2, seed=1)
    assert again.test["path"].tolist() == split.test["path"].tolist()


def test_leakage_guard_names_subjects():
    frame = pd.DataFrame({"subject": ["1", "2", "H3"], "label": [1, 1, 0]})
    with pytest.raises(SubjectLeakageError, match="H3") as info:
        check_leakage({"train": frame, "test": frame[frame.subject == "H3"]})
    assert info.value.subjects == ["H3"] and info.value.parts == ("train", "test")


def test_paper_protocol(synthetic_root):
    frame = load_cnmc(synthetic_root).frame
    split = split_paper(frame, seed=0)
    assert split.protocol == "paper"
    assert set(split.train["fold"]) == {"fold_0", "fold_1", "fold_2"}
    assert set(split.val["fold"]) == set(split.test["fold"]) == {"prelim"}
    assert set(split.val["subject"]).isdisjoint(split.test["subject"])
    with pytest.raises(DataError, match="preliminary test set"):
        split_paper(frame[frame.fold != "prelim"])


def test_image_split_needs_consent_and_leaks(synthetic_root):
    frame = load_cnmc(synthetic_root).frame
    with pytest.raises(DataError, match="leaky=True"):
        split_by_image(frame)
    split = split_by_image(frame, leaky=True, seed=0)
    assert split.leaky and split.protocol == "image"
    assert set(split.train["subject"]) & set(split.test["subject"])
    with pytest.raises(SubjectLeakageError):
        check_leakage(split.parts())
    assert sum(len(p) for p in split.parts().values()) == len(frame)


def test_too_few_subjects_is_a_clear_error(synthetic_root):
    frame = load_cnmc(synthetic_root / "C-NMC_Leukemia" / "training_data" / "fold_0").frame
    with pytest.raises(DataError, match="too few"):
        split_by_subject(frame, val_size=0.3, test_size=0.3)


# ---------------------------------------------------------------- cache and loader


def test_cache_round_trip_and_reuse(synthetic_root, tmp_path):
    frame = load_cnmc(synthetic_root).frame
    cache = build_cache(frame, size=48, folder=tmp_path, progress=False)
    for i in (0, len(frame) // 2, len(frame) - 1):
        with Image.open(frame.at[i, "path"]) as image:
            fresh = decode_cell(image, size=48)
        assert np.array_equal(pixels(cache, frame.iloc[[i]])[0], fresh)
    mtime = cache.path.stat().st_mtime_ns
    again = build_cache(frame, size=48, folder=tmp_path, progress=False)
    assert again.path == cache.path and again.path.stat().st_mtime_ns == mtime
    assert not again.images.flags.writeable
    assert build_cache(frame, size=40, folder=tmp_path, progress=False).path != cache.path
    assert build_cache(frame, size=48, crop_ratio=0.5, folder=tmp_path, progress=False).path != cache.path
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_cache_rebuilds_when_a_file_changes(synthetic_root, tmp_path):
    folder = copy_fold(synthetic_root, tmp_path)
    frame = load_cnmc(folder).frame
    first = build_cache(frame, size=32, folder=tmp_path / "c", progress=False)
    victim = Path(frame.at[0, "path"])
    Image.new("RGB", (450, 450), (255, 0, 0)).save(victim)
    second = build_cache(frame, size=32, folder=tmp_path / "c", progress=False)
    assert second.path != first.path
    assert tuple(pixels(second, frame.iloc[[0]])[0, 16, 16]) == (255, 0, 0)


def test_a_damaged_cache_file_is_rebuilt(synthetic_root, tmp_path):
    frame = load_cnmc(copy_fold(synthetic_root, tmp_path)).frame
    cache = build_cache(frame, size=16, folder=tmp_path / "c", progress=False)
    good = np.array(cache.images)
    cache.path.write_bytes(cache.path.read_bytes()[:200])  # truncated: not a full (N, 16, 16, 3) array
    again = build_cache(frame, size=16, folder=tmp_path / "c", progress=False)
    assert again.path == cache.path and np.array_equal(np.asarray(again.images), good)


def test_cache_refuses_a_folder_without_space(synthetic_root, tmp_path, monkeypatch):
    frame = load_cnmc(copy_fold(synthetic_root, tmp_path)).frame
    usage = namedtuple("usage", "total used free")
    needed = len(frame) * 32 * 32 * 3
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * needed, 10 * needed, needed // 2))
    with pytest.raises(DataError, match=r"MiB free; caching \d+ cells at 32 px needs .*ALLKIT_CACHE"):
        build_cache(frame, size=32, folder=tmp_path / "c", progress=False)
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * needed, 0, 10 * needed))
    assert build_cache(frame, size=32, folder=tmp_path / "c", progress=False).images.shape == (len(frame), 32, 32, 3)


def test_cache_refuses_bad_arguments(synthetic_root, tmp_path):
    frame = load_cnmc(copy_fold(synthetic_root, tmp_path)).frame
    with pytest.raises(DataError, match="empty"):
        build_cache(frame.iloc[:0], folder=tmp_path, progress=False)
    for kwargs in ({"size": 0}, {"size": 2.5}, {"size": True}, {"crop_ratio": 0}, {"crop_ratio": 1.5}):
        with pytest.raises(ConfigError):
            build_cache(frame, folder=tmp_path, progress=False, **kwargs)
    assert list(tmp_path.glob("*.npy")) == []


def test_cache_default_folder_is_under_the_cache_dir(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLKIT_CACHE", str(tmp_path / "cachehome"))
    frame = load_cnmc(copy_fold(synthetic_root, tmp_path)).frame.iloc[:3]
    cache = build_cache(frame, size=8, progress=False)
    assert cache.path.parent == tmp_path / "cachehome" / "cells"


def test_dataset_and_seeded_loader(synthetic_root, tmp_path):
    frame = load_cnmc(synthetic_root).frame
    cache = build_cache(frame, size=32, folder=tmp_path, progress=False)
    subset = frame[frame.fold == "fold_1"]
    dataset = CellDataset(cache, subset)
    assert torch.equal(dataset.labels, torch.tensor(subset["label"].to_numpy()))
    assert dataset.frame["path"].tolist() == subset["path"].tolist() and dataset.cache is cache
    assert len(CellDataset(cache)) == len(frame)
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert int(label) == subset.iloc[0]["label"]
    assert torch.equal(image, torch.from_numpy(pixels(cache, subset.iloc[[0]])[0]).permute(2, 0, 1))
    order = [torch.cat([y for _, y in make_loader(dataset, batch_size=5, shuffle=True, seed=s)]) for s in (1, 1, 2)]
    assert torch.equal(order[0], order[1])
    paths = [
        torch.cat([x.flatten(1).sum(1) for x, _ in make_loader(dataset, batch_size=5, shuffle=True, seed=s)])
        for s in (1, 2)
    ]
    assert not torch.equal(paths[0], paths[1])  # another seed, another order
    xs = [x for x, _ in make_loader(dataset, batch_size=5, shuffle=True, seed=1)]
    assert xs[0].shape == (5, 3, 32, 32) and xs[0].dtype == torch.uint8
    assert sorted(torch.cat([y for _, y in make_loader(dataset, batch_size=7)]).tolist()) == sorted(subset.label)
    # batched reads equal single reads
    batch, labels = dataset.__getitems__([3, 1])
    assert torch.equal(batch[0], dataset[3][0]) and torch.equal(batch[1], dataset[1][0])
    assert labels.tolist() == [int(dataset[3][1]), int(dataset[1][1])]


# ---------------------------------------------------------------- root resolution, download (allkit.study)


def test_resolution_order(synthetic_root, monkeypatch, tmp_path):
    monkeypatch.setenv("ALLKIT_DATA", str(synthetic_root))
    assert data_root(tmp_path) == (tmp_path, "argument")
    assert data_root() == (synthetic_root, "ALLKIT_DATA")
    monkeypatch.setenv("ALLKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="ALLKIT_DATA"):
        data_root()
    monkeypatch.delenv("ALLKIT_DATA")
    work = tmp_path / "work" / "notebooks"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.warns(SyntheticDataWarning):
        path, source = data_root()
    assert source == "synthetic" and load_cnmc(path).synthetic
    shutil.copytree(synthetic_root / "C-NMC_Leukemia", tmp_path / "work" / "data" / "C-NMC_Leukemia")
    assert data_root() == (tmp_path / "work" / "data", "./data")  # ../data, for a notebook in notebooks/


def test_download_without_network_gives_manual_steps(tmp_path, monkeypatch):
    kagglehub = pytest.importorskip("kagglehub")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    assert download.KAGGLE_HANDLE == "andrewmvd/leukemia-classification"
    with pytest.raises(DataError, match="(?s)download of andrewmvd/leukemia-classification failed.*ALLKIT_DATA"):
        download_cnmc(tmp_path / "dest")


def test_safe_extract_refuses_escape(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DataError, match="outside"):
        safe_extract(evil, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("C-NMC_Leukemia/readme.txt", "x")
    assert (safe_extract(good, tmp_path / "dest") / "C-NMC_Leukemia" / "readme.txt").exists()


def test_counts_compared_with_the_release(synthetic_root, tmp_path):
    fold = copy_fold(synthetic_root, tmp_path / "t" / "C-NMC_Leukemia" / "training_data", "fold_1")
    (fold / "SYNTHETIC.md").unlink()  # pretend it is a real, incomplete download
    data = load_cnmc(fold.parent)
    assert not data.synthetic
    assert any(note.startswith("fold_1 has") for note in data.notes)
    assert any("fold_0" in note for note in data.notes)
    assert load_cnmc(synthetic_root).notes == []  # the synthetic stand-in is not compared


def run_cli(args, capsys):
    # imported here so that the CLI (ported separately) being broken fails these tests only
    code = importlib.import_module("allkit.cli.main").main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_data_check_json(synthetic_root, capsys):
    code, out, _ = run_cli(["data", "check", str(synthetic_root), "--json"], capsys)
    report = json.loads(out)
    frame = load_cnmc(synthetic_root).frame
    assert code == 0 and report["usable"] and report["synthetic"]
    training, prelim = frame[frame.fold != "prelim"], frame[frame.fold == "prelim"]
    assert report["images"] == {"ALL": int((training.label == 1).sum()), "HEM": int((training.label == 0).sum())}
    assert report["prelim"]["images"] == {"ALL": int((prelim.label == 1).sum()), "HEM": int((prelim.label == 0).sum())}
    assert report["bad_files"] == [] and report["leakage"] == [] and report["uncounted"] == []
    assert report["unlabelled"] == len(load_cnmc(synthetic_root).unlabelled) > 0


def test_cli_data_check_errors_are_one_line(capsys):
    code, out, err = run_cli(["data", "check", "/nonexistent/cnmc"], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err


# ---------------------------------------------------------------- pictures filed under two people


def planted_copies(synthetic_root: Path, tmp_path: Path) -> tuple[Path, dict]:
    """Folds 0-2 of the synthetic tree with two pictures of one fold-0 ALL person filed again under a fold-2 ALL
    person (as WebP, another container, as the release does across its folds)."""
    training = tmp_path / "C-NMC_Leukemia" / "training_data"
    for fold in ("fold_0", "fold_1", "fold_2"):
        copy_fold(synthetic_root, training, fold)
    shutil.copy(synthetic_root / "C-NMC_Leukemia" / "SYNTHETIC.md", tmp_path / "C-NMC_Leukemia")
    frame = load_cnmc(tmp_path).frame
    source = frame[(frame.fold == "fold_0") & (frame.label == 1)].iloc[:2]
    owner = frame.loc[(frame.fold == "fold_2") & (frame.label == 1), "subject"].iloc[0]
    for i, path in enumerate(source["path"]):
        target = training / "fold_2" / "all" / f"UID_{owner}_900_{i + 1}_all.webp"
        with Image.open(path) as image:
            image.save(target, lossless=True)
    return tmp_path, {"from": str(source["subject"].iloc[0]), "to": str(owner)}


def test_pixel_digest_is_the_picture_not_the_container(tmp_path):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 72, 3), dtype=np.uint8))
    for name, kwargs in (("a.png", {}), ("a.webp", {"lossless": True}), ("a.bmp", {}), ("b.jpg", {"quality": 90})):
        picture.save(tmp_path / name, **kwargs)
    digests = pixel_digests(sorted(tmp_path.iterdir()), folder=tmp_path / "cache", progress=False)
    by_name = {Path(p).name: d for p, d in digests.items()}
    assert by_name["a.png"] == by_name["a.webp"] == by_name["a.bmp"] != by_name["b.jpg"]  # JPEG changes pixels
    assert by_name["a.png"] == pixel_digest(picture)


def test_pixel_digests_are_remembered_and_refreshed(tmp_path, monkeypatch):
    path = tmp_path / "c.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    first = pixel_digests([path], folder=tmp_path, progress=False)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded again"))
    assert pixel_digests([path], folder=tmp_path, progress=False) == first
    monkeypatch.undo()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(path)
    os.utime(path, ns=(1, 2))  # another modification time: decoded again
    assert pixel_digests([path], folder=tmp_path, progress=False) != first
    (tmp_path / f"pixel-digests-v{CACHE_VERSION}.json").write_text("{not json")
    assert pixel_digests([path], folder=tmp_path, progress=False) != first  # a damaged index is recomputed


def test_linked_people_stay_on_one_side_and_copies_leave_the_test_part(synthetic_root, tmp_path):
    root, planted = planted_copies(synthetic_root, tmp_path)
    frame = load_cnmc(root).frame
    digests = pixel_digests(frame["path"], folder=tmp_path / "cache", progress=False)
    groups = linked_subjects(frame, digests)
    name = "+".join(sorted([planted["from"], planted["to"]]))
    assert groups[planted["from"]] == groups[planted["to"]] == name
    assert [(c["subjects"], c["pictures"]) for c in copy_groups(frame, digests)] == [(name, 2)]
    for seed in range(6):  # wherever the draw puts the pair, it is one unit
        split = split_by_subject(frame, seed=seed, digests=digests)
        sides = {part for part, cells in split.parts().items() if planted["from"] in set(cells["subject"])}
        assert sides == {part for part, cells in split.parts().items() if planted["to"] in set(cells["subject"])}
    # Without the digests the byte-different copies go unnoticed; the guard with them refuses such a split.
    folds = split_folds(frame, seed=0, digests=digests)
    assert folds.protocol == "folds" and folds.dropped == {"test": 2}
    assert planted["to"] in set(folds.test["subject"])  # the person stays; only the copied pictures go
    check_leakage(folds.parts(), digests)
    naive = split_folds(frame, seed=0)
    with pytest.raises(DataError, match="identical picture"):
        check_leakage(naive.parts(), digests)


def test_folds_protocol_tests_on_fold_2_and_keeps_validation_donors(synthetic_root):
    frame = load_cnmc(synthetic_root).frame
    split = split_folds(frame, seed=0, min_val_subjects=3)
    assert set(split.test["fold"]) == {"fold_2"} and "prelim" not in set(split.frame["fold"])
    assert set(split.train["fold"]) | set(split.val["fold"]) <= {"fold_0", "fold_1"}
    people = frame[frame["fold"].isin(["fold_0", "fold_1"])].groupby("label")["subject"].nunique()
    in_val = split.val.groupby("label")["subject"].nunique()
    assert (in_val == (people - 1).clip(upper=3)).all(), (people, in_val)  # the floor, one left to train on
    check_leakage(split.parts())
    with pytest.raises(DataError, match="fold_2"):
        split_folds(frame[frame["fold"] != "fold_2"])


def people_frame(healthy: int, patients: int, cells: int = 3) -> pd.DataFrame:
    """A frame of folds 0-1 people (no images): ``H<i>`` healthy, ``<i>`` ALL, ``cells`` cells each."""
    rows = [
        {"path": f"{s}_{c}.bmp", "subject": s, "label": int(not s.startswith("H")), "fold": f"fold_{i % 2}"}
        for i, s in enumerate([f"H{i}" for i in range(healthy)] + [str(i) for i in range(patients)])
        for c in range(cells)
    ]
    return pd.DataFrame(rows)


def test_cross_validation_over_people_validates_everyone_once_and_keeps_linked_people_together():
    from allkit.data.splits import grouped_kfold

    frame = people_frame(healthy=7, patients=14)
    digests = {path: path for path in frame["path"]}
    digests["H0_0.bmp"] = digests["H5_1.bmp"]  # one picture filed under two donors, as the release does
    seen = []
    for fold in range(3):
        split = grouped_kfold(frame, fold, 3, seed=1, digests=digests)
        train, val = set(split.train["subject"]), set(split.val["subject"])
        assert not train & val and train | val == set(frame["subject"]) and split.test.empty
        assert split.val.groupby("label")["subject"].nunique().min() >= 2  # both classes in every group
        assert {"H0", "H5"} <= val or {"H0", "H5"} <= train
        seen += sorted(val)
    assert sorted(seen) == sorted(set(frame["subject"]))  # each person validates exactly once
    assert grouped_kfold(frame, 1, 3, seed=1).val.equals(grouped_kfold(frame, 1, 3, seed=1).val)  # seeded
    with pytest.raises(DataError, match="fold 3 of 3 over people needs"):
        grouped_kfold(frame, 3, 3)
    with pytest.raises(DataError, match="and 8 people a class"):
        grouped_kfold(frame, 0, 8)


def test_folds_protocol_with_cross_validation_keeps_fold_2_as_the_test(synthetic_root):
    frame = load_cnmc(synthetic_root).frame
    plain = split_folds(frame, seed=0)
    for fold in range(2):
        split = split_folds(frame, seed=0, cv=(fold, 2))
        assert split.test.equals(plain.test) and split.protocol.startswith("folds, cross-validation")
        assert set(split.val["fold"]) | set(split.train["fold"]) <= {"fold_0", "fold_1"}
    # without fold 2 the folds protocol falls back to a subject split: cross-validation is refused, not ignored
    from dataclasses import replace

    from allkit.errors import ConfigError
    from allkit.study.config import get_config
    from allkit.study.prepare import make_split

    with pytest.raises(ConfigError, match="cross-validation over people"):
        make_split(frame[frame["fold"] != "fold_2"], replace(get_config("ci"), cv_fold=0), None, None)


def test_data_check_reports_copies_under_two_people_and_stays_usable(synthetic_root, tmp_path, capsys):
    root, planted = planted_copies(synthetic_root, tmp_path)
    code, out, _ = run_cli(["data", "check", str(root), "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["usable"] and report["leakage"] == []
    name = "+".join(sorted([planted["from"], planted["to"]]))
    assert [(c["subjects"], c["pictures"], c["folds"]) for c in report["copies"]] == [(name, 2, ["fold_0", "fold_2"])]
    code, out, _ = run_cli(["data", "check", str(root)], capsys)
    assert code == 0 and "usable: yes" in out and "2 picture(s) filed under each of" in out


def test_fingerprint_names_the_cells_not_the_folder(synthetic_root, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(synthetic_root, copy)
    assert fingerprint(load_cnmc(copy)) == fingerprint(load_cnmc(synthetic_root))
    victim = next((copy / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all").iterdir())
    subject = parse_cell_name(victim.name)["subject"]
    victim.rename(victim.with_name(f"UID_{subject}_999_9_all{victim.suffix}"))
    assert fingerprint(load_cnmc(copy)) != fingerprint(load_cnmc(synthetic_root))


# ---------------------------------------------------------------- the real C-NMC cells (../shared/data)


def release_counts(root: Path) -> tuple[dict, dict]:
    """Cells and people per class, counted from the file names alone (not through allkit)."""
    names = [p.name for p in (root / "C-NMC_Leukemia" / "training_data").glob("fold_*/*/UID_*")]
    images = {
        c: sum(n.lower().endswith(f"_{c.lower()}" + Path(n).suffix.lower()) for n in names) for c in ("ALL", "HEM")
    }
    people = {
        c: len({n.split("_")[1].upper() for n in names if Path(n).stem.lower().endswith(c.lower())})
        for c in ("ALL", "HEM")
    }
    return images, people


@pytest.mark.slow
def test_real_sample_counts(real_root, capsys):
    code, out, _ = run_cli(["data", "check", str(real_root), "--json", "--quick"], capsys)
    report = json.loads(out)
    images, people = release_counts(real_root)
    assert code == 0
    assert report["images"] == images and report["subjects"] == people
    assert report["leakage"] == [] and not report["synthetic"]


@pytest.mark.slow
def test_real_sample_split_and_cache(real_root, tmp_path):
    frame = load_cnmc(real_root).frame
    _, people = release_counts(real_root)
    assert frame.loc[frame.label == 0, "subject"].nunique() == people["HEM"]
    split = split_by_subject(frame, seed=42)
    check_leakage(split.parts())
    for part in split.parts().values():
        assert set(part["label"]) == {0, 1}
    sample = frame.groupby("subject").head(3).reset_index(drop=True)
    cache = build_cache(sample, size=224, folder=tmp_path, progress=False)
    for i in range(0, len(sample), 7):
        with Image.open(sample.at[i, "path"]) as image:
            assert np.array_equal(pixels(cache, sample.iloc[[i]])[0], decode_cell(image, size=224))


@pytest.mark.slow
def test_real_release_copies_found_across_containers(real_root, capsys):
    """The release files some pictures under two people, across PNG (fold 1) and WebP (folds 0, 2): data check
    finds them by their pixels, names the groups, and the data stays usable; the folds split drops them from
    fold 2 and never has one picture on two sides."""
    code, out, _ = run_cli(["data", "check", str(real_root), "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["usable"] and report["bad_files"] == []
    copies = {c["subjects"]: c for c in report["copies"]}
    assert "51+75+78" in copies and copies["51+75+78"]["folds"] == ["fold_1", "fold_2"]
    assert any(Path(f).suffix == ".png" for f in copies["51+75+78"]["example"])  # PNG = WebP, found by pixels
    frame = load_cnmc(real_root).frame
    digests = pixel_digests(frame["path"], progress=False)
    split = split_folds(frame, seed=42, digests=digests)
    shared = (
        frame[frame["fold"] == "fold_2"]["path"]
        .map(digests)
        .isin(set(frame[frame["fold"] != "fold_2"]["path"].map(digests)))
    )
    assert split.dropped == {"test": int(shared.sum())} and shared.sum() > 0
    check_leakage(split.parts(), digests)
    assert (split.val[split.val.label == 0]["subject"].nunique()) >= 3


def test_real_sample_lowercase_subject_names(real_root, tmp_path):
    hem = sorted((real_root / "C-NMC_Leukemia" / "training_data" / "fold_1" / "hem").iterdir())[:3]
    alls = sorted((real_root / "C-NMC_Leukemia" / "training_data" / "fold_1" / "all").iterdir())[:3]
    for sub, files in (("hem", hem), ("all", alls)):
        (tmp_path / sub).mkdir()
        for f in files:
            shutil.copy(f, tmp_path / sub / f.name.replace("UID_H", "UID_h").replace("_hem", "_HEM"))
    frame = load_cnmc(tmp_path).frame
    assert set(frame.loc[frame.label == 0, "subject"]) == {f.name.split("_")[1] for f in hem}
