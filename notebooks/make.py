"""Write ``notebooks/NN_name.ipynb`` from ``notebooks/src/NN_name.py`` with jupytext, optionally executing them.

    python notebooks/make.py             # update the .ipynb inputs from the sources, keeping outputs only where
                                         # a cell's code is unchanged
    python notebooks/make.py --execute   # ... and run them top to bottom (ALLKIT_PROFILE decides the profile)
    python notebooks/make.py --outputs-match-data   # exit 0 if the committed outputs were computed on the data
                                                    # present (the fingerprint in every run card), else 1

The sources (jupytext's percent format) are what gets reviewed; the .ipynb files carry the outputs of the
last execution. Each notebook is paired with its source (``jupytext.formats: ipynb,src//py:percent``), so
``jupytext --sync notebooks/*.ipynb`` after editing a notebook in Jupyter updates its source too.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

import jupytext
from jupytext.combine import combine_inputs_with_outputs
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
FINGERPRINT = re.compile(r"^\s*data fingerprint\s+(\S+)\s*$", re.M)


def committed_fingerprints() -> dict[str, set[str]]:
    """Each committed notebook's run-card data fingerprints (none for outputs older than the fingerprint)."""
    found = {}
    for path in sorted(HERE.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
        found[path.name] = set(FINGERPRINT.findall(text))
    return found


def outputs_match_data() -> bool:
    """Whether every notebook's committed outputs were computed on the cells a new execution would use (data
    and test data resolved as a chapter resolves them, from ``notebooks/``). Says which, in one line."""
    os.chdir(HERE)
    from allkit.data import load_cnmc
    from allkit.study.book import data_fingerprint
    from allkit.study.workspace import data_root, test_data_root

    root, source = data_root(announce=False)
    present = data_fingerprint(load_cnmc(root), test_data_root())
    other = {name: prints for name, prints in committed_fingerprints().items() if prints != {present}}
    if other:
        name, prints = next(iter(other.items()))
        print(
            f"notebook outputs: numbers masked: the data present ({source}, fingerprint {present}) is not the "
            f"data of {len(other)} notebook(s)' outputs (e.g. {name}: {', '.join(sorted(prints)) or 'no fingerprint'})"
        )
        return False
    print(f"notebook outputs: compared exactly: computed on the data present (fingerprint {present})")
    return True


def build(source: Path, target: Path):
    notebook = jupytext.read(source)
    if target.exists():
        old = jupytext.read(target)
        notebook = combine_inputs_with_outputs(notebook, old)
        unchanged = {cell.source for cell in old.cells if cell.cell_type == "code"}
        for cell in notebook.cells:  # an output is kept only beside the very code that produced it
            if cell.cell_type == "code" and cell.source not in unchanged:
                cell.outputs, cell.execution_count = [], None
    notebook.metadata["kernelspec"] = KERNEL
    notebook.metadata["jupytext"] = {"formats": "ipynb,src//py:percent"}
    return notebook


def drop_unused_widget_state(notebook) -> None:
    """Widget state with no widget output: the book would load require.js for nothing (progress bars drawn
    while executing leave such state behind)."""
    shown = any(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    if not shown:
        notebook.metadata.pop("widgets", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="execute each notebook after writing it")
    parser.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_data)")
    parser.add_argument("--timeout", type=int, default=7200, help="per-cell timeout when executing")
    parser.add_argument(
        "--outputs-match-data",
        action="store_true",
        help="only say whether the committed outputs were computed on the data present (exit 0) or not (exit 1)",
    )
    args = parser.parse_args()
    if args.outputs_match_data:
        return 0 if outputs_match_data() else 1
    sources = sorted((HERE / "src").glob("[0-9][0-9]_*.py"))
    for source in [s for s in sources if not args.names or s.stem in args.names]:
        target = HERE / f"{source.stem}.ipynb"
        notebook = build(source, target)
        if args.execute:
            print(f"executing {target.name} ...", file=sys.stderr)
            NotebookClient(
                notebook, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
            ).execute()
        drop_unused_widget_state(notebook)
        jupytext.write(notebook, target)
        print(f"wrote {target.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
