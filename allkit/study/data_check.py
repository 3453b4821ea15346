"""``allkit data check``: what is in a C-NMC folder and whether a run can use it. Every image is opened and
decoded as a run opens it (:func:`allkit.data.open_cell`, the same size limits) and its pixel digest remembered
(:func:`allkit.data.pixel_digests`), so the run that splits the data next decodes nothing again."""

from collections import defaultdict

import pandas as pd

from allkit.data import linked_subjects, load_cnmc, pixel_digests
from allkit.study.workspace import data_root, fingerprint


def copy_groups(frame: pd.DataFrame, digests: dict[str, str]) -> dict[str, int]:
    """``{"20+21": 71, ...}``: for each group of people who share pictures, how many of its pictures are filed
    more than once."""
    groups, shared = linked_subjects(frame, digests), {}
    counts = frame.assign(digest=frame["path"].map(digests)).groupby("digest")["subject"].nunique()
    for digest in counts[counts > 1].index:
        subject = str(frame.loc[frame["path"].map(digests) == digest, "subject"].iloc[0])
        shared[groups[subject]] = shared.get(groups[subject], 0) + 1
    return dict(sorted(shared.items()))


def check_report(path=None, *, deep: bool = True, allow_unknown_subjects: bool = False, progress: bool = True) -> dict:
    """Images and subjects per split, fold and class; unreadable images; identical pictures (by their decoded
    pixels, whatever the container); subject leakage between folds or parts; and whether a run can use the data
    (``usable``). Pictures that the release itself files under two people are reported as ``copies`` (a known
    property of C-NMC 2019: runs keep those people on one side or drop the copies from the evaluation side),
    not as leakage."""
    root, source = data_root(path)
    data = load_cnmc(root, allow_unknown_subjects=allow_unknown_subjects)
    frame = data.frame
    # Every file decoded again (the unlabelled final test set too: a damaged file there fails a submission later);
    # the pixel digests are remembered for the runs that split this data.
    bad, digests = [], {}
    if deep:
        digests = pixel_digests(frame["path"].tolist() + data.unlabelled, progress=progress, errors=bad, refresh=True)
    digests = {path: digests[path] for path in frame["path"] if path in digests}  # copies: labelled cells only
    parts = frame.assign(part=frame["fold"].where(frame["fold"] == "prelim", "training"))
    leakage = [
        {"subject": s, "parts": sorted(p)} for s, p in parts.groupby("subject")["part"].unique().items() if len(p) > 1
    ]
    leakage += [
        {"subject": s, "parts": sorted(f)}
        for s, f in frame.groupby("subject")["fold"].unique().items()
        if len(f) > 1 and s not in {x["subject"] for x in leakage}
    ]
    groups = defaultdict(list)
    for file, digest in digests.items():
        groups[digest].append(file)
    duplicates = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    where = frame.set_index("path")[["subject", "fold"]]
    across = [g for g in duplicates if where.loc[g, "subject"].nunique() > 1]
    readable = frame[frame["path"].isin(digests)]
    copies = []
    for name, n in copy_groups(readable, digests).items():
        members = set(name.split("+"))
        shared = [g for g in across if str(where.loc[g[0], "subject"]) in members]
        folds = sorted({str(where.loc[f, "fold"]) for g in shared for f in g})
        copies.append({"subjects": name, "folds": folds, "pictures": n, "example": shared[0]})
    training, prelim = frame[frame["fold"] != "prelim"], frame[frame["fold"] == "prelim"]
    per_class = training.groupby("class_name")  # the training set; the preliminary test set apart
    images = {name: int(per_class.size().get(name, 0)) for name in ("ALL", "HEM")}
    notes = list(data.notes)
    if len(duplicates) > len(across):
        notes.append(f"{len(duplicates) - len(across)} group(s) of identical pictures within one subject")
    if copies:
        listed = ", ".join(f"{c['subjects']}: {c['pictures']}" for c in copies)
        notes.append(
            f"{sum(c['pictures'] for c in copies)} picture(s) are filed under more than one person "
            f"({listed}), as in the public release: runs "
            "keep these people on one side of a split, or drop the copies from the evaluation side"
        )
    if not deep:
        notes.append("images not decoded (--quick): unreadable files and copies filed under two people not checked")
    return {
        "root": str(data.root),
        "source": source,
        "layout": data.layout,
        "synthetic": data.synthetic,
        "fingerprint": fingerprint(data),
        "images": images,
        "subjects": {n: int(per_class["subject"].nunique().get(n, 0)) for n in ("ALL", "HEM")},
        "prelim": {
            "images": {n: int((prelim["class_name"] == n).sum()) for n in ("ALL", "HEM")},
            "subjects": {n: int(prelim.loc[prelim["class_name"] == n, "subject"].nunique()) for n in ("ALL", "HEM")},
        },
        "unlabelled": len(data.unlabelled),
        "uncounted": data.uncounted,
        "per_split": [
            {k: (int(v) if k in ("images", "subjects") else v) for k, v in row.items()}
            for row in data.summary().to_dict("records")
        ],
        "bad_files": bad,
        "duplicates": duplicates,
        "copies": copies,
        "leakage": leakage,
        "notes": notes,
        "decoded": deep,
        "usable": bool(frame["label"].nunique() == 2 and not leakage and not bad),
    }
