"""Train / validation / test splits by subject, with a leakage guard.

All cells of a C-NMC subject share one class, one staining batch and one microscope session: split by
image, near-copies of a person's test cells sit in training and every score is inflated. Every split
here is checked, and a subject in two parts raises :class:`SubjectLeakageError`, unless the caller
asked for the authors' by-image split on purpose (``leaky=True``). Fractions are fractions of
*subjects*, drawn per class, so that every part holds both classes.

The release itself files some identical pictures under two people (subject 20's cells are also 21's, 51's
also 75's and 78's, a few among the healthy donors). Given the cells' pixel digests
(:func:`allkit.data.pixel_digests`), a split keeps people who share a picture on one side
(:func:`linked_subjects`); where a fixed protocol puts them apart (the official folds), the copies are dropped
from the evaluation side (:func:`drop_copies`). Never the same pixels in training and test.
"""

from dataclasses import dataclass, field
from itertools import combinations

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from allkit.constants import SEED
from allkit.data.records import summarize
from allkit.errors import DataError, SubjectLeakageError


@dataclass
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    protocol: str  # subject | folds | paper | image | subject+external
    seed: int
    leaky: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # part → cells dropped as copies of training pixels

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def frame(self) -> pd.DataFrame:
        """All parts in one frame; the ``split`` column names each cell's part."""
        return pd.concat([p.assign(split=name) for name, p in self.parts().items()], ignore_index=True)

    def summary(self) -> pd.DataFrame:
        return summarize(self.frame)


def check_leakage(parts: dict[str, pd.DataFrame], digests: dict[str, str] | None = None) -> None:
    """Raise :class:`SubjectLeakageError` if a subject has cells in two of ``parts``, or, given ``digests``
    (path → pixel digest, :func:`allkit.data.pixel_digests`), if one picture is in two parts under different
    names (a cell filed under two subjects)."""
    for (name_a, a), (name_b, b) in combinations(parts.items(), 2):
        shared = set(a["subject"]) & set(b["subject"])
        if shared:
            raise SubjectLeakageError(shared, (name_a, name_b))
        if digests is not None:
            copies = set(a["path"].map(digests)) & set(b["path"].map(digests))
            if copies:
                first = [p for p in pd.concat([a["path"], b["path"]]) if digests[p] in copies][:2]
                raise DataError(
                    f"{len(copies)} identical picture(s) are in both {name_a!r} and {name_b!r} "
                    f"under different subjects, e.g. {' and '.join(first)}; keep the people who share them "
                    "on one side (split_by_subject(..., digests=...)) or drop the copies (drop_copies)"
                )


def linked_subjects(frame: pd.DataFrame, digests: dict[str, str]) -> dict[str, str]:
    """Each subject → the name of its group: the subjects that share a picture with it, directly or through
    another (``"20+21"``), joined by ``+`` in sorted order; a subject that shares nothing is its own group."""
    parent = {s: s for s in frame["subject"].astype(str).unique()}

    def root(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    first_owner: dict[str, str] = {}
    for path, subject in zip(frame["path"], frame["subject"].astype(str), strict=True):
        owner = first_owner.setdefault(digests[path], subject)
        a, b = root(owner), root(subject)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for s in parent:
        members.setdefault(root(s), []).append(s)
    return {s: "+".join(sorted(group)) for group in members.values() for s in group}


def drop_copies(kept: pd.DataFrame, other: pd.DataFrame, digests: dict[str, str]) -> tuple[pd.DataFrame, int]:
    """``other`` without the cells whose pixels are also in ``kept`` (an evaluation part that a fixed protocol
    puts beside training cells filed under another person), and how many were dropped."""
    seen = set(kept["path"].map(digests))
    copy = other["path"].map(digests).isin(seen)
    return other[~copy].reset_index(drop=True), int(copy.sum())


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


def partition_subjects(
    frame: pd.DataFrame,
    fractions: dict[str, float],
    seed: int = SEED,
    *,
    groups: dict[str, str] | None = None,
    min_subjects: dict[str, int] | None = None,
) -> dict[str, set]:
    """Subjects per part: each of ``fractions`` (part → fraction of every class's subjects, at least one
    subject when positive, raised to ``min_subjects[part]`` as far as one is left for training) is drawn in
    turn; the subjects left over form ``train``. With ``groups`` (subject → group, :func:`linked_subjects`)
    the units drawn are the groups, so people who share a picture land in one part."""
    parts: dict[str, set] = {name: set() for name in [*fractions, "train"]}
    labels = _subjects(frame)
    units = pd.Series([groups[s] if groups else s for s in labels.index], index=labels.index)
    unit_labels = labels.groupby(units).agg(lambda v: int(v.mean() >= 0.5))
    floors = min_subjects or {}
    for label, group in unit_labels.groupby(unit_labels):
        remaining = sorted(group.index)
        wanted = {name: max(1, round(f * len(remaining))) if f > 0 else 0 for name, f in fractions.items()}
        for name, floor in floors.items():  # raised to the floor as far as one person is left for training
            if wanted.get(name) and floor > wanted[name]:
                room = len(remaining) - 1 - sum(n for other, n in wanted.items() if other != name)
                wanted[name] = max(wanted[name], min(floor, room))
        if sum(wanted.values()) >= len(remaining):
            raise DataError(
                f"class {'ALL' if label == 1 else 'HEM'} has {len(remaining)} subject(s) (or groups of people "
                f"sharing pictures): too few for {wanted} and one left for training; lower the fractions or add "
                "subjects"
            )
        for name, n in wanted.items():
            if n:
                remaining, taken = train_test_split(remaining, test_size=n, random_state=seed, shuffle=True)
                parts[name].update(taken)
        parts["train"].update(remaining)
    members = units.groupby(units).groups
    return {name: {s for unit in chosen for s in members[unit]} for name, chosen in parts.items()}


def _take(frame: pd.DataFrame, subjects: set) -> pd.DataFrame:
    return frame[frame["subject"].isin(subjects)].reset_index(drop=True)


def split_by_subject(
    frame: pd.DataFrame,
    *,
    val_size: float = 0.2,
    test_size: float = 0.2,
    seed: int = SEED,
    digests: dict[str, str] | None = None,
    min_val_subjects: int = 1,
) -> Split:
    """Train / val / test with no subject in two parts, on whatever labelled cells are present. With
    ``digests`` (:func:`allkit.data.pixel_digests`), people who share a picture stay in one part and no picture
    is in two parts; ``min_val_subjects``: at least that many people of each class in validation where the class
    has enough."""
    groups = linked_subjects(frame, digests) if digests is not None else None
    floors = {"val": min_val_subjects}
    subjects = partition_subjects(frame, {"test": test_size, "val": val_size}, seed, groups=groups, min_subjects=floors)
    parts = {name: _take(frame, subjects[name]) for name in ("train", "val", "test")}
    check_leakage(parts, digests)
    return Split(**parts, protocol="subject", seed=seed)


def grouped_kfold(frame: pd.DataFrame, fold: int, k: int, *, seed: int = SEED, digests: dict | None = None) -> Split:
    """Validation is group ``fold`` (0-based) of ``k`` groups of people: scikit-learn's ``StratifiedGroupKFold``
    over people (each class spread evenly; people who share a picture, by ``digests``, in one group)."""
    labels = _subjects(frame)
    if not 0 <= fold < k <= labels.value_counts().min():
        raise DataError(f"cross-validation fold {fold} of {k} over people needs 0 <= fold < {k} and {k} people a class")
    groups = linked_subjects(frame, digests) if digests is not None else {s: s for s in labels.index}
    people, dealer = labels.index.to_numpy(), StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    rounds = dealer.split(people, labels.to_numpy(), [groups[s] for s in people])
    train, val = (set(people[i]) for i in list(rounds)[fold])
    parts = {"train": _take(frame, train), "val": _take(frame, val), "test": frame.iloc[:0]}
    check_leakage(parts, digests)
    return Split(**parts, protocol="subject", seed=seed)


def without_copies(split: Split, digests: dict[str, str]) -> Split:
    """``split`` with the evaluation side cleaned: validation cells whose pixels are training cells, and test
    cells whose pixels are training or validation cells (the same picture filed under another person), dropped
    and counted in ``Split.dropped``."""
    val, n_val = drop_copies(split.train, split.val, digests)
    test, n_test = drop_copies(pd.concat([split.train, val]), split.test, digests)
    dropped = {part: n for part, n in (("val", n_val), ("test", n_test)) if n}
    parts = {"train": split.train, "val": val, "test": test}
    check_leakage(parts, digests)
    return Split(**parts, protocol=split.protocol, seed=split.seed, dropped={**split.dropped, **dropped})


def split_folds(
    frame: pd.DataFrame,
    *,
    test_folds: tuple[str, ...] = ("fold_2",),
    val_size: float = 0.2,
    seed: int = SEED,
    digests: dict[str, str] | None = None,
    min_val_subjects: int = 3,
    cv: tuple[int, int] | None = None,
) -> Split:
    """The release's own folds, which it made by person: the cells of ``test_folds`` are the test part (people
    no step of the method has seen, scored once), the other training folds are split by subject into training
    and validation with at least ``min_val_subjects`` people of each class in validation where a class has
    enough. The preliminary test set is not used. With ``digests``, test cells whose pixels are also training or
    validation cells (filed under another person by the release) are dropped from the test part and counted.
    ``cv=(i, k)``: validation is instead group ``i`` of :func:`grouped_kfold`'s ``k``, for cross-validation."""
    folds = frame["fold"].astype(str)
    training = folds.str.startswith("fold_")
    test, rest = frame[training & folds.isin(test_folds)], frame[training & ~folds.isin(test_folds)]
    if test.empty or rest.empty:
        raise DataError(
            f"the folds protocol tests on {', '.join(test_folds)} and trains on the other training folds; "
            f"this data has {', '.join(sorted(set(folds))) or 'no folds'}. Use split_by_subject instead"
        )
    if cv is None:
        inside = split_by_subject(
            rest, val_size=val_size, test_size=0, seed=seed, digests=digests, min_val_subjects=min_val_subjects
        )
    else:
        inside = grouped_kfold(rest, *cv, seed=seed, digests=digests)
    protocol = "folds" if cv is None else f"folds, cross-validation group {cv[0] + 1} of {cv[1]} as validation"
    split = Split(inside.train, inside.val, test.reset_index(drop=True), protocol=protocol, seed=seed)
    if digests is None:
        check_leakage(split.parts())
        return split
    return without_copies(split, digests)


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
