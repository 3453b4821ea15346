"""Train / validation / test splits by subject, with a leakage guard.

All cells of a C-NMC subject share one class, one staining batch and one microscope session: split by
image, near-copies of a person's test cells sit in training and every score is inflated. Every split
here is checked, and a subject in two parts raises :class:`SubjectLeakageError`, unless the caller
asked for the authors' by-image split on purpose (``leaky=True``). Fractions are fractions of
*subjects*, drawn per class, so that every part holds both classes.
"""

from dataclasses import dataclass
from itertools import combinations

import pandas as pd
from sklearn.model_selection import train_test_split

from allkit.constants import SEED
from allkit.data.records import summarize
from allkit.errors import DataError, SubjectLeakageError


@dataclass
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    protocol: str  # subject | paper | image | paper-by-image
    seed: int
    leaky: bool = False

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def frame(self) -> pd.DataFrame:
        """All parts in one frame; the ``split`` column names each cell's part."""
        return pd.concat([p.assign(split=name) for name, p in self.parts().items()], ignore_index=True)

    def summary(self) -> pd.DataFrame:
        return summarize(self.frame)


def check_leakage(parts: dict[str, pd.DataFrame], sha1: dict[str, str] | None = None) -> None:
    """Raise :class:`SubjectLeakageError` if a subject has cells in two of ``parts``, or, given ``sha1``
    (path → hash of the file, :attr:`allkit.data.CellCache.sha1`), if one file's bytes are in two parts
    under different names (a cell copied to another subject)."""
    for (name_a, a), (name_b, b) in combinations(parts.items(), 2):
        shared = set(a["subject"]) & set(b["subject"])
        if shared:
            raise SubjectLeakageError(shared, (name_a, name_b))
        if sha1 is not None:
            copies = set(a["path"].map(sha1)) & set(b["path"].map(sha1))
            if copies:
                first = [p for p in pd.concat([a["path"], b["path"]]) if sha1[p] in copies][:2]
                raise DataError(
                    f"{len(copies)} identical image file(s) are in both {name_a!r} and {name_b!r} "
                    f"under different subjects, e.g. {' and '.join(first)}; remove the copies"
                )


def _subjects(frame: pd.DataFrame) -> pd.Series:
    unknown = frame["subject"].astype(str).str.startswith("?")
    if unknown.any():
        raise DataError(
            f"{int(unknown.sum())} cell(s) have no subject id (names without the UID pattern), so "
            "a split by subject cannot be made; use split_by_image(..., leaky=True) knowingly"
        )
    classes = frame.groupby("subject")["label"].agg(["first", "nunique"])
    if (classes["nunique"] > 1).any():
        raise DataError(
            f"subject(s) {classes.index[classes['nunique'] > 1].tolist()} have cells of both "
            "classes; expected one class per subject"
        )
    return classes["first"]


def partition_subjects(frame: pd.DataFrame, fractions: dict[str, float], seed: int = SEED) -> dict[str, set]:
    """Subjects per part: each of ``fractions`` (part → fraction of every class's subjects, at least one
    subject when positive) is drawn in turn; the subjects left over form ``train``."""
    parts: dict[str, set] = {name: set() for name in [*fractions, "train"]}
    labels = _subjects(frame)
    for label, group in labels.groupby(labels):
        remaining = sorted(group.index)
        wanted = {name: max(1, round(f * len(remaining))) if f > 0 else 0 for name, f in fractions.items()}
        if sum(wanted.values()) >= len(remaining):
            raise DataError(
                f"class {'ALL' if label == 1 else 'HEM'} has {len(remaining)} subject(s): too few "
                f"for {wanted} and one left for training; lower the fractions or add subjects"
            )
        for name, n in wanted.items():
            if n:
                remaining, taken = train_test_split(remaining, test_size=n, random_state=seed, shuffle=True)
                parts[name].update(taken)
        parts["train"].update(remaining)
    return parts


def _take(frame: pd.DataFrame, subjects: set) -> pd.DataFrame:
    return frame[frame["subject"].isin(subjects)].reset_index(drop=True)


def split_by_subject(frame: pd.DataFrame, *, val_size: float = 0.2, test_size: float = 0.2, seed: int = SEED) -> Split:
    """Train / val / test with no subject in two parts, on whatever labelled cells are present."""
    subjects = partition_subjects(frame, {"test": test_size, "val": val_size}, seed)
    parts = {name: _take(frame, subjects[name]) for name in ("train", "val", "test")}
    check_leakage(parts)
    return Split(**parts, protocol="subject", seed=seed)


def split_paper(frame: pd.DataFrame, *, seed: int = SEED) -> Split:
    """The paper's protocol: train on ``training_data``; the preliminary test set halved, by subject,
    into validation and test."""
    train = frame[frame["fold"] != "prelim"].reset_index(drop=True)
    prelim = frame[frame["fold"] == "prelim"].reset_index(drop=True)
    if prelim.empty:
        raise DataError(
            "the paper's protocol needs the preliminary test set (validation_data/ with its "
            "labels CSV), which is not here; split what is present with split_by_subject"
        )
    halves = partition_subjects(prelim, {"test": 0.5}, seed)
    parts = {"train": train, "val": _take(prelim, halves["train"]), "test": _take(prelim, halves["test"])}
    check_leakage(parts)
    return Split(**parts, protocol="paper", seed=seed)


def split_by_image(
    frame: pd.DataFrame, *, val_size: float = 0.2, test_size: float = 0.2, seed: int = SEED, leaky: bool = False
) -> Split:
    """The authors' split: cells drawn at random, so one person's cells land in several parts. Only to
    measure how much that inflates scores, hence ``leaky=True`` must be passed."""
    if not leaky:
        raise DataError(
            "a by-image split puts cells of one person in train and test; pass leaky=True "
            "to make it knowingly (e.g. to measure how much it inflates the scores)"
        )
    rest, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=frame["label"])
    train, val = (
        (rest, rest.iloc[:0])
        if val_size == 0
        else train_test_split(rest, test_size=val_size / (1 - test_size), random_state=seed, stratify=rest["label"])
    )
    parts = {k: v.reset_index(drop=True) for k, v in (("train", train), ("val", val), ("test", test))}
    return Split(**parts, protocol="image", seed=seed, leaky=True)
