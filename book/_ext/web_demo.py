"""Puts the in-browser demo's runtime and example cells into the built book (the page: book/demo.md), and MathJax.

The page's code and model are committed in ``book/demo/site/demo/`` and copied to ``demo/`` of the built book at
the end of every build (not from a Sphinx static path: jupyter-book would load every script there on every page,
and Sphinx copies nothing when no page changed). Two things are not committed:

- **onnxruntime-web**, pinned with its integrity hash in ``book/demo/package-lock.json``: ``npm ci`` installs it
  into ``book/demo/node_modules`` when it is not there, and the build copies the two files the page uses
  (``ort.wasm-core.min.js`` and ``ort-wasm-simd.wasm``) to ``demo/ort/``. Version 1.17.3, because
  its single-threaded SIMD WebAssembly (10.6 MB) keeps model + runtime + examples under 15 MB; later
  releases ship only a 11-15 MB threaded one.
- **the example cells**, C-NMC 2019 (CC BY 3.0), listed with their sha256 in ``book/demo/demo.json``: copied
  from the data this build has (``ALLKIT_DATA``, else ``data/``) when each file's hash matches, never
  committed.

Either may be missing (no npm, no network, no C-NMC): the build still passes and
``demo/build.js`` tells the page what it has, so the page says what is not in this build.
"""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

ORT_FILES = ("ort.wasm-core.min.js", "ort-wasm-simd.wasm")
MATHJAX = "es5/tex-mml-chtml.js"  # Sphinx's default, from the CDN


def install_runtime(demo: Path) -> tuple[Path | None, str]:
    """``node_modules/onnxruntime-web/dist`` with the page's files (and MathJax beside it), installing them with
    ``npm ci`` if needed, or ``None`` and why not."""
    dist = demo / "node_modules" / "onnxruntime-web" / "dist"
    if all((dist / name).is_file() for name in ORT_FILES) and (demo / "node_modules" / "mathjax" / MATHJAX).is_file():
        return dist, ""
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed where this book was built, so onnxruntime-web could not be installed"
    # Offline, npm would retry for minutes before giving up: one retry, one minute per request
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error", "--fetch-retries=1"]
    command += ["--fetch-timeout=60000"]
    try:
        done = subprocess.run(command, cwd=demo, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"npm ci failed ({err})"
    if done.returncode != 0 or not all((dist / name).is_file() for name in ORT_FILES):
        # npm's "code" line names the failure (ECONNREFUSED: no registry); other lines hold this machine's paths
        lines = done.stderr.strip().splitlines()
        code = next((line.removeprefix("npm error ") for line in lines if line.startswith("npm error code")), None)
        return None, f"npm ci could not install onnxruntime-web ({code or f'exit status {done.returncode}'})"
    return dist, ""


def data_root(root: Path) -> Path | None:
    for candidate in (os.environ.get("ALLKIT_DATA"), root / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def find_cell(data: Path, relative: str) -> Path | None:
    """The file at ``relative`` (``C-NMC_Leukemia/...``) under ``data`` or one of its parents' layouts."""
    parts = Path(relative).parts
    for skip in range(len(parts) - 1):
        path = data.joinpath(*parts[skip:])
        if path.is_file():
            return path
    return None


def copy_examples(facts: dict, root: Path, out: Path) -> tuple[list, str]:
    data = data_root(root)
    cells = facts.get("examples", {}).get("cells", [])
    if data is None:
        return [], "this build had no C-NMC data (ALLKIT_DATA or data/)"
    copied = []
    for cell in cells:
        path = find_cell(data, cell["file"])
        if path is None or hashlib.sha256(path.read_bytes()).hexdigest() != cell["sha256"]:
            continue
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / path.name)
        copied.append({**cell, "src": f"examples/{path.name}"})
    why = "" if copied else f"none of the example cells of book/demo/demo.json are in {data.name}/"
    return copied, why


def builder_inited(app) -> None:
    """Install the npm packages before any page is written, and point the pages at the local MathJax."""
    app.allkit_npm = install_runtime(Path(app.srcdir) / "book" / "demo")
    if app.allkit_npm[0] is not None and app.builder.format == "html":
        app.config.mathjax_path = "mathjax/" + Path(MATHJAX).name


def copy_mathjax(modules: Path, static: Path) -> None:
    source = modules / "mathjax" / MATHJAX
    target = static / "mathjax"
    fonts = Path("output") / "chtml" / "fonts" / "woff-v2"  # where tex-mml-chtml.js looks, beside itself
    shutil.copytree(source.parent / fonts, target / fonts, dirs_exist_ok=True)
    shutil.copyfile(source, target / source.name)


def build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    root = Path(app.srcdir)
    demo = root / "book" / "demo"
    static = Path(app.outdir) / "demo"
    static.mkdir(parents=True, exist_ok=True)
    for path in (demo / "site" / "demo").iterdir():
        shutil.copyfile(path, static / path.name)
    facts = json.loads((demo / "demo.json").read_text())
    dist, why_no_ort = app.allkit_npm  # installed when the builder started
    ort = None
    if dist is not None:
        copy_mathjax(demo / "node_modules", Path(app.outdir) / "_static")
        (static / "ort").mkdir(exist_ok=True)
        for name in ORT_FILES:
            shutil.copyfile(dist / name, static / "ort" / name)
        ort = json.loads((dist.parent / "package.json").read_text())["version"]
    else:
        logger.info(f"web demo: {why_no_ort}; the demo page will say so")
    examples, why_no_examples = copy_examples(facts, root, static / "examples")
    manifest = json.loads((static / "model.int8.onnx.json").read_text())  # what the page is told of its model
    build = {
        "ort": ort,
        "why_no_ort": why_no_ort,
        "examples": examples,
        "examples_data": facts.get("examples", {}).get("data"),
        "why_no_examples": why_no_examples,
        "evaluation": facts.get("evaluation"),
        "model": {
            "file": manifest["file"],
            "bytes": manifest["bytes"],
            "backbone": manifest["backbone"],
            "precision": manifest["precision"],
            "image_size": manifest["image_size"],
            "crop_ratio": manifest["crop_ratio"],
            "class_names": manifest["class_names"],
            "input": manifest["input"]["name"],
            "output": manifest["output"]["name"],
            "cam": manifest["cam"],
            "source": manifest.get("source"),
        },
    }
    (static / "build.js").write_text(f"window.ALLKIT_DEMO_BUILD = {json.dumps(build, indent=1)};\n")


def setup(app):
    app.connect("builder-inited", builder_inited)
    app.connect("build-finished", build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
