"""Find C-NMC 2019 on disk and turn it into one record per cell.

Accepted roots (the public Kaggle mirror's layout, or any part of it):

- a folder holding ``C-NMC_Leukemia/`` (also nested a few levels down, as kagglehub leaves it);
- ``C-NMC_Leukemia/`` itself (``training_data/``, ``validation_data/``, ``testing_data/``);
- ``training_data/`` (``fold_0/ fold_1/ fold_2/``);
- a fold, or any folder with ``all/`` and ``hem/`` sub-folders.

Labels follow :mod:`allkit.constants`: ALL = 1, HEM = 0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from allkit.constants import CLASS_NAMES, CLASS_TO_LABEL, EXPECTED_COUNTS
from allkit.errors import DataError

UID_PATTERN = re.compile(r"^UID_(?P<subject>[^_]+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)$", re.IGNORECASE)
PRELIM_DIR = "C-NMC_test_prelim_phase_data"
PRELIM_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
PRELIM_COLUMNS = ("Patient_ID", "new_names", "labels")
FINAL_DIR = "C-NMC_test_final_phase_data"
# Files operating systems and archive tools scatter into image folders.
STRAY_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
COLUMNS = ["path", "label", "class_name", "subject", "fold", "split"]


class IncompleteDataWarning(UserWarning):
    """The data found does not have the counts of the public C-NMC 2019 release."""


@dataclass
class BadFile:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class CNMC:
    """What was found under a root: labelled cells, unlabelled (final-test) cells and problems."""

    root: Path
    layout: str
    frame: pd.DataFrame
    unlabelled: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))
    bad_files: list[BadFile] = field(default_factory=list)
    synthetic: bool = False
    subjects_known: bool = True
    notes: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        return summarize(self.frame)


def image_extensions() -> set[str]:
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def is_image_file(path: Path, extensions: set[str] | None = None) -> bool:
    if path.name.startswith(".") or path.name.lower() in STRAY_NAMES or not path.is_file():
        return False
    return path.suffix.lower() in (extensions or image_extensions())


def normalize_subject(subject: str) -> str:
    """``h3`` and ``H3`` are the same healthy subject; numeric ALL subjects stay as written."""
    return subject.upper() if subject[:1] in "hH" else subject


def parse_cell_name(name: str) -> dict | None:
    """Parse ``UID_<subject>_<image>_<cell>_<all|hem>[.ext]``; ``None`` if it does not match."""
    match = UID_PATTERN.match(Path(name).stem if "." in name else name)
    if not match:
        return None
    return {
        "subject": normalize_subject(match["subject"]),
        "image": int(match["image"]),
        "cell": int(match["cell"]),
        "class_name": match["cls"].upper(),
    }


def find_cnmc_root(root: Path, max_depth: int = 4) -> tuple[Path, str]:
    """Return ``(folder, layout)`` where layout is ``full``, ``training``, ``fold`` or ``classes``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data root {str(root)!r} does not exist; expected a C-NMC 2019 folder (see data/README.md)")
    if not root.is_dir():
        raise DataError(f"data root {str(root)!r} is a file; expected a folder holding C-NMC_Leukemia/")

    def layout_of(folder: Path) -> str | None:
        if any((folder / d).is_dir() for d in ("training_data", "validation_data", "testing_data")):
            return "full"
        if any(p.is_dir() and p.name.startswith("fold_") for p in folder.iterdir()):
            return "training"
        if (folder / "all").is_dir() or (folder / "hem").is_dir():
            return "fold" if folder.name.startswith("fold_") else "classes"
        return None

    frontier = [root]
    for _ in range(max_depth + 1):
        for folder in frontier:
            if folder.name == "C-NMC_Leukemia" or layout_of(folder):
                found = layout_of(folder)
                if found:
                    return folder, found
        frontier = sorted(p for f in frontier for p in f.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise DataError(
        f"no C-NMC images found under {str(root)!r}: expected C-NMC_Leukemia/training_data/fold_N/{{all,hem}}/ "
        "(the Kaggle layout), a fold folder, or a folder with all/ and hem/ sub-folders"
    )


def _class_folder_records(folder: Path, fold: str, split: str, extensions: set[str]) -> Iterable[dict]:
    for class_dir in ("all", "hem"):
        directory = folder / class_dir
        if not directory.is_dir():
            # Case-insensitive file systems and hand-made copies: accept ALL/ and HEM/ too.
            candidates = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() == class_dir]
            if not candidates:
                continue
            directory = candidates[0]
        class_name = class_dir.upper()
        for path in sorted(directory.iterdir()):
            if not is_image_file(path, extensions):
                continue
            yield {"path": path, "class_name": class_name, "fold": fold, "split": split}


def _attach_subjects(rows: list[dict], allow_unknown_subjects: bool) -> tuple[list[dict], bool]:
    unknown = []
    for row in rows:
        parsed = parse_cell_name(row["path"].name)
        if parsed is None:
            unknown.append(row["path"])
            row["subject"] = f"?{row['path'].stem}"
            continue
        if parsed["class_name"] != row["class_name"]:
            raise DataError(
                f"{row['path']}: the file name says {parsed['class_name']} but it lies in the "
                f"{row['class_name'].lower()}/ folder; expected the name's class to match its folder"
            )
        row["subject"] = parsed["subject"]
    if unknown and not allow_unknown_subjects:
        shown = ", ".join(str(p) for p in unknown[:3])
        raise DataError(
            f"{len(unknown)} file name(s) do not follow UID_<subject>_<image>_<cell>_<all|hem> (e.g. {shown}); "
            "without the subject, splits cannot be checked for subject leakage. Rename the files, or pass "
            "allow_unknown_subjects=True (--allow-unknown-subjects) to treat each such image as its own subject"
        )
    return rows, not unknown


def _read_prelim(cnmc: Path, extensions: set[str]) -> list[dict]:
    csv = cnmc / "validation_data" / PRELIM_CSV
    images = cnmc / "validation_data" / PRELIM_DIR
    if not csv.exists():
        if images.is_dir() and any(is_image_file(p, extensions) for p in images.iterdir()):
            raise DataError(f"{images} holds images but its labels file {csv} is missing")
        return []
    try:
        table = pd.read_csv(csv, dtype=str)
    except Exception as exc:  # pandas raises many types for unreadable CSVs
        raise DataError(f"{csv}: cannot be read as CSV ({exc})") from None
    missing = [c for c in PRELIM_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {missing}; expected columns {list(PRELIM_COLUMNS)}")
    rows = []
    for line, rec in enumerate(table.itertuples(index=False), start=2):
        label_text = str(rec.labels).strip()
        if label_text not in {"0", "1"}:
            raise DataError(f"{csv} line {line}: label {rec.labels!r} is not 0 (HEM) or 1 (ALL)")
        label = int(label_text)
        path = images / str(rec.new_names).strip()
        if not path.is_file():
            raise DataError(f"{csv} line {line}: listed image {path} does not exist")
        parsed = parse_cell_name(str(rec.Patient_ID).strip())
        if parsed is None:
            raise DataError(
                f"{csv} line {line}: Patient_ID {rec.Patient_ID!r} does not follow "
                "UID_<subject>_<image>_<cell>_<all|hem>; the subject cannot be known"
            )
        if CLASS_TO_LABEL[parsed["class_name"]] != label:
            raise DataError(f"{csv} line {line}: Patient_ID {rec.Patient_ID!r} disagrees with label {label}")
        rows.append({"path": path, "class_name": CLASS_NAMES[label], "fold": "prelim", "split": "prelim",
                     "subject": parsed["subject"]})
    return rows


def _check_duplicates(rows: list[dict]) -> None:
    seen: dict[str, Path] = {}
    for row in rows:
        key = row["path"].stem.lower()
        if key in seen and seen[key] != row["path"]:
            raise DataError(
                f"the same cell appears twice: {seen[key]} and {row['path']}; expected each image in one fold only"
            )
        seen[key] = row["path"]


def _check_subject_classes(frame: pd.DataFrame) -> None:
    classes = frame.groupby("subject")["class_name"].nunique()
    mixed = sorted(classes[classes > 1].index)
    if mixed:
        raise DataError(f"subject(s) {mixed} have cells in both all/ and hem/; expected one class per subject")


def _header_check(rows: list[dict]) -> tuple[list[dict], list[BadFile]]:
    good, bad = [], []
    for row in rows:
        try:
            if row["path"].stat().st_size == 0:
                raise OSError("empty file (0 bytes)")
            with Image.open(row["path"]) as im:
                im.size  # noqa: B018  (opening parses the header; that is the check)
        except Exception as exc:
            bad.append(BadFile(str(row["path"]), f"not a readable image: {exc}"))
            continue
        good.append(row)
    return good, bad


def to_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS[:1] + ["class_name", "subject", "fold", "split"])
    frame["path"] = frame["path"].map(str)
    frame.insert(1, "label", frame["class_name"].map(CLASS_TO_LABEL).astype("int64"))
    return frame[COLUMNS].reset_index(drop=True)


def load_cnmc(
    root: str | Path,
    *,
    on_error: str = "raise",
    allow_unknown_subjects: bool = False,
    include_prelim: bool = True,
) -> CNMC:
    """Discover C-NMC cells under ``root`` and return one record per cell.

    ``on_error="raise"`` stops at the first unreadable image naming it; ``"skip"`` leaves it out and
    lists it in ``bad_files``. Only headers are read here; :func:`allkit.data.cache.build_cache` decodes
    every pixel and applies the same policy to files that are truncated past their header.
    """
    if on_error not in {"raise", "skip"}:
        raise ValueError(f"on_error={on_error!r}; expected 'raise' or 'skip'")
    from allkit.data.synthetic import is_synthetic

    cnmc, layout = find_cnmc_root(Path(root))
    extensions = image_extensions()
    rows: list[dict] = []
    unlabelled: list[dict] = []
    if layout == "full":
        training = cnmc / "training_data"
        folds = sorted(p for p in training.iterdir() if p.is_dir()) if training.is_dir() else []
        for fold in folds:
            rows += _class_folder_records(fold, fold.name, "train", extensions)
        if include_prelim:
            rows += _read_prelim(cnmc, extensions)
        final = cnmc / "testing_data" / FINAL_DIR
        if final.is_dir():
            unlabelled = [
                {"path": p, "class_name": None, "fold": "final", "split": "final", "subject": None}
                for p in sorted(final.iterdir()) if is_image_file(p, extensions)
            ]
    elif layout == "training":
        for fold in sorted(p for p in cnmc.iterdir() if p.is_dir() and p.name.startswith("fold_")):
            rows += _class_folder_records(fold, fold.name, "train", extensions)
    else:
        rows += _class_folder_records(cnmc, cnmc.name if layout == "fold" else "-", "train", extensions)

    if not rows:
        raise DataError(f"no images found in {cnmc} (layout {layout!r}); expected .bmp/.png files in all/ and hem/")
    training_rows = [r for r in rows if r["fold"] != "prelim"]
    training_rows, subjects_known = _attach_subjects(training_rows, allow_unknown_subjects)
    rows = training_rows + [r for r in rows if r["fold"] == "prelim"]
    _check_duplicates(rows)
    rows, bad = _header_check(rows)
    if bad and on_error == "raise":
        raise DataError(f"{bad[0].path}: {bad[0].reason}. Pass on_error='skip' (--on-error skip) to leave it out")
    frame = to_frame(rows)
    _check_subject_classes(frame)
    present = set(frame["class_name"])
    if present != set(CLASS_NAMES):
        only = ", ".join(sorted(present)) or "none"
        raise DataError(f"only one class present under {cnmc} ({only}); expected both ALL (all/) and HEM (hem/) cells")

    synthetic = is_synthetic(cnmc)
    result = CNMC(root=cnmc, layout=layout, frame=frame, bad_files=bad, synthetic=synthetic,
                  subjects_known=subjects_known)
    if unlabelled:
        unl = pd.DataFrame(unlabelled)
        unl["path"] = unl["path"].map(str)
        unl.insert(1, "label", -1)
        result.unlabelled = unl[COLUMNS]
    if not synthetic:
        result.notes = check_expected_counts(result)
    return result


def check_expected_counts(data: CNMC) -> list[str]:
    """Compare with the public release's counts; warn on a mismatch, note a partial download."""
    frame = data.frame
    notes, problems = [], []
    folds = frame.loc[frame["fold"].str.startswith("fold_"), "fold"].value_counts()
    for fold, n in folds.items():
        expected = EXPECTED_COUNTS.get(fold)
        if expected is not None and n != expected:
            problems.append(f"{fold} has {n} images, the public release has {expected}")
    missing = [f for f in ("fold_0", "fold_1", "fold_2") if f not in folds.index]
    if data.layout in {"full", "training"} and missing:
        notes.append(f"partial training set: {', '.join(missing)} not present")
    if data.layout in {"full", "training"} and not missing:
        train = frame[frame["split"] == "train"]
        for key, n in (("training", len(train)), ("training_ALL", int((train["label"] == 1).sum())),
                       ("training_HEM", int((train["label"] == 0).sum()))):
            if n != EXPECTED_COUNTS[key]:
                problems.append(f"{key.replace('_', ' ')} has {n} images, the public release has {EXPECTED_COUNTS[key]}")
    n_prelim = int((frame["fold"] == "prelim").sum())
    if n_prelim and n_prelim != EXPECTED_COUNTS["prelim"]:
        problems.append(f"prelim test set has {n_prelim} images, the public release has {EXPECTED_COUNTS['prelim']}")
    if len(data.unlabelled) and len(data.unlabelled) != EXPECTED_COUNTS["final"]:
        problems.append(f"final test set has {len(data.unlabelled)} images, the public release has {EXPECTED_COUNTS['final']}")
    for problem in problems:
        warnings.warn(f"{data.root}: {problem} (incomplete or modified download?)", IncompleteDataWarning, stacklevel=3)
    return notes + problems


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Images and subjects per split, fold and class."""
    grouped = frame.groupby(["split", "fold", "class_name"], sort=True)
    table = grouped.agg(images=("path", "size"), subjects=("subject", "nunique")).reset_index()
    return table
