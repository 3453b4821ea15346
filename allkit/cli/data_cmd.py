"""``allkit data check|download|extract``."""

import json

CHECK_EXAMPLES = """\
examples:
  allkit data check ../shared/data
  allkit data check ~/data/C-NMC_Leukemia/training_data/fold_0 --json
  allkit data check            # ALLKIT_DATA, then data/, then the synthetic stand-in
"""


def register(commands, formatter) -> None:
    data = commands.add_parser("data", help="find, check, download C-NMC 2019", formatter_class=formatter)
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = sub.add_parser(
        "check", help="summarise and validate a C-NMC folder", epilog=CHECK_EXAMPLES, formatter_class=formatter
    )
    check.add_argument("path", nargs="?", help="data root (default: ALLKIT_DATA, data/, synthetic)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    check.add_argument("--quick", action="store_true", help="list and check names only, do not decode the images")
    check.add_argument(
        "--allow-unknown-subjects",
        action="store_true",
        help="accept names without the UID pattern (leakage then cannot be checked)",
    )
    check.set_defaults(handler=run_check)

    download = sub.add_parser(
        "download",
        help="download C-NMC 2019 from Kaggle (needs credentials)",
        epilog="example:\n  allkit data download --dest data",
        formatter_class=formatter,
    )
    download.add_argument("--dest", default="data", help="folder to put C-NMC_Leukemia/ in")
    download.add_argument("--force", action="store_true", help="download again even if present")
    download.set_defaults(handler=run_download)

    extract = sub.add_parser(
        "extract",
        help="unpack a downloaded archive safely",
        epilog="example:\n  allkit data extract archive.zip --dest data",
        formatter_class=formatter,
    )
    extract.add_argument("archive")
    extract.add_argument("--dest", default="data")
    extract.set_defaults(handler=run_extract)


def _print_report(report: dict) -> None:
    print(f"C-NMC data at {report['root']} (layout: {report['layout']}, from {report['source']})")
    if report["synthetic"]:
        print("  SYNTHETIC stand-in data: not real cells")
    print(f"  {'split':<8}{'fold':<8}{'class':<7}{'images':>8}{'subjects':>10}")
    for row in report["per_split"]:
        print(f"  {row['split']:<8}{row['fold']:<8}{row['class_name']:<7}{row['images']:>8}{row['subjects']:>10}")
    for name in ("ALL", "HEM"):
        print(f"  training {name}: {report['images'][name]} images, {report['subjects'][name]} subjects")
    for name in ("ALL", "HEM") if sum(report["prelim"]["images"].values()) else ():
        prelim = report["prelim"]
        print(f"  preliminary test {name}: {prelim['images'][name]} images, {prelim['subjects'][name]} subjects")
    if report["unlabelled"]:
        decoded = "decoded" if report["decoded"] else "not decoded"
        print(f"  final test (unlabelled): {report['unlabelled']} images ({decoded})")
    if report["uncounted"]:
        print(f"  not counted: {len(report['uncounted'])} image(s), e.g. {report['uncounted'][0]}")
    print(f"  bad files: {len(report['bad_files'])}")
    for bad in report["bad_files"]:
        print(f"    {bad['path']}: {bad['reason']}")
    for copy in report["copies"]:  # every group is in --json; here one example each
        print(
            f"  {copy['pictures']} picture(s) filed under each of {copy['subjects'].replace('+', ', ')} "
            f"({', '.join(copy['folds'])}), "
            f"e.g. {' = '.join(copy['example'])}"
        )
    print(f"  leakage: {'none' if not report['leakage'] else ''}")
    for leak in report["leakage"]:
        print(f"    subject {leak['subject']} is in {', '.join(leak['parts'])}")
    for note in report["notes"]:
        print(f"  note: {note}")
    print("  usable: yes" if report["usable"] else "  usable: NO")


def run_check(args) -> int:
    from allkit.study.data_check import check_report

    report = check_report(
        args.path, deep=not args.quick, allow_unknown_subjects=args.allow_unknown_subjects, progress=not args.json
    )
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0 if report["usable"] else 1


def run_download(args) -> int:
    from allkit.study.download import download_cnmc

    path = download_cnmc(args.dest, force=args.force)
    print(f"C-NMC 2019 is in {path}; use it with: export ALLKIT_DATA={path}")
    return 0


def run_extract(args) -> int:
    from allkit.study.download import safe_extract

    dest = safe_extract(args.archive, args.dest)
    print(f"unpacked into {dest}; next: allkit data check {dest}   (then: export ALLKIT_DATA={dest})")
    return 0
