"""Size, CPU latency, throughput and accuracy change of PyTorch fp32 vs ONNX Runtime fp32 vs int8, per backbone:
what ``benchmarks/deploy.py`` and the book's chapter 12 print."""

import contextlib
import hashlib
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from allkit.constants import CROP_RATIO, SEED
from allkit.data import CellDataset
from allkit.deploy.onnx_model import (
    SCOPE,
    DeployableModel,
    MissingDependencyError,
    check_cells,
    check_image_size,
    export_onnx,
    import_onnx,
    import_onnxruntime,
    library_versions,
    random_input,
)
from allkit.deploy.predictor import OnnxPredictor, check_against_pytorch
from allkit.deploy.quantize import INT8_MODES, check_int8_mode, quantize_onnx
from allkit.deploy.saved import fitted_cells, load_hybrid
from allkit.errors import ConfigError, ModelError
from allkit.files import read_json, sha256_file, write_json
from allkit.inference import model_layout, predict_proba, prepare
from allkit.models import build_model, get_backbone
from allkit.perf import torch_threads, tune_malloc

__all__ = [
    "DEPLOY_BACKBONES",
    "NO_FINETUNED",
    "deployment_report",
    "machine_facts",
    "measure_latency",
    "report_table",
    "summary_table",
]

#: The backbones of the deployment table: the paper's, its offline sibling, a small and a huge classic.
DEPLOY_BACKBONES = ("efficientnet_b0", "efficientnet_lite0", "resnet18", "vgg16")
NO_FINETUNED = "n/a (no fine-tuned model offline)"
INT8_CPU_FEATURES = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
CPU = torch.device("cpu")


def measure_latency(
    fn: Callable[[], object], *, warmup: int = 5, runs: int = 50, max_seconds: float | None = None, min_runs: int = 5
) -> dict:
    """Wall-clock time of ``fn()``: ``warmup`` untimed calls, then ``runs`` timed ones (stopping early once
    ``max_seconds`` of timed calls have passed, but never before ``min_runs``). Milliseconds.

    With ``max_seconds``, warm-up also stops after one call once it has taken ``max_seconds / 4`` (a model
    that needs seconds per call is warm after one)."""
    if isinstance(runs, bool) or int(runs) < 1:
        raise ConfigError(f"runs={runs!r}; expected a positive integer")
    warm_started = time.perf_counter()
    done_warmup = 0
    for _ in range(int(warmup)):
        fn()
        done_warmup += 1
        if max_seconds is not None and time.perf_counter() - warm_started > max_seconds / 4:
            break
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(int(runs)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= min_runs and time.perf_counter() - started > max_seconds:
            break
    ms = np.asarray(times) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "runs": len(ms),
        "warmup": done_warmup,
    }


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from ``/proc/cpuinfo`` (Linux; elsewhere what platform says)."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    return name, flags


def machine_facts() -> dict:
    """What the latency numbers were measured on: CPU, cores, threads, load, library versions."""
    name, flags = _cpuinfo()
    facts = {
        "cpu": name,
        "machine": platform.machine(),
        "os": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "int8_cpu_features": sorted(flags & INT8_CPU_FEATURES),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "environment": {
            k: os.environ.get(k)
            for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "ALLKIT_TUNE_MALLOC")
        },
        "versions": library_versions(),
        "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        facts["onnxruntime_providers"] = import_onnxruntime().get_available_providers()
    except MissingDependencyError:
        facts["onnxruntime_providers"] = None
    return facts


def _sample_input(test: CellDataset | None, size: int, n: int) -> np.ndarray:
    """``n`` cells of ``test`` (repeated if needed) as float32 in ``[0, 1]``, or seeded noise without cells."""
    if test is None or not len(test):
        return random_input(size, n)
    return test.__getitems__([i % len(test) for i in range(n)])[0].numpy().astype(np.float32) / 255.0


def _code_digest() -> str:
    """sha256 of this package's sources: a cached report measured other code once a quantiser or an exporter
    changes (a report cached before the static int8 softmax became float kept showing the old file)."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _cache_key(settings: dict, models: Mapping) -> dict:
    versions = {k: v for k, v in library_versions().items() if k in ("torch", "onnxruntime", "onnx")}
    key = {**settings, "code": _code_digest(), "versions": versions, "models": {}}
    for name, folder in sorted(models.items()):
        cnn = Path(folder) / "cnn.pt"
        key["models"][name] = sha256_file(cnn) if cnn.is_file() else str(folder)
    return key


def _report_model(name: str, model_dir, size: int, test: CellDataset | None):
    """``(cnn, normalize, crop ratio, weights note)``: the fine-tuned CNN of ``model_dir``, or a seeded random one."""
    if model_dir is not None:
        hybrid = load_hybrid(model_dir)
        model_size, crop = fitted_cells(hybrid)
        if model_size != size:
            raise ModelError(f"{model_dir} was trained at {model_size} px; the report measures {size} px")
        if test is not None:
            check_cells(test, model_size, crop, f"{model_dir} was fitted on cells")
        return hybrid.cnn.eval(), hybrid.normalize, crop, f"fine-tuned ({Path(model_dir).name})"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        cnn = build_model(name, None)
    return cnn.eval(), get_backbone(name).mean_std, CROP_RATIO, "random init (latency/size only)"


def _report_files(cnn, name, folder: Path, size, normalize, crop, weights, int8_modes, calibration, n_calib, notes):
    """The fp32 export and its int8 copies (``None`` where quantising failed, with a note); no file at all if
    the export itself failed (e.g. VGG16's 7x7 adaptive pooling below 224 px: PyTorch rows only)."""
    try:
        fp32 = export_onnx(
            cnn, name, folder / f"{name}.onnx", image_size=size, normalize=normalize, crop_ratio=crop, source=weights
        )
    except ModelError as err:
        notes.append(f"{name}: ONNX export failed at {size} px, so only PyTorch was measured: {err}")
        return {}
    paths = {"onnx_fp32": fp32}
    for mode in int8_modes:
        try:
            paths[f"onnx_int8_{mode}"] = quantize_onnx(
                fp32, folder / f"{name}.int8-{mode}.onnx", mode=mode, calibration=calibration, n_calibration=n_calib
            )
        except ModelError as err:
            paths[f"onnx_int8_{mode}"] = None
            notes.append(f"{name}: int8 {mode} failed: {err}")
    return paths


def _report_accuracy(cnn, normalize, paths: Mapping, test: CellDataset) -> dict[str, dict]:
    """Accuracy on ``test``, agreement with PyTorch and max |Δp(ALL)| of PyTorch and every exported file."""
    reference = predict_proba(cnn, test, normalize=normalize, device="cpu")
    labels = test.labels.numpy()
    pytorch_accuracy = float((reference.argmax(1) == labels).mean())
    accuracy = {"pytorch": {"accuracy": pytorch_accuracy, "agreement": 1.0, "max_abs_dp": 0.0, "n": len(labels)}}
    for variant, p in paths.items():
        if p is not None:
            check = check_against_pytorch(p, test, reference=reference)
            accuracy[variant] = {
                "accuracy": check["accuracy_onnx"],
                "agreement": check["agreement"],
                "max_abs_dp": check["max_abs_diff"],
                "n": check["n"],
            }
    return accuracy


def _report_timing(model, threads: int, one: np.ndarray, many: np.ndarray, *, measure_batch: bool, **timing):
    """Batch-1 latency and (``measure_batch``) the time of a ``many`` batch, of a PyTorch module or an ``.onnx``."""
    batch_runs = timing.pop("batch_runs")

    def timed(run, x1, xb):
        lat = measure_latency(lambda: run(x1), **timing)
        thr = measure_latency(lambda: run(xb), warmup=1, runs=batch_runs, min_runs=1) if measure_batch else None
        return lat, thr

    if isinstance(model, torch.nn.Module):  # as allkit's own inference runs it (allkit.inference.predict)
        with torch_threads(threads), torch.inference_mode():
            x1, xb = (model_layout(torch.from_numpy(x), CPU) for x in (one, many))
            return timed(model, x1, xb)
    return timed(OnnxPredictor(model, threads=threads).run, one, many)


def deployment_report(
    backbones: Iterable[str] = DEPLOY_BACKBONES,
    *,
    image_size: int = 224,
    models: Mapping | None = None,
    test: CellDataset | None = None,
    calibration=None,
    n_calibration: int = 32,
    threads: Sequence[int | None] = (1, None),
    runs: int = 50,
    warmup: int = 5,
    max_seconds: float = 20.0,
    batch: int = 32,
    batch_runs: int = 3,
    int8_modes: Sequence[str] = INT8_MODES,
    throughput_backbones: Iterable[str] | None = None,
    throughput_variants: Iterable[str] = ("pytorch", "onnx_fp32", "onnx_int8_static"),
    out_dir=None,
    cache=None,
    note: str | None = None,
    progress: bool = True,
) -> dict:
    """Size, CPU latency, throughput and accuracy change of PyTorch fp32 vs ONNX Runtime fp32 vs int8.

    Per backbone: the fine-tuned model of ``models[name]`` (a saved hybrid folder) when given, else a
    randomly initialised one (latency and size do not depend on the weights' values; accuracy is then
    reported as ``"n/a (no fine-tuned model offline)"``). Each is exported (:func:`export_onnx`) and
    quantised in each of ``int8_modes`` (static: calibrated on ``n_calibration`` cells of ``calibration``,
    training cells; noise if none is given, which the notes say). Then for every variant and every entry
    of ``threads`` (``None``: as many as torch uses, which allkit's entry points set to the usable cores):
    batch-1 latency (median and p90 over up to ``runs`` timed calls after ``warmup``, at most
    ``max_seconds`` each) on a real cell of ``test`` when given, and throughput at ``batch`` cells
    (``batch_runs`` timed batches) for the ``throughput_backbones`` (default all) and
    ``throughput_variants`` (dynamic int8, several times slower, only at batch 1 by default). With ``test``
    and a fine-tuned model: accuracy, agreement with PyTorch and max |Δp(ALL)| of each variant on all of
    ``test``. PyTorch runs as allkit's own inference does: eager, fp32, channels-last on the CPU,
    ``torch.inference_mode``, with :func:`allkit.perf.tune_malloc` applied.

    ``cache``: a JSON path; a report there made with the same settings and models is returned as is, else
    the new one is written there (atomically). Returns a JSON-serialisable dict: ``machine``, ``settings``,
    ``rows`` (one per backbone x variant x threads; see :func:`report_table`), ``notes``.
    """
    import_onnxruntime()
    import_onnx()
    models = {get_backbone(k).name: v for k, v in (models or {}).items()}
    backbones = [get_backbone(b).name for b in backbones]
    size = check_image_size(image_size)
    thread_list = sorted({torch.get_num_threads() if t is None else int(t) for t in threads})
    throughput_variants = set(throughput_variants)
    throughput_set = {
        get_backbone(b).name for b in (backbones if throughput_backbones is None else throughput_backbones)
    }
    for mode in int8_modes:
        check_int8_mode(mode)
    if test is not None:
        check_cells(test, size, None, "the report measures cells")
    settings = {
        "backbones": backbones,
        "image_size": size,
        "threads": thread_list,
        "runs": int(runs),
        "warmup": int(warmup),
        "max_seconds": float(max_seconds),
        "batch": int(batch),
        "batch_runs": int(batch_runs),
        "int8_modes": list(int8_modes),
        "n_calibration": int(n_calibration),
        "throughput_backbones": sorted(throughput_set),
        "throughput_variants": sorted(throughput_variants),
        "test_cells": None if test is None else len(test),
        "note": note,
    }
    key = _cache_key(settings, models)
    if cache is not None and Path(cache).is_file():
        with contextlib.suppress(ModelError):
            saved = read_json(cache, ModelError)
            if isinstance(saved, dict) and saved.get("key") == key:
                return saved["report"]

    malloc_tuned = tune_malloc()  # as allkit's own CPU inference runs: PyTorch is measured the way allkit runs it
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    notes = [note] if note else []
    calib_note = None
    if calibration is None and "static" in int8_modes:
        calibration = np.random.default_rng(SEED).integers(0, 256, (n_calibration, 3, size, size)).astype(np.uint8)
        calib_note = "static int8 calibrated on random noise (no calibration cells given)"
        notes.append(calib_note)
    one, many = _sample_input(test, size, 1), _sample_input(test, size, int(batch))
    timing = {"warmup": warmup, "runs": runs, "max_seconds": max_seconds, "batch_runs": batch_runs}
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        folder = Path(out_dir) if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        bar = tqdm(backbones, desc="backbones", disable=not progress)
        for name in bar:
            bar.set_postfix_str(name)
            cnn, normalize, crop, weights = _report_model(name, models.get(name), size, test)
            fine_tuned = name in models
            paths = _report_files(
                cnn, name, folder, size, normalize, crop, weights, int8_modes, calibration, n_calibration, notes
            )
            accuracy = _report_accuracy(cnn, normalize, paths, test) if fine_tuned and test is not None else {}
            torch_model = prepare(DeployableModel(cnn, normalize).eval(), CPU)
            pt_bytes = sum(t.numel() * t.element_size() for t in cnn.state_dict().values())
            for variant, p in [("pytorch", None), *((v, p) for v, p in paths.items() if p is not None)]:
                measure_batch = name in throughput_set and variant in throughput_variants
                for n_threads in thread_list:
                    lat, thr = _report_timing(
                        torch_model if p is None else p, n_threads, one, many, measure_batch=measure_batch, **timing
                    )
                    acc = accuracy.get(variant)
                    rows.append(
                        {
                            "backbone": name,
                            "weights": weights,
                            "variant": variant,
                            "precision": "int8" if "int8" in variant else "fp32",
                            "threads": n_threads,
                            "image_size": size,
                            "size_mb": (pt_bytes if p is None else p.stat().st_size) / 1e6,
                            "size_of": "state_dict tensors" if p is None else p.name,
                            "latency_median_ms": lat["median_ms"],
                            "latency_p90_ms": lat["p90_ms"],
                            "latency_runs": lat["runs"],
                            "throughput_cells_s": None if thr is None else batch * 1000.0 / thr["median_ms"],
                            "throughput_runs": None if thr is None else thr["runs"],
                            "accuracy": acc["accuracy"] if acc else None,
                            "agreement_with_pytorch": acc["agreement"] if acc else None,
                            "max_abs_dp": acc["max_abs_dp"] if acc else None,
                            "accuracy_cells": acc["n"] if acc else None,
                            "accuracy_note": None
                            if acc
                            else (NO_FINETUNED if not fine_tuned else "no test cells given"),
                        }
                    )
    report = {
        "machine": {**machine_facts(), "load_average_at_start": load_at_start, "malloc_tuned": malloc_tuned},
        "settings": settings,
        "rows": rows,
        "notes": notes,
        "scope": SCOPE,
        "calibration": calib_note or "training cells given by the caller",
    }
    if cache is not None:
        write_json(cache, {"key": key, "report": report}, indent=2)
    return report


def report_table(report: Mapping) -> pd.DataFrame:
    """The report's rows as a pandas DataFrame (one row per backbone x variant x threads)."""
    columns = (
        "backbone weights variant threads size_mb latency_median_ms latency_p90_ms latency_runs throughput_cells_s "
        "accuracy agreement_with_pytorch max_abs_dp accuracy_note"
    ).split()
    frame = pd.DataFrame(list(report["rows"]))
    return frame[[c for c in columns if c in frame.columns]]


def summary_table(report: Mapping) -> pd.DataFrame:
    """One row per backbone x variant, thread counts side by side: what the book and the script print.

    Columns: ``size_mb``; per thread count ``t``: ``ms_median_<t>t``, ``ms_p90_<t>t`` (batch 1, per cell) and
    ``cells_s_<t>t`` (throughput at the report's batch size); ``accuracy``, ``agreement``, ``max_abs_dp``
    (on the test cells, fine-tuned models only) and ``weights``.
    """
    frame = pd.DataFrame(list(report["rows"]))
    out = []
    for (backbone, variant), group in frame.groupby(["backbone", "variant"], sort=False):
        first = group.iloc[0]
        row = {"backbone": backbone, "variant": variant, "size_mb": first["size_mb"]}
        for _, r in group.iterrows():
            t = int(r["threads"])
            row[f"ms_median_{t}t"] = r["latency_median_ms"]
            row[f"ms_p90_{t}t"] = r["latency_p90_ms"]
            row[f"cells_s_{t}t"] = r["throughput_cells_s"]
        row.update(
            accuracy=first["accuracy"] if first["accuracy"] is not None else first["accuracy_note"],
            agreement=first["agreement_with_pytorch"],
            max_abs_dp=first["max_abs_dp"],
            weights=first["weights"],
        )
        out.append(row)
    return pd.DataFrame(out)
