"""``allkit data check``: what is in a C-NMC folder and whether a run can use it. Every image is opened and
decoded as a run opens it (:func:`allkit.data.open_cell`, the same size limits) and its pixel digest remembered
(:func:`allkit.data.pixel_digests`), so the run that splits the data next decodes nothing again."""

import pandas as pd

from allkit.data import linked_subjects, load_cnmc, pixel_digests
from allkit.study.workspace import data_root, fingerprint


def copy_groups(frame: pd.DataFrame, digests: dict[str, str]) -> list[dict]:
    """The pictures filed under more than one person, by group of people who share them
    (:func:`allkit.data.linked_subjects`): ``{"subjects": "20+21", "folds": [...], "pictures": n, "example":
    [the files of one such picture]}``, in the order of the groups' names."""
    cells = frame[frame["path"].isin(digests)]
    groups, found = linked_subjects(cells, digests), {}
    for _, same in cells.groupby(cells["path"].map(digests)):
        if same["subject"].nunique() < 2:
            continue
        name, files = groups[str(same["subject"].iloc[0])], sorted(same["path"])
        entry = found.setdefault(name, {"subjects": name, "folds": set(), "pictures": 0, "example": files})
        entry["folds"] |= set(same["fold"].astype(str))
        entry["pictures"] += 1
        entry["example"] = min(entry["example"], files)
    return [{**entry, "folds": sorted(entry["folds"])} for _, entry in sorted(found.items())]


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
    readable = frame[frame["path"].isin(digests)]
    by_picture = readable.groupby(readable["path"].map(digests))["path"]
    duplicates = sorted(sorted(files) for _, files in by_picture if len(files) > 1)
    copies = copy_groups(frame, digests)
    training, prelim = frame[frame["fold"] != "prelim"], frame[frame["fold"] == "prelim"]
    per_class = training.groupby("class_name")  # the training set; the preliminary test set apart
    images = {name: int(per_class.size().get(name, 0)) for name in ("ALL", "HEM")}
    notes = list(data.notes)
    within = len(duplicates) - sum(c["pictures"] for c in copies)
    if within:
        notes.append(f"{within} group(s) of identical pictures within one subject")
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
