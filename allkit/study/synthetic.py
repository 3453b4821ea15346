"""A small, seeded, C-NMC-shaped synthetic data set: the *synthetic embedded default*.

It exists so that tests, the book and the CLI can run offline without the real C-NMC 2019 download.
It is **never real data**: every generated tree carries a ``SYNTHETIC.md`` marker (see :func:`is_synthetic`).

Layout (identical to the Kaggle mirror of C-NMC 2019, only the image extension may differ)::

    <root>/C-NMC_Leukemia/
        SYNTHETIC.md                                   marker + generator version + parameters (json)
        training_data/fold_<k>/all/UID_<subject>_<image>_<cell>_all.<ext>     subject: integer, e.g. 57
        training_data/fold_<k>/hem/UID_H<n>_<image>_<cell>_hem.<ext>          subject: H + integer, e.g. H10
        validation_data/C-NMC_test_prelim_phase_data/1.<ext>, 2.<ext>, ...
        validation_data/C-NMC_test_prelim_phase_data_labels.csv              Patient_ID,new_names,labels
        testing_data/C-NMC_test_final_phase_data/1.<ext>, ...                 unlabelled

Each subject's cells are all of one class, each training subject lives in exactly one fold, and the
preliminary-test and final-test subjects are distinct from the training subjects (as in C-NMC).

The cells themselves are drawn by :mod:`allkit.study.synthetic_cells`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from allkit.constants import LABEL_ALL, LABEL_HEM
from allkit.data.cache import cache_dir
from allkit.data.records import SYNTHETIC_MARKER, SYNTHETIC_SENTINEL
from allkit.errors import DataError
from allkit.study.synthetic_cells import make_subject, render_cell

__all__ = [
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "DATASET_DIRNAME",
    "make_synthetic_cnmc",
    "default_synthetic_root",
    "is_synthetic",
    "synthetic_info",
]

#: Bump whenever the generated pixels (or file names) would change for the same arguments.
GENERATOR_VERSION = 1

#: Marker file written at the top of every synthetic ``C-NMC_Leukemia`` folder (read by allkit.data).
MARKER_NAME = SYNTHETIC_MARKER
#: Name of the data-set folder, as in the Kaggle mirror.
DATASET_DIRNAME = "C-NMC_Leukemia"

_SENTINEL = SYNTHETIC_SENTINEL
_FORMATS = ("png", "bmp")

# --------------------------------------------------------------------------------------------------
# Folder writer
# --------------------------------------------------------------------------------------------------


def _save(arr: np.ndarray, path: Path, fmt: str) -> None:
    img = Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        img.save(buf, format="BMP")
    path.write_bytes(buf.getvalue())


def _draw_numbers(rng: np.random.Generator, n: int) -> list[int]:
    pool = np.arange(1, max(99, 3 * n) + 1)
    return sorted(int(v) for v in rng.choice(pool, size=n, replace=False))


def _cell_names(rng: np.random.Generator, sid: str, n: int, cls: str, ext: str) -> list[str]:
    start = int(rng.integers(1, 40))
    return [f"UID_{sid}_{start + j // 3}_{j % 3 + 1}_{cls}.{ext}" for j in range(n)]


def _check_args(subjects_per_fold, n_folds, cells_per_subject, prelim_subjects, final_cells, fmt, size):
    def pair(name, v):
        try:
            a, h = (int(x) for x in v)
        except (TypeError, ValueError):
            raise DataError(f"{name}={v!r}: expected a pair (n_ALL, n_HEM) of non-negative integers") from None
        if a < 0 or h < 0:
            raise DataError(f"{name}={v!r}: expected non-negative counts")
        return a, h

    spf = pair("subjects_per_fold", subjects_per_fold)
    pre = pair("prelim_subjects", prelim_subjects)
    if int(n_folds) < 1:
        raise DataError(f"n_folds={n_folds!r}: expected at least 1")
    if int(cells_per_subject) < 1:
        raise DataError(f"cells_per_subject={cells_per_subject!r}: expected at least 1")
    if int(final_cells) < 0:
        raise DataError(f"final_cells={final_cells!r}: expected a non-negative integer")
    if fmt not in _FORMATS:
        raise DataError(f"fmt={fmt!r}: expected one of {', '.join(_FORMATS)}")
    if int(size) < 32:
        raise DataError(f"size={size!r}: expected an image side of at least 32 pixels (C-NMC uses 450)")
    return spf, pre


def make_synthetic_cnmc(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    subjects_per_fold: tuple[int, int] = (2, 1),
    n_folds: int = 3,
    cells_per_subject: int = 12,
    prelim_subjects: tuple[int, int] = (2, 2),
    final_cells: int = 6,
    fmt: str = "png",
    size: int = 450,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic C-NMC-shaped tree under ``root`` and return ``root / "C-NMC_Leukemia"``.

    Args:
        root: folder that will *contain* ``C-NMC_Leukemia`` (created if missing).
        seed: everything (subjects, names, pixels) is a deterministic function of the arguments.
        subjects_per_fold: ``(n_ALL, n_HEM)`` training subjects per fold.
        n_folds: number of ``fold_<k>`` folders.
        cells_per_subject: images per subject (training and prelim subjects).
        prelim_subjects: ``(n_ALL, n_HEM)`` subjects in the labelled preliminary test set.
        final_cells: images in the unlabelled final test set (from one ALL and one HEM subject, alternating).
        fmt: ``"png"`` (small files, the default) or ``"bmp"`` (like the real data, ~600 kB each at 450 px).
        size: image side in pixels (450 like C-NMC; smaller values make faster test fixtures).
        overwrite: replace an existing ``C-NMC_Leukemia`` folder. Without it an existing folder is
            returned untouched, whatever it contains.

    The tree is built in a hidden temporary sibling folder and renamed into place, so an interrupted
    run never leaves a half-written ``C-NMC_Leukemia``. With the defaults: 3 folds x (2 ALL + 1 HEM)
    subjects x 12 cells = 108 training images, 4 x 12 = 48 prelim images, 6 final images (162 in all).
    """
    spf, pre = _check_args(subjects_per_fold, n_folds, cells_per_subject, prelim_subjects, final_cells, fmt, size)
    n_folds, cells_per_subject, final_cells, size, seed = (
        int(n_folds),
        int(cells_per_subject),
        int(final_cells),
        int(size),
        int(seed),
    )
    root = Path(root)
    target = root / DATASET_DIRNAME
    if target.exists() and not overwrite:
        return target
    root.mkdir(parents=True, exist_ok=True)

    params = {
        "seed": seed,
        "subjects_per_fold": list(spf),
        "n_folds": n_folds,
        "cells_per_subject": cells_per_subject,
        "prelim_subjects": list(pre),
        "final_cells": final_cells,
        "fmt": fmt,
        "size": size,
    }

    tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET_DIRNAME}.tmp-", dir=root))
    try:
        info = _write_tree(tmp, params)
        _write_marker(tmp, params, info)
        if target.exists():  # overwrite=True: move the old tree aside, then swap
            trash = Path(tempfile.mkdtemp(prefix=f".{DATASET_DIRNAME}.old-", dir=root))
            os.replace(target, trash / DATASET_DIRNAME)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if target.is_dir():  # another process finished first: keep its (identical) tree
                    return target
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_tree(out: Path, params: dict) -> dict:
    seed, ext, size = params["seed"], params["fmt"], params["size"]
    n_folds, cps = params["n_folds"], params["cells_per_subject"]
    (a_pf, h_pf), (a_pre, h_pre) = params["subjects_per_fold"], params["prelim_subjects"]
    n_final = params["final_cells"]
    final_subjects = (1, 1) if n_final > 1 else (n_final, 0)

    layout_rng = np.random.default_rng([seed, 0, GENERATOR_VERSION])
    all_numbers = _draw_numbers(layout_rng, n_folds * a_pf + a_pre + final_subjects[0])
    hem_numbers = _draw_numbers(layout_rng, n_folds * h_pf + h_pre + final_subjects[1])
    layout_rng.shuffle(all_numbers)
    layout_rng.shuffle(hem_numbers)

    def take(numbers, n):
        chosen, numbers[:] = numbers[:n], numbers[n:]
        return chosen

    def cells(label: int, number: int, n: int):
        subject = make_subject(seed, label, number)
        cls = "all" if label == LABEL_ALL else "hem"
        names = _cell_names(np.random.default_rng([seed, 5, label, number]), subject.sid, n, cls, ext)
        for j, name in enumerate(names):
            rng = np.random.default_rng([seed, 2, label, number, j])
            yield name, render_cell(rng, subject, size)

    folds: dict[str, dict[str, list[str]]] = {}
    for k in range(n_folds):
        fold = out / "training_data" / f"fold_{k}"
        folds[f"fold_{k}"] = {"all": [], "hem": []}
        for label, cls, numbers, n in (
            (LABEL_ALL, "all", all_numbers, a_pf),
            (LABEL_HEM, "hem", hem_numbers, h_pf),
        ):
            d = fold / cls
            d.mkdir(parents=True, exist_ok=True)
            for number in take(numbers, n):
                sid = f"H{number}" if label == LABEL_HEM else str(number)
                folds[f"fold_{k}"][cls].append(sid)
                for name, arr in cells(label, number, cps):
                    _save(arr, d / name, ext)

    def numbered(specs, folder: Path, order_rng):
        """Render the cells of ``specs`` [(label, number, n)], shuffle and save them as 1.ext, 2.ext, ..."""
        items = [(label, name, arr) for label, number, n in specs for name, arr in cells(label, number, n)]
        order = order_rng.permutation(len(items))
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for new_index, i in enumerate(order, start=1):
            label, name, arr = items[i]
            new_name = f"{new_index}.{ext}"
            _save(arr, folder / new_name, ext)
            rows.append((name, new_name, label))
        return rows

    val = out / "validation_data"
    pre_specs = [(LABEL_ALL, n, cps) for n in take(all_numbers, a_pre)]
    pre_specs += [(LABEL_HEM, n, cps) for n in take(hem_numbers, h_pre)]
    rows = numbered(pre_specs, val / "C-NMC_test_prelim_phase_data", np.random.default_rng([seed, 3]))
    with open(val / "C-NMC_test_prelim_phase_data_labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["Patient_ID", "new_names", "labels"])
        writer.writerows(rows)

    fin_all = take(all_numbers, final_subjects[0])
    fin_hem = take(hem_numbers, final_subjects[1])
    n_fin_all = (n_final + 1) // 2 if fin_hem else n_final
    fin_specs = [(LABEL_ALL, n, n_fin_all) for n in fin_all] + [(LABEL_HEM, n, n_final - n_fin_all) for n in fin_hem]
    final_dir = out / "testing_data" / "C-NMC_test_final_phase_data"
    final_rows = numbered(fin_specs, final_dir, np.random.default_rng([seed, 4]))
    final_dir.mkdir(parents=True, exist_ok=True)

    def sid(label, number):
        return f"H{number}" if label == LABEL_HEM else str(number)

    return {
        "folds": folds,
        "prelim_subjects": [sid(label, n) for label, n, _ in pre_specs],
        "final_subjects": [sid(label, n) for label, n, _ in fin_specs],
        "final_phase_labels": {new: label for _, new, label in final_rows},
    }


def _write_marker(out: Path, params: dict, info: dict) -> None:
    payload = {
        "generator": "allkit.study.synthetic.make_synthetic_cnmc",
        "generator_version": GENERATOR_VERSION,
        "params": params,
        **info,
    }
    text = (
        f"<!-- {_SENTINEL} -->\n"
        "# SYNTHETIC data: not C-NMC 2019, not patient data\n\n"
        "Every image in this folder was drawn by `allkit.study.synthetic.make_synthetic_cnmc` from a\n"
        "seeded random model of stained lymphocytes. The folder only mimics the layout and file names of\n"
        "the C-NMC 2019 Kaggle mirror so that allkit can run offline. Numbers computed on it say nothing\n"
        "about leukemia diagnosis. `final_phase_labels` below are the generator's truth for the otherwise\n"
        "unlabelled final-phase images.\n\n"
        "```json\n" + json.dumps(payload, indent=2, sort_keys=True) + "\n```\n"
    )
    (out / MARKER_NAME).write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Lookup helpers
# --------------------------------------------------------------------------------------------------


def _marker_for(path: str | os.PathLike) -> Path | None:
    p = Path(path).expanduser().absolute()
    if p.is_file():
        p = p.parent
    candidates = [p / DATASET_DIRNAME / MARKER_NAME]
    chain = [p, *p.parents]
    top = next((i for i, q in enumerate(chain) if q.name == DATASET_DIRNAME), None)
    candidates += [q / MARKER_NAME for q in (chain[: top + 1] if top is not None else chain[:1])]
    for marker in candidates:
        try:
            if marker.is_file() and _SENTINEL in marker.read_text(encoding="utf-8", errors="replace")[:200]:
                return marker
        except OSError:
            continue
    return None


def is_synthetic(path: str | os.PathLike) -> bool:
    """True if ``path`` is (inside) a synthetic C-NMC tree written by :func:`make_synthetic_cnmc`.

    ``path`` may be the folder containing ``C-NMC_Leukemia``, ``C-NMC_Leukemia`` itself, or any file or
    folder below it: the ``SYNTHETIC.md`` marker is looked for in ``path`` and its parents up to (and
    including) the nearest ``C-NMC_Leukemia`` folder.
    """
    return _marker_for(path) is not None


def synthetic_info(path: str | os.PathLike) -> dict | None:
    """The generator version, parameters and subject lists stored in the marker, or None if not synthetic."""
    marker = _marker_for(path)
    if marker is None:
        return None
    text = marker.read_text(encoding="utf-8")
    try:
        block = text.split("```json\n", 1)[1].split("\n```", 1)[0]
        return json.loads(block)
    except (IndexError, json.JSONDecodeError) as exc:
        raise DataError(f"{marker}: synthetic marker without a readable ```json block ({exc})") from None


def default_synthetic_root() -> Path:
    """The embedded default: the folder that CONTAINS ``C-NMC_Leukemia``, generated on first call.

    Location: ``$ALLKIT_CACHE/synthetic-v<GENERATOR_VERSION>`` if ``ALLKIT_CACHE`` is set, else
    the platform cache folder (``~/.cache/allkit/...`` on Linux). The data set is
    ``default_synthetic_root() / "C-NMC_Leukemia"``, made by :func:`make_synthetic_cnmc` with its defaults.
    Concurrent first calls are safe (atomic rename; the loser keeps the winner's identical tree).
    """
    root = cache_dir() / f"synthetic-v{GENERATOR_VERSION}"
    make_synthetic_cnmc(root)
    return root
