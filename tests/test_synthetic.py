"""allkit.study.synthetic, the embedded default: layout, determinism, atomic writes, marker, learnability."""

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from allkit.constants import LABEL_ALL, LABEL_HEM
from allkit.errors import DataError
from allkit.study import synthetic
from allkit.study.synthetic import (
    DATASET_DIRNAME,
    GENERATOR_VERSION,
    MARKER_NAME,
    default_synthetic_root,
    is_synthetic,
    make_synthetic_cnmc,
    synthetic_info,
)

NAME_RE = re.compile(r"^UID_(H?\d+)_(\d+)_(\d+)_(all|hem)\.(png|bmp)$")
SMALL = dict(n_folds=2, subjects_per_fold=(1, 1), cells_per_subject=2, prelim_subjects=(1, 1), final_cells=2, size=64)


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def default_tree(tmp_path_factory) -> Path:
    """The embedded default, generated once into a temporary ALLKIT_CACHE: the C-NMC_Leukemia folder."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALLKIT_CACHE", str(cache))
        root = default_synthetic_root()
    assert root == cache / f"synthetic-v{GENERATOR_VERSION}"
    return root / DATASET_DIRNAME


def training_files(base: Path):
    """(path, fold, class folder, subject, label) for every training image."""
    out = []
    for f in sorted((base / "training_data").glob("fold_*/*/*")):
        m = NAME_RE.match(f.name)
        assert m, f"bad training file name {f}"
        assert m.group(4) == f.parent.name, f"{f}: class in name does not match its folder"
        out.append((f, f.parent.parent.name, f.parent.name, m.group(1), int(f.parent.name == "all")))
    return out


def prelim_rows(base: Path):
    with open(base / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["Patient_ID", "new_names", "labels"]
        return list(reader)


# ------------------------------------------------------------------------------------------------ layout


def test_layout_and_counts(default_tree):
    base = default_tree
    assert base.name == DATASET_DIRNAME
    assert sorted(p.name for p in base.iterdir()) == sorted(
        [MARKER_NAME, "training_data", "validation_data", "testing_data"]
    )
    assert sorted(p.name for p in (base / "training_data").iterdir()) == ["fold_0", "fold_1", "fold_2"]
    files = training_files(base)
    assert len(files) == 3 * 3 * 12
    for k in range(3):
        assert sum(1 for f in files if f[1] == f"fold_{k}" and f[2] == "all") == 2 * 12
        assert sum(1 for f in files if f[1] == f"fold_{k}" and f[2] == "hem") == 1 * 12

    where: dict[str, set] = {}
    for _, fold, cls, subject, _ in files:
        where.setdefault(subject, set()).add((fold, cls))
        if cls == "hem":
            assert subject.startswith("H") and subject[1:].isdigit()
        else:
            assert subject.isdigit()
    assert all(len(v) == 1 for v in where.values()), f"subject in more than one fold/class: {where}"
    assert len(where) == 9
    names = [f[0].name for f in files]
    assert len(set(names)) == len(names)

    rows = prelim_rows(base)
    assert len(rows) == 4 * 12
    prelim_dir = base / "validation_data" / "C-NMC_test_prelim_phase_data"
    assert sorted(r["new_names"] for r in rows) == sorted(p.name for p in prelim_dir.iterdir())
    assert sorted(int(r["new_names"].split(".")[0]) for r in rows) == list(range(1, 49))
    prelim_subjects = set()
    for r in rows:
        m = NAME_RE.match(r["Patient_ID"])
        assert m, r
        assert int(r["labels"]) in (LABEL_ALL, LABEL_HEM)
        assert int(r["labels"]) == (LABEL_ALL if m.group(4) == "all" else LABEL_HEM)
        assert m.group(1).startswith("H") == (m.group(4) == "hem")
        assert (prelim_dir / r["new_names"]).is_file()
        prelim_subjects.add(m.group(1))
    assert len(prelim_subjects) == 4
    assert {int(r["labels"]) for r in rows} == {0, 1}
    assert not prelim_subjects & set(where), "prelim subjects must be distinct from training subjects"

    final = sorted((base / "testing_data" / "C-NMC_test_final_phase_data").iterdir())
    assert sorted(int(p.stem) for p in final) == list(range(1, 7))
    info = synthetic_info(base)
    assert not set(info["final_subjects"]) & (set(where) | prelim_subjects)
    assert sorted(info["final_phase_labels"].values()) == [0, 0, 0, 1, 1, 1]


def test_images_are_cnmc_shaped(default_tree):
    files = [f[0] for f in training_files(default_tree)][::7]
    files += sorted((default_tree / "testing_data" / "C-NMC_test_final_phase_data").iterdir())
    for f in files:
        with Image.open(f) as im:
            assert im.size == (450, 450) and im.mode == "RGB", f
            a = np.asarray(im)
        for corner in (a[:20, :20], a[:20, -20:], a[-20:, :20], a[-20:, -20:]):
            assert corner.max() == 0, f"{f}: background must be pure black"
        centre = a[200:250, 200:250].astype(float)
        assert centre.min() > 0, f"{f}: the cell should cover the centre"
        # stained (purple/pink): blue and red above green on average inside the cell
        fg = a[a.max(axis=2) > 20].astype(float).mean(axis=0)
        assert fg[2] > fg[1] and fg[0] > fg[1], f"{f}: mean cell colour {fg} is not H&E-like"


def test_bmp_format_and_small_size(tmp_path):
    base = make_synthetic_cnmc(tmp_path, fmt="bmp", **SMALL)
    files = list(base.rglob("*.bmp"))
    assert len(files) == 2 * 2 * 2 + 2 * 2 + 2
    assert not list(base.rglob("*.png"))
    with Image.open(files[0]) as im:
        assert im.format == "BMP" and im.mode == "RGB" and im.size == (64, 64)
    assert all(r["Patient_ID"].endswith(".bmp") and r["new_names"].endswith(".bmp") for r in prelim_rows(base))


@pytest.mark.parametrize(
    "kwargs, word",
    [({"fmt": "jpg"}, "fmt"), ({"size": 8}, "size"), ({"subjects_per_fold": (1,)}, "subjects_per_fold")],
)
def test_bad_arguments_are_named(tmp_path, kwargs, word):
    with pytest.raises(DataError, match=word):
        make_synthetic_cnmc(tmp_path, **kwargs)
    assert not (tmp_path / DATASET_DIRNAME).exists()


# ------------------------------------------------------------------------------ determinism and writes


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    full_size = {**SMALL, "size": 450}
    a = make_synthetic_cnmc(tmp_path / "a", seed=3, **full_size)
    b = make_synthetic_cnmc(tmp_path / "b", seed=3, **full_size)
    c = make_synthetic_cnmc(tmp_path / "c", seed=4, **full_size)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)
    # different pixels, not just different names
    pa = sorted(a.glob("testing_data/*/*"))[0].read_bytes()
    pc = sorted(c.glob("testing_data/*/*"))[0].read_bytes()
    assert pa != pc


def test_default_root(tmp_path, monkeypatch, default_tree):
    root = default_tree.parent
    assert [p.name for p in root.iterdir()] == [DATASET_DIRNAME]
    digest = tree_digest(default_tree)
    monkeypatch.setenv("ALLKIT_CACHE", str(root.parent))
    assert default_synthetic_root() == root  # second call finds it, regenerates nothing
    assert tree_digest(default_tree) == digest
    monkeypatch.delenv("ALLKIT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(synthetic, "make_synthetic_cnmc", lambda root, **kw: Path(root))  # no 2nd full build
    assert default_synthetic_root() == tmp_path / ".cache" / "allkit" / f"synthetic-v{GENERATOR_VERSION}"


def test_idempotent_and_overwrite(tmp_path):
    base = make_synthetic_cnmc(tmp_path, **SMALL)
    digest = tree_digest(base)
    extra = base / "user_note.txt"
    extra.write_text("keep me")
    assert make_synthetic_cnmc(tmp_path, seed=99, **SMALL) == base  # existing tree returned untouched
    assert extra.read_text() == "keep me"
    assert make_synthetic_cnmc(tmp_path, overwrite=True, **SMALL) == base
    assert not extra.exists()
    assert tree_digest(base) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == [DATASET_DIRNAME], "temporary folders left behind"


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = synthetic._save

    def flaky_save(arr, path, fmt):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interruption")
        real_save(arr, path, fmt)

    monkeypatch.setattr(synthetic, "_save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_cnmc(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == [], "a half-written tree or a temp folder was left behind"
    monkeypatch.setattr(synthetic, "_save", real_save)
    assert is_synthetic(make_synthetic_cnmc(tmp_path, **SMALL))


# ---------------------------------------------------------------------------------------------- marker


def test_is_synthetic(default_tree, tmp_path):
    some_file = next((default_tree / "training_data" / "fold_1" / "hem").iterdir())
    for p in (default_tree.parent, default_tree, default_tree / "training_data" / "fold_1", some_file):
        assert is_synthetic(p), p
    assert not is_synthetic(tmp_path)
    fake = tmp_path / DATASET_DIRNAME / "training_data"
    fake.mkdir(parents=True)
    assert not is_synthetic(fake) and not is_synthetic(tmp_path)
    (tmp_path / DATASET_DIRNAME / MARKER_NAME).write_text("# just a readme\n")  # no sentinel: not ours
    assert not is_synthetic(fake)
    assert synthetic_info(tmp_path) is None


def test_marker_records_version_and_params(default_tree):
    text = (default_tree / MARKER_NAME).read_text()
    assert "SYNTHETIC" in text and "not patient data" in text
    info = synthetic_info(default_tree)
    assert info["generator_version"] == GENERATOR_VERSION
    assert info["params"] == {
        "seed": 0,
        "subjects_per_fold": [2, 1],
        "n_folds": 3,
        "cells_per_subject": 12,
        "prelim_subjects": [2, 2],
        "final_cells": 6,
        "fmt": "png",
        "size": 450,
    }
    assert sorted(info["folds"]) == ["fold_0", "fold_1", "fold_2"]


# ------------------------------------------------------------------------------------------ learnability


def _features(path: Path):
    """Hand-made morphology features and the mean cell colour of one image."""
    a = np.asarray(Image.open(path).convert("RGB"))
    fg = a.max(axis=2) > 20
    area = fg.mean()
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)  # crop to the cell: faster
    fg = fg[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    g = a.mean(axis=2)
    lo, hi = np.percentile(g[fg], [5, 95])
    nuc = fg & (g < (lo + hi) / 2)  # adaptive: the darker half of the cell's grey range
    gn = g[nuc]
    grain = np.abs(np.diff(g, axis=1))[nuc[:, 1:] & nuc[:, :-1]].mean() / gn.mean()
    morph = [area, nuc.sum() / fg.sum(), grain, gn.std() / gn.mean()]
    return morph, list(a[fg].mean(axis=0))


def test_classes_learnable_from_morphology_not_colour(default_tree):
    items = [(f, label, fold, subject) for f, fold, _, subject, label in training_files(default_tree)]
    prelim_dir = default_tree / "validation_data" / "C-NMC_test_prelim_phase_data"
    items += [
        (prelim_dir / r["new_names"], int(r["labels"]), "prelim", r["Patient_ID"].split("_")[1])
        for r in prelim_rows(default_tree)
    ]
    feats = [_features(f) for f, *_ in items]
    y = np.array([it[1] for it in items])
    subject = np.array([it[3] for it in items])
    morph = np.array([m for m, _ in feats])
    colour = np.array([c for _, c in feats])
    train = np.isin([it[2] for it in items], ["fold_0", "fold_1"])  # held out: fold_2 + prelim subjects
    test = ~train

    def balanced_accuracy(x):
        clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
        pred = clf.fit(x[train], y[train]).predict(x[test])
        return 0.5 * ((pred[y[test] == 1] == 1).mean() + (pred[y[test] == 0] == 0).mean())

    acc_morph = balanced_accuracy(morph)
    acc_colour = balanced_accuracy(colour)
    acc_single = [balanced_accuracy(morph[:, [j]]) for j in range(morph.shape[1])]
    # Measured with seed 0 (generator v1): morph 0.89, colour 0.62, single features 0.49-0.78.
    assert acc_morph >= 0.75, f"morphology should separate held-out subjects (got {acc_morph:.2f})"
    assert acc_morph >= acc_colour + 0.15, f"colour alone too informative: {acc_colour:.2f} vs {acc_morph:.2f}"
    assert max(acc_single) < 0.9, f"one feature alone is a giveaway: {acc_single}"

    # Per-subject stain: the mean colour identifies the subject, so a by-image split flatters a colour model.
    def knn():
        return make_pipeline(StandardScaler(), KNeighborsClassifier(3))

    i_tr, i_te = train_test_split(np.arange(len(y)), test_size=0.5, random_state=0, stratify=y)
    acc_subject_id = (knn().fit(colour[i_tr], subject[i_tr]).predict(colour[i_te]) == subject[i_te]).mean()
    acc_leaky = (knn().fit(colour[i_tr], y[i_tr]).predict(colour[i_te]) == y[i_te]).mean()
    acc_subjectwise = (knn().fit(colour[train], y[train]).predict(colour[test]) == y[test]).mean()
    n_subjects = len(set(subject))
    # Measured: subject id 0.65 (chance 1/13), leaky 0.88 vs subject-wise 0.75.
    assert acc_subject_id > 4.0 / n_subjects, f"subjects should differ in stain (id acc {acc_subject_id:.2f})"
    assert acc_leaky > acc_subjectwise, f"leaky {acc_leaky:.2f} vs subject-wise {acc_subjectwise:.2f}"
