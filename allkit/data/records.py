"""C-NMC 2019 on disk → one record per cell: path, label, class name, subject, fold, split.

Accepted roots (the Kaggle mirror's layout, or any level of it): a folder holding ``C-NMC_Leukemia/``
(also a few levels down, as kagglehub leaves it), ``C-NMC_Leukemia/`` itself, ``training_data/``, one
``fold_N/``, or any folder with ``all/`` and ``hem/`` sub-folders. File names carry the subject:
``UID_<subject>_<image>_<cell>_<all|hem>.bmp``; the preliminary test set lists it in a CSV.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from allkit.constants import CLASS_NAMES, CLASS_TO_LABEL, EXPECTED_COUNTS
from allkit.errors import DataError

COLUMNS = ["path", "label", "class_name", "subject", "fold", "split"]
CELL_NAME = re.compile(r"^UID_(?P<subject>[^_]+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)$", re.IGNORECASE)
PRELIM_DIR, PRELIM_CSV = "C-NMC_test_prelim_phase_data", "C-NMC_test_prelim_phase_data_labels.csv"
PRELIM_COLUMNS = ("Patient_ID", "new_names", "labels")
FINAL_DIR = "C-NMC_test_final_phase_data"
# The synthetic stand-in (allkit.study.synthetic) marks its trees so that nothing mistakes them for cells.
SYNTHETIC_MARKER, SYNTHETIC_SENTINEL = "SYNTHETIC.md", "allkit-synthetic-cnmc"
_STRAY = {"thumbs.db", "desktop.ini", ".ds_store"}  # what operating systems scatter into image folders


@dataclass
class CNMC:
    """The labelled cells under a root (``frame``), the unlabelled final-test cells, and what was noticed."""

    root: Path
    layout: str  # full | training | fold | classes
    frame: pd.DataFrame
    unlabelled: list[str] = field(default_factory=list)
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    uncounted: list[str] = field(default_factory=list)  # image files under the root that are no record

    def summary(self) -> pd.DataFrame:
        return summarize(self.frame)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Images and subjects per split, fold and class."""
    grouped = frame.groupby(["split", "fold", "class_name"], sort=True)
    return grouped.agg(images=("path", "size"), subjects=("subject", "nunique")).reset_index()


def parse_cell_name(name: str) -> dict | None:
    """``UID_<subject>_<image>_<cell>_<all|hem>[.ext]`` → its parts (``h3`` and ``H3`` are one subject)."""
    match = CELL_NAME.match(Path(name).stem if "." in name else name)
    if match is None:
        return None
    subject = match["subject"].upper() if match["subject"][:1] in "hH" else match["subject"]
    return {
        "subject": subject,
        "image": int(match["image"]),
        "cell": int(match["cell"]),
        "class_name": match["cls"].upper(),
    }


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None


def _layout(folder: Path) -> str | None:
    names = {p.name.lower() for p in _subdirs(folder)}
    if names & {"training_data", "validation_data", "testing_data"}:
        return "full"
    if any(n.startswith("fold_") for n in names):
        return "training"
    if names & {"all", "hem"}:
        return "fold" if folder.name.startswith("fold_") else "classes"
    return None


def find_cnmc_root(root, max_depth: int = 4) -> tuple[Path, str]:
    """``(folder, layout)`` of the C-NMC data at or below ``root`` (breadth first, ``max_depth`` levels)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        state = "is a file" if root.exists() else "does not exist"
        raise DataError(f"data folder {str(root)!r} {state}; expected a folder holding C-NMC_Leukemia/")
    frontier = [root]
    for _ in range(max_depth + 1):
        for folder in frontier:
            layout = _layout(folder)
            if layout:
                return folder, layout
        frontier = [sub for folder in frontier for sub in _subdirs(folder)]
    raise DataError(
        f"no C-NMC images under {str(root)!r}: expected C-NMC_Leukemia/training_data/fold_N/"
        "{all,hem}/ (the Kaggle layout), a fold folder, or a folder with all/ and hem/"
    )


def _is_image(path: Path) -> bool:
    extensions = {e for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return path.suffix.lower() in extensions and not path.name.startswith(".") and path.name.lower() not in _STRAY


def _uncounted(cnmc: Path, counted: set[str]) -> list[str]:
    """Image files under ``cnmc`` that are no record: deeper than a class folder, beside the folds, in a folder
    that is no class, or a preliminary image its labels CSV does not list."""
    return sorted(
        str(p)
        for p in cnmc.rglob("*")
        if _is_image(p) and str(p) not in counted and p.is_file() and not any(s.startswith(".") for s in p.parts)
    )


def _images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _is_image(p) and p.is_file())
    except OSError as err:
        raise DataError(f"cannot list {folder}: {err.strerror or err}") from None


def _class_folders(folder: Path, fold: str, allow_unknown_subjects: bool) -> list[dict]:
    rows = []
    for sub in _subdirs(folder):
        if sub.name.lower() not in ("all", "hem"):
            continue
        class_name = sub.name.upper()
        for path in _images(sub):
            parsed = parse_cell_name(path.name)
            if parsed is None and not allow_unknown_subjects:
                raise DataError(
                    f"{path}: the name does not follow UID_<subject>_<image>_<cell>_<all|hem>, so "
                    "its subject is unknown and splits cannot be checked for leakage; rename it, "
                    "or pass allow_unknown_subjects=True (--allow-unknown-subjects) to make each "
                    "such image its own subject"
                )
            if parsed is not None and parsed["class_name"] != class_name:
                raise DataError(
                    f"{path}: the name says {parsed['class_name']} but the file lies in "
                    f"{sub.name}/; expected the two to agree"
                )
            subject = parsed["subject"] if parsed else f"?{path.stem}"
            rows.append({"path": path, "class_name": class_name, "subject": subject, "fold": fold, "split": "train"})
    return rows


def _prelim(cnmc: Path) -> list[dict]:
    csv, images = cnmc / "validation_data" / PRELIM_CSV, cnmc / "validation_data" / PRELIM_DIR
    if not csv.exists():
        if images.is_dir() and _images(images):
            raise DataError(f"{images} holds images but its labels file {csv} is missing")
        return []
    try:
        table = pd.read_csv(csv, dtype=str, skipinitialspace=True)
    except Exception as err:  # pandas raises many kinds of errors for files that are not CSV
        raise DataError(f"{csv}: not readable as CSV ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in PRELIM_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(
            f"{csv}: columns {missing} missing (it has {list(table.columns)}); expected "
            f"{','.join(PRELIM_COLUMNS)} separated by commas"
        )
    if table.empty and _images(images):
        raise DataError(f"{csv} lists no cells but {images} holds images; expected one row per image")
    rows, seen = [], {}
    for line, (patient, name, label) in enumerate(table[list(PRELIM_COLUMNS)].itertuples(index=False), 2):
        patient, name, label = (str(v).strip() for v in (patient, name, label))
        parsed = parse_cell_name(patient)
        if label not in ("0", "1"):
            raise DataError(f"{csv} line {line}: label {label!r}; expected 0 (HEM) or 1 (ALL)")
        if parsed is None or CLASS_TO_LABEL[parsed["class_name"]] != int(label):
            raise DataError(
                f"{csv} line {line}: Patient_ID {patient!r} does not follow "
                f"UID_<subject>_<image>_<cell>_<all|hem> with the class of label {label}"
            )
        if Path(name).name != name or name in ("", ".", ".."):
            raise DataError(f"{csv} line {line}: new_names {name!r} is not a file name in {images}; refused")
        if name in seen:
            raise DataError(f"{csv} lines {seen[name]} and {line} both list {name!r}; expected each image once")
        seen[name] = line
        path = images / name
        if not path.is_file():
            raise DataError(f"{csv} line {line}: the listed image {path} does not exist")
        rows.append(
            {
                "path": path,
                "class_name": CLASS_NAMES[int(label)],
                "subject": parsed["subject"],
                "fold": "prelim",
                "split": "prelim",
            }
        )
    return rows


def _is_synthetic(folder: Path) -> bool:
    for parent in [folder, *folder.parents][:4]:
        marker = parent / SYNTHETIC_MARKER
        if marker.is_file() and SYNTHETIC_SENTINEL in marker.read_text(errors="replace")[:200]:
            return True
    return False


def load_cnmc(root, *, allow_unknown_subjects: bool = False, include_prelim: bool = True) -> CNMC:
    """Every cell under ``root`` as one record (``CNMC.frame``, columns :data:`COLUMNS`).

    Checked here, each failure a :class:`DataError` naming the file: every name carries a subject of the
    class of its folder, no image is listed twice, no subject has cells of both classes, both classes are
    present. Pixels are decoded (and unreadable images reported) when the cache is built."""
    cnmc, layout = find_cnmc_root(root)
    rows, unlabelled, skipped = [], [], set()
    if layout == "full":
        training = cnmc / "training_data"
        for fold in _subdirs(training) if training.is_dir() else []:
            rows += _class_folders(fold, fold.name, allow_unknown_subjects)
        rows += _prelim(cnmc) if include_prelim else []
        prelim_dir = cnmc / "validation_data" / PRELIM_DIR
        skipped = set() if include_prelim or not prelim_dir.is_dir() else {str(p) for p in _images(prelim_dir)}
        final = cnmc / "testing_data" / FINAL_DIR
        unlabelled = [str(p) for p in _images(final)] if final.is_dir() else []
    elif layout == "training":
        for fold in (f for f in _subdirs(cnmc) if f.name.startswith("fold_")):
            rows += _class_folders(fold, fold.name, allow_unknown_subjects)
    else:
        rows += _class_folders(cnmc, cnmc.name if layout == "fold" else "-", allow_unknown_subjects)
    if not rows:
        raise DataError(f"no images in {cnmc} (layout {layout!r}); expected image files in all/ and hem/")
    uncounted = _uncounted(cnmc, {str(r["path"]) for r in rows} | set(unlabelled) | skipped)
    frame = pd.DataFrame(rows)
    frame["path"] = frame["path"].map(str)
    frame["label"] = frame["class_name"].map(CLASS_TO_LABEL).astype("int64")
    frame = frame[COLUMNS]
    _check(frame, cnmc)
    data = CNMC(cnmc, layout, frame, unlabelled, _is_synthetic(cnmc), uncounted=uncounted)
    if not data.synthetic:
        data.notes = compare_with_release(data)
    if uncounted:
        data.notes.append(
            f"{len(uncounted)} image(s) under {cnmc} are not counted (not directly in a fold's all/ or hem/, or "
            f"not listed in the preliminary labels CSV), e.g. {uncounted[0]}"
        )
    return data


def _check(frame: pd.DataFrame, cnmc: Path) -> None:
    stems = frame["path"].map(lambda p: Path(p).stem.lower())
    twice = frame[stems.duplicated(keep=False) & frame["fold"].ne("prelim")]
    if len(twice):
        first = twice[stems[twice.index] == stems[twice.index[0]]]["path"]
        raise DataError(
            f"the cell {Path(first.iloc[0]).stem} is stored twice: {' and '.join(first.head(2))}; expected each "
            "image in one fold only (a copy of a fold beside it?)"
        )
    classes = frame.groupby("subject")["label"].nunique()
    if (classes > 1).any():
        raise DataError(
            f"subject(s) {sorted(classes[classes > 1].index)} have cells in both all/ and hem/; "
            "expected one class per subject"
        )
    if frame["label"].nunique() < 2:
        raise DataError(f"only {frame['class_name'].iloc[0]} cells under {cnmc}; expected ALL and HEM cells")


def compare_with_release(data: CNMC) -> list[str]:
    """Differences from the public release's counts (a partial or damaged download), as sentences."""
    frame, notes = data.frame, []
    folds = frame.loc[frame["fold"].str.startswith("fold_"), "fold"].value_counts()
    for fold, n in sorted(folds.items()):
        if EXPECTED_COUNTS.get(fold, n) != n:
            notes.append(f"{fold} has {n} images; the public release has {EXPECTED_COUNTS[fold]}")
    if data.layout in ("full", "training"):
        missing = [f for f in ("fold_0", "fold_1", "fold_2") if f not in folds]
        notes += [f"partial training set: {', '.join(missing)} not present"] if missing else []
    n_prelim = int((frame["fold"] == "prelim").sum())
    if n_prelim and n_prelim != EXPECTED_COUNTS["prelim"]:
        notes.append(f"the preliminary test set has {n_prelim} images; the release has {EXPECTED_COUNTS['prelim']}")
    if data.unlabelled and len(data.unlabelled) != EXPECTED_COUNTS["final"]:  # like the prelim set: when present
        notes.append(
            f"the final test set has {len(data.unlabelled)} images; the release has {EXPECTED_COUNTS['final']}"
        )
    return notes
