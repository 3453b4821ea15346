"""Build ``notebooks/NN_name.ipynb`` from ``notebooks/src/NN_name.py`` (percent format), optionally executing them.

    python notebooks/make.py            # (re)write the .ipynb files from their sources, without outputs
    python notebooks/make.py --execute  # ... and run them top to bottom (ALLKIT_PROFILE decides the profile)

Source format: cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown; each line starts with
``# ``). The sources are what gets reviewed; the .ipynb files carry the outputs of the last execution.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
CELL = re.compile(r"^# %%(?P<md> \[markdown\])?\s*$")


def parse(source: str) -> list:
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "code" and text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in source.splitlines():
        match = CELL.match(line)
        if match:
            flush()
            kind, lines = ("markdown" if match["md"] else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def build(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = parse(path.read_text())
    notebook.metadata.update({
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    return notebook


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="execute each notebook after writing it")
    parser.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_data)")
    parser.add_argument("--timeout", type=int, default=3600, help="per-cell timeout when executing")
    args = parser.parse_args()
    sources = sorted((HERE / "src").glob("[0-9][0-9]_*.py"))
    if args.names:
        sources = [s for s in sources if s.stem in args.names]
    for source in sources:
        notebook = build(source)
        target = HERE / f"{source.stem}.ipynb"
        if args.execute:
            from nbclient import NotebookClient

            print(f"executing {target.name} ...", file=sys.stderr)
            NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(notebook, target)
        print(f"wrote {target.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
