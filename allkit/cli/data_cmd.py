"""``allkit data check|download|extract``."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm.auto import tqdm

from allkit.data.discover import BadFile, load_cnmc
from allkit.data.paths import announce_synthetic, resolve_data_root

CHECK_EXAMPLES = """\
examples:
  allkit data check ../shared/data
  allkit data check ~/data/C-NMC_Leukemia/training_data/fold_0 --json
  allkit data check            # ALLKIT_DATA, then data/, then the synthetic stand-in
"""


def register(commands, formatter) -> None:
    data = commands.add_parser("data", help="find, check, download C-NMC 2019", formatter_class=formatter)
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="summarise and validate a C-NMC folder", epilog=CHECK_EXAMPLES,
                           formatter_class=formatter)
    check.add_argument("path", nargs="?", help="data root (default: ALLKIT_DATA, data/, synthetic)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    check.add_argument("--quick", action="store_true", help="read image headers only, do not decode pixels")
    check.add_argument("--allow-unknown-subjects", action="store_true",
                       help="accept names without the UID pattern (leakage then cannot be checked)")
    check.set_defaults(handler=run_check)

    download = sub.add_parser("download", help="download C-NMC 2019 from Kaggle (needs credentials)",
                              epilog="example:\n  allkit data download --dest data", formatter_class=formatter)
    download.add_argument("--dest", default="data", help="folder to put C-NMC_Leukemia/ in")
    download.add_argument("--force", action="store_true", help="download again even if present")
    download.set_defaults(handler=run_download)

    extract = sub.add_parser("extract", help="unpack a downloaded archive safely",
                             epilog="example:\n  allkit data extract archive.zip --dest data", formatter_class=formatter)
    extract.add_argument("archive")
    extract.add_argument("--dest", default="data")
    extract.set_defaults(handler=run_extract)


def _deep_check(paths: list[str], progress: bool) -> tuple[list[BadFile], list[list[str]]]:
    """Decode every image fully and hash its bytes: truncated files and duplicate content show up."""

    def work(path: str):
        with open(path, "rb") as handle:
            payload = handle.read()
        digest = hashlib.sha1(payload).hexdigest()
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as exc:
            return path, digest, f"cannot decode image: {exc}"
        return path, digest, None

    bad, by_hash = [], defaultdict(list)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for path, digest, problem in tqdm(pool.map(work, paths), total=len(paths), desc="Decoding",
                                          unit="img", disable=not progress, file=sys.stderr):
            by_hash[digest].append(path)
            if problem:
                bad.append(BadFile(path, problem))
    duplicates = [sorted(group) for group in by_hash.values() if len(group) > 1]
    return bad, duplicates


def check_report(path=None, *, deep: bool = True, allow_unknown_subjects: bool = False,
                 progress: bool = True) -> dict:
    """The summary ``allkit data check`` prints, as a plain dict (also used by the notebooks)."""
    root, source = resolve_data_root(path, announce=False)
    if source == "synthetic":
        announce_synthetic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cnmc(root, on_error="skip", allow_unknown_subjects=allow_unknown_subjects)
    frame = data.frame
    bad = list(data.bad_files)
    duplicates: list[list[str]] = []
    if deep:
        more_bad, duplicates = _deep_check(frame["path"].tolist(), progress)
        bad += more_bad
        bad_paths = {b.path for b in more_bad}
        frame = frame[~frame["path"].isin(bad_paths)]
    parts = frame.assign(part=frame["fold"].where(frame["fold"] == "prelim", "training"))
    homes = parts.groupby("subject")["part"].unique()
    folds = frame.groupby("subject")["fold"].unique()
    leakage = [{"subject": s, "parts": sorted(p)} for s, p in homes.items() if len(p) > 1]
    leakage += [{"subject": s, "parts": sorted(f)} for s, f in folds.items()
                if len(f) > 1 and s not in {x["subject"] for x in leakage}]
    per_class = frame.groupby("class_name")
    images = {name: int(per_class.size().get(name, 0)) for name in ("ALL", "HEM")}
    subjects = {name: int(per_class["subject"].nunique().get(name, 0)) for name in ("ALL", "HEM")}
    # Identical files within one subject are a curiosity of the release (seen in H10); identical files
    # across subjects or folds would put one cell on both sides of a split.
    where = frame.set_index("path")[["subject", "fold"]]
    cross = [g for g in duplicates if len({tuple(where.loc[p]) for p in g if p in where.index}) > 1]
    leakage += [{"subject": "+".join(sorted({str(where.loc[p, "subject"]) for p in g})),
                 "parts": sorted({str(where.loc[p, "fold"]) for p in g}), "files": g} for g in cross]
    usable = images["ALL"] > 0 and images["HEM"] > 0 and not leakage
    return {
        "root": str(data.root),
        "source": source,
        "layout": data.layout,
        "synthetic": data.synthetic,
        "images": images,
        "subjects": subjects,
        "unlabelled": len(data.unlabelled),
        "per_split": [
            {k: (int(v) if k in {"images", "subjects"} else v) for k, v in row.items()}
            for row in data.summary().to_dict("records")
        ],
        "bad_files": [b.to_dict() for b in bad],
        "duplicates": duplicates,
        "leakage": leakage,
        "subjects_known": data.subjects_known,
        "notes": data.notes + [str(w.message) for w in caught if "SYNTHETIC" not in str(w.message)]
        + [f"{len(duplicates) - len(cross)} pair(s) of byte-identical images within one subject"
           for _ in [0] if len(duplicates) > len(cross)],
        "usable": bool(usable),
    }


def _print_report(report: dict) -> None:
    print(f"C-NMC data at {report['root']} (layout: {report['layout']}, from {report['source']})")
    if report["synthetic"]:
        print("  SYNTHETIC stand-in data: not real cells")
    print(f"  {'split':<8}{'fold':<8}{'class':<7}{'images':>8}{'subjects':>10}")
    for row in report["per_split"]:
        print(f"  {row['split']:<8}{row['fold']:<8}{row['class_name']:<7}{row['images']:>8}{row['subjects']:>10}")
    for name in ("ALL", "HEM"):
        print(f"  {name}: {report['images'][name]} images, {report['subjects'][name]} subjects")
    if report["unlabelled"]:
        print(f"  unlabelled (final test): {report['unlabelled']} images")
    print(f"  bad files: {len(report['bad_files'])}")
    for bad in report["bad_files"]:
        print(f"    {bad['path']}: {bad['reason']}")
    for group in report["duplicates"]:
        print(f"  duplicate content: {', '.join(group)}")
    print(f"  leakage: {'none' if not report['leakage'] else ''}")
    for leak in report["leakage"]:
        print(f"    subject {leak['subject']} is in {', '.join(leak['parts'])}")
    for note in report["notes"]:
        print(f"  note: {note}")
    print("  usable: yes" if report["usable"] else "  usable: NO")


def run_check(args) -> int:
    report = check_report(args.path, deep=not args.quick, allow_unknown_subjects=args.allow_unknown_subjects,
                          progress=not args.json)
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0 if report["usable"] else 1


def run_download(args) -> int:
    from allkit.data.download import download_cnmc

    path = download_cnmc(args.dest, force=args.force)
    print(f"C-NMC 2019 is in {path}; use it with: export ALLKIT_DATA={path}")
    return 0


def run_extract(args) -> int:
    from allkit.data.download import safe_extract

    print(f"unpacked into {safe_extract(args.archive, args.dest)}")
    return 0
