"""Output folders a command writes: claimed before any work, never a folder it reads, never one another process
is writing, never a user's own folder, and replaced all at once (see :func:`claim_folder`)."""

import contextlib
import fcntl
from pathlib import Path

import allkit
from allkit.errors import AllkitError
from allkit.files import atomic_folder, refuse_overlap, write_json
from allkit.study.workspace import data_root, test_data_root

RUN_MARKER = ".allkit-run.json"  # written into every folder `claim_folder` fills: what --overwrite may replace
# What a run, a trained CNN or a saved model holds (runs from before the marker are recognised by these)
_RUN_FILES = {"config.json", "cnn.pt", "metrics.json", "outputs", "model", "history.json", "train.json", "checkpoints"}
_RUN_FILES |= {"manifest.json", "xgboost.json", "deploy"}


def is_allkit_run(folder: Path) -> bool:
    """Whether ``folder`` was written by allkit: it has the run marker, or (runs from before the marker) holds
    only the files a run, a trained CNN or a saved model has."""
    if (folder / RUN_MARKER).is_file():
        return True
    names = [p.name for p in folder.iterdir()]
    return bool(set(names) & {"metrics.json", "train.json", "manifest.json", "config.json"}) and all(
        n in _RUN_FILES or n.endswith(".png") for n in names
    )


@contextlib.contextmanager
def claim_folder(out, *, overwrite: bool = False, inputs: dict | None = None):
    """Claim the output folder ``out`` before any work: refuse a file, a folder that is, holds or lies inside one
    of ``inputs`` (name → path the command reads: the data, a CNN's files), a folder that cannot be written, a
    folder another allkit process is writing (a lock beside it), a non-empty one unless ``overwrite``, and even
    then one that allkit did not write (:func:`is_allkit_run`). Yields a staging folder that replaces ``out``
    only when the block succeeds: a failed or interrupted run leaves the previous one as it was."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise AllkitError(f"--out {out} is a file; expected a folder for the run")
    refuse_overlap(out, inputs or {})
    lock_path = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")  # noqa: SIM115 - held for the whole block
    except OSError as err:
        raise AllkitError(f"cannot write to {out.parent} ({err.strerror}); choose another --out") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AllkitError(
                f"{out} is being written by another allkit process; wait for it, or choose another --out"
            ) from None
        try:
            held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            if held and not overwrite:
                raise AllkitError(
                    f"{out} already holds results ({', '.join(held[:4])}); "
                    "pass --overwrite to replace them, or choose another --out"
                )
            if held and not is_allkit_run(out):
                raise AllkitError(
                    f"{out} is not a folder allkit wrote (it holds {', '.join(held[:4])}"
                    f"{', ...' if len(held) > 4 else ''}); --overwrite replaces only an allkit run or an empty "
                    "folder: choose another --out"
                )
            with atomic_folder(out) as staging:
                yield staging
                write_json(staging / RUN_MARKER, {"written_by": f"allkit {allkit.__version__}"})
        finally:
            lock_path.unlink(missing_ok=True)  # while still held: no lock file is left behind per --out name


def run_inputs(data=None, test_data=None, weights=None) -> dict:
    """What a run reads, as :func:`claim_folder`'s ``inputs``: the data root, the test data and a weights file."""
    inputs = {"the data": data_root(data, announce=False)[0], "the test data": test_data_root(test_data)}
    if weights is not None and Path(str(weights)).expanduser().exists():
        inputs["the weights"] = weights
    return inputs
