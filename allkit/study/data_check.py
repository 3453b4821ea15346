"""``allkit data check``: what is in a C-NMC folder and whether a run can use it, checked the way a run
reads it (every image read with :func:`allkit.data.read_cell`, the function the cache uses)."""

import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from allkit.data import load_cnmc, read_cell
from allkit.errors import DataError
from allkit.study.workspace import data_root


def _decode_all(paths: list[str], progress: bool) -> tuple[list[dict], list[list[str]]]:
    """Every image decoded and its bytes hashed: unreadable files and identical copies show up."""

    def work(path: str):
        try:
            return path, read_cell(path)[1], None
        except (OSError, DataError) as err:
            return path, path, str(err)

    bad, by_hash = [], defaultdict(list)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = tqdm(
            pool.map(work, paths), total=len(paths), desc="Decoding", unit="img", disable=not progress, file=sys.stderr
        )
        for path, digest, problem in results:
            by_hash[digest].append(path)
            if problem:
                bad.append({"path": path, "reason": problem})
    return bad, [sorted(group) for group in by_hash.values() if len(group) > 1]


def check_report(path=None, *, deep: bool = True, allow_unknown_subjects: bool = False, progress: bool = True) -> dict:
    """Images and subjects per split, fold and class; unreadable images; byte-identical copies; subject
    leakage between folds or parts; and whether a run can use the data (``usable``)."""
    root, source = data_root(path)
    data = load_cnmc(root, allow_unknown_subjects=allow_unknown_subjects)
    frame = data.frame
    bad, duplicates = _decode_all(frame["path"].tolist(), progress) if deep else ([], [])
    parts = frame.assign(part=frame["fold"].where(frame["fold"] == "prelim", "training"))
    leakage = [
        {"subject": s, "parts": sorted(p)} for s, p in parts.groupby("subject")["part"].unique().items() if len(p) > 1
    ]
    leakage += [
        {"subject": s, "parts": sorted(f)}
        for s, f in frame.groupby("subject")["fold"].unique().items()
        if len(f) > 1 and s not in {x["subject"] for x in leakage}
    ]
    # Identical files within one subject are a curiosity of the release (seen in H10); across subjects or
    # folds they would put one cell on both sides of a split.
    where = frame.set_index("path")[["subject", "fold"]]
    cross = [g for g in duplicates if len({tuple(where.loc[p]) for p in g}) > 1]
    leakage += [
        {
            "subject": "+".join(sorted({str(where.loc[p, "subject"]) for p in g})),
            "parts": sorted({str(where.loc[p, "fold"]) for p in g}),
            "files": g,
        }
        for g in cross
    ]
    per_class = frame.groupby("class_name")
    images = {name: int(per_class.size().get(name, 0)) for name in ("ALL", "HEM")}
    notes = list(data.notes)
    if len(duplicates) > len(cross):
        notes.append(f"{len(duplicates) - len(cross)} group(s) of byte-identical images within one subject")
    return {
        "root": str(data.root),
        "source": source,
        "layout": data.layout,
        "synthetic": data.synthetic,
        "images": images,
        "subjects": {n: int(per_class["subject"].nunique().get(n, 0)) for n in ("ALL", "HEM")},
        "unlabelled": len(data.unlabelled),
        "per_split": [
            {k: (int(v) if k in ("images", "subjects") else v) for k, v in row.items()}
            for row in data.summary().to_dict("records")
        ],
        "bad_files": bad,
        "duplicates": duplicates,
        "leakage": leakage,
        "notes": notes,
        "decoded": deep,
        "usable": bool(images["ALL"] and images["HEM"] and not leakage and not bad),
    }
