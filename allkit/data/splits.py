"""Train / validation / test splits, by subject, with a leakage guard.

A C-NMC subject's cells are all of one class and share staining and morphology, so a split by image
puts near-copies of test cells into training and inflates every score. Every split made here is
checked: a subject in two parts raises :class:`~allkit.errors.SubjectLeakageError`, unless the
caller explicitly asked for the authors' leaky by-image variant (``leaky=True``).

Fractions are fractions of *subjects*, allocated per class so that every part holds both classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import pandas as pd
from sklearn.model_selection import train_test_split

from allkit.constants import SEED
from allkit.errors import DataError, SubjectLeakageError

PARTS = ("train", "val", "test")


@dataclass
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    protocol: str
    seed: int
    leaky: bool = False

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def frame(self) -> pd.DataFrame:
        """All parts in one frame, the ``split`` column saying which part each cell is in."""
        return pd.concat([p.assign(split=name) for name, p in self.parts().items()], ignore_index=True)

    def summary(self) -> pd.DataFrame:
        from allkit.data.discover import summarize

        return summarize(self.frame)


def check_leakage(parts: dict[str, pd.DataFrame]) -> None:
    """Raise :class:`SubjectLeakageError` if any subject is in two non-empty parts."""
    for (name_a, a), (name_b, b) in combinations(parts.items(), 2):
        shared = set(a["subject"]) & set(b["subject"])
        if shared:
            raise SubjectLeakageError(shared, (name_a, name_b))


def _require_known_subjects(frame: pd.DataFrame) -> None:
    unknown = frame["subject"].astype(str).str.startswith("?")
    if unknown.any():
        raise DataError(
            f"{int(unknown.sum())} cell(s) have no subject id (names without the UID pattern); a subject-wise "
            "split cannot be guaranteed. Use split_cells(..., by='image', leaky=True) only if you accept leakage"
        )


def _subject_table(frame: pd.DataFrame) -> pd.DataFrame:
    table = frame.groupby("subject", sort=True)["label"].agg(["first", "nunique"])
    mixed = table.index[table["nunique"] > 1].tolist()
    if mixed:
        raise DataError(f"subject(s) {mixed} have cells of both classes; expected one class per subject")
    return table["first"].rename("label").reset_index()


def _n_subjects(fraction: float, n: int) -> int:
    return max(1, round(fraction * n)) if fraction > 0 else 0


def partition_subjects(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, set[str]]:
    """Assign subjects to parts, per class: ``fractions`` maps evaluation parts to fractions of that
    class's subjects (at least one each when the fraction is positive); the rest form ``train``."""
    subjects = _subject_table(frame)
    assignment: dict[str, set[str]] = {name: set() for name in fractions}
    assignment["train"] = set()
    for label, group in subjects.groupby("label"):
        remaining = group["subject"].tolist()
        wanted = {name: _n_subjects(f, len(remaining)) for name, f in fractions.items()}
        if sum(wanted.values()) >= len(remaining):
            raise DataError(
                f"class {'ALL' if label == 1 else 'HEM'} has {len(remaining)} subject(s): too few to give "
                f"{', '.join(f'{k} {v}' for k, v in wanted.items())} subject(s) and keep one for training; "
                "lower the fractions or add subjects"
            )
        for name, n in wanted.items():
            if n == 0:
                continue
            remaining, taken = train_test_split(remaining, test_size=n, random_state=seed, shuffle=True)
            assignment[name].update(taken)
        assignment["train"].update(remaining)
    return assignment


def _take(frame: pd.DataFrame, subjects: set[str]) -> pd.DataFrame:
    return frame[frame["subject"].isin(subjects)].reset_index(drop=True)


def split_by_subject(frame: pd.DataFrame, *, val_size: float = 0.2, test_size: float = 0.2,
                     seed: int = SEED) -> Split:
    """Subject-wise train / val / test on whatever labelled cells are present (e.g. the fold-1 sample)."""
    _require_known_subjects(frame)
    assignment = partition_subjects(frame, {"test": test_size, "val": val_size}, seed)
    parts = {name: _take(frame, assignment.get(name, set())) for name in PARTS}
    check_leakage(parts)
    return Split(**parts, protocol="subject", seed=seed)


def split_paper(frame: pd.DataFrame, *, seed: int = SEED, by_image: bool = False, leaky: bool = False) -> Split:
    """The paper's protocol: train on ``training_data``; halve the preliminary test set into validation
    and test. By subject unless ``by_image=True`` (the authors' code), which needs ``leaky=True``."""
    train = frame[frame["fold"].str.startswith("fold_") | (frame["fold"] == "-")].reset_index(drop=True)
    prelim = frame[frame["fold"] == "prelim"].reset_index(drop=True)
    if prelim.empty:
        raise DataError(
            "the paper's protocol needs the preliminary test set (validation_data/C-NMC_test_prelim_phase_data "
            "with its labels CSV), which is not present; use split_by_subject for a subject-wise split of "
            "what is present"
        )
    if by_image:
        if not leaky:
            raise DataError("split_paper(by_image=True) leaks subjects between validation and test; "
                            "pass leaky=True to reproduce the authors' split knowingly")
        val, test = train_test_split(prelim, test_size=0.5, random_state=seed, stratify=prelim["label"])
        parts = {"train": train, "val": val.reset_index(drop=True), "test": test.reset_index(drop=True)}
        check_leakage({"train": train, "eval": pd.concat([val, test])})
        return Split(**parts, protocol="paper-by-image", seed=seed, leaky=True)
    _require_known_subjects(prelim)
    halves = partition_subjects(prelim, {"test": 0.5}, seed)
    parts = {"train": train, "val": _take(prelim, halves["train"]), "test": _take(prelim, halves["test"])}
    check_leakage(parts)
    return Split(**parts, protocol="paper", seed=seed)


def split_cells(frame: pd.DataFrame, *, by: str = "subject", val_size: float = 0.2, test_size: float = 0.2,
                seed: int = SEED, leaky: bool = False) -> Split:
    """Split ``frame`` by subject (safe) or by image (leaky, only with ``leaky=True``)."""
    if by == "subject":
        return split_by_subject(frame, val_size=val_size, test_size=test_size, seed=seed)
    if by != "image":
        raise ValueError(f"by={by!r}; expected 'subject' or 'image'")
    if not leaky:
        raise DataError("a by-image split puts cells of one subject in train and test; pass leaky=True "
                        "to make it knowingly (e.g. to measure how much it inflates scores)")
    rest, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=frame["label"])
    train, val = (rest, rest.iloc[:0]) if val_size == 0 else train_test_split(
        rest, test_size=val_size / (1 - test_size), random_state=seed, stratify=rest["label"])
    parts = {k: v.reset_index(drop=True) for k, v in (("train", train), ("val", val), ("test", test))}
    return Split(**parts, protocol="image", seed=seed, leaky=True)


def make_split(frame: pd.DataFrame, preset: str = "auto", *, seed: int = SEED, leaky: bool = False,
               val_size: float = 0.2, test_size: float = 0.2) -> Split:
    """Presets: ``paper`` (needs the prelim set), ``paper-by-image`` (leaky), ``subject``, or ``auto``
    (``paper`` when the prelim test set is present, else ``subject``)."""
    if preset == "auto":
        preset = "paper" if (frame["fold"] == "prelim").any() else "subject"
    if preset == "paper":
        return split_paper(frame, seed=seed)
    if preset == "paper-by-image":
        return split_paper(frame, seed=seed, by_image=True, leaky=leaky)
    if preset == "subject":
        return split_by_subject(frame, val_size=val_size, test_size=test_size, seed=seed)
    if preset == "image":
        return split_cells(frame, by="image", val_size=val_size, test_size=test_size, seed=seed, leaky=leaky)
    raise ValueError(f"split preset {preset!r}; expected auto, paper, paper-by-image, subject or image")
