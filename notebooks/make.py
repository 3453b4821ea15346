"""Write ``notebooks/NN_name.ipynb`` from ``notebooks/src/NN_name.py`` with jupytext, optionally executing them.

    python notebooks/make.py             # update the .ipynb inputs from the sources, keeping outputs only where
                                         # a cell's code is unchanged
    python notebooks/make.py --execute   # ... and run them top to bottom (ALLKIT_PROFILE decides the profile)

The sources (jupytext's percent format) are what gets reviewed; the .ipynb files carry the outputs of the
last execution. Each notebook is paired with its source (``jupytext.formats: ipynb,src//py:percent``), so
``jupytext --sync notebooks/*.ipynb`` after editing a notebook in Jupyter updates its source too.
"""

import argparse
import sys
from pathlib import Path

import jupytext
from jupytext.combine import combine_inputs_with_outputs
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="execute each notebook after writing it")
    parser.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_data)")
    parser.add_argument("--timeout", type=int, default=7200, help="per-cell timeout when executing")
    args = parser.parse_args()
    sources = sorted((HERE / "src").glob("[0-9][0-9]_*.py"))
    for source in [s for s in sources if not args.names or s.stem in args.names]:
        target = HERE / f"{source.stem}.ipynb"
        notebook = build(source, target)
        if args.execute:
            print(f"executing {target.name} ...", file=sys.stderr)
            NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(HERE)}}).execute()
        jupytext.write(notebook, target)
        print(f"wrote {target.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
