"""Images per second: allkit's pipeline vs a plain fp32 PyTorch loop, same model, same cells.

Two workloads, each timed as whole passes over the same cells (median of ``--repeats`` passes after a
warm-up batch):

1. **feature extraction**: pooled backbone features under ``torch.inference_mode``;
2. **training step**: forward + backward + Adamax step on augmented cells (flips 0.2/0.2, rotation 10 deg).

*baseline*: the model in NCHW fp32; a ``DataLoader`` reading one cell at a time from the uint8 cache
(torchvision v2 augmentation per image for training), ``float() / 255`` and normalisation; no tuning.
*allkit*: ``allkit.inference.predict`` (channels-last, batches read from the cache in one go) and
``allkit.train.Trainer`` (channels-last, augmentation on whole batches), with ``allkit.perf.tune_malloc``
(what every allkit entry point applies). Each variant runs in its own subprocess, so process-wide settings such as
``mallopt`` cannot leak into the baseline (``MALLOC_*`` / ``GLIBC_TUNABLES`` are removed from its
environment). ``--ablation`` adds variants that switch one choice off (or on) at a time.

    ALLKIT_DATA=/path/to/data python benchmarks/throughput.py            # real cells
    python benchmarks/throughput.py --backbone efficientnet_b0 --ablation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "2147483647",
    "MALLOC_TOP_PAD_": "1073741824",
}
_TUNING_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
    "ALLKIT_TUNE_MALLOC",
)

# name -> (pipeline, options, extra environment, what it shows)
VARIANTS = {
    "baseline": ("plain", {}, {}, "plain fp32 NCHW loop"),
    "allkit": ("allkit", {}, {}, "all allkit choices (defaults)"),
}
ABLATION = {
    "allkit-no-malloc": ("allkit", {}, {"ALLKIT_TUNE_MALLOC": "0"}, "allkit without tune_malloc"),
    "allkit-nchw": ("allkit", {"channels_last": False}, {}, "allkit without channels-last"),
    "allkit-fuse": ("allkit", {"fuse": True}, {}, "allkit + batch-norm folded into the convolutions (torch.fx)"),
    "allkit-env-malloc": (
        "allkit",
        {},
        {"ALLKIT_TUNE_MALLOC": "0", **MALLOC_ENV},
        "allkit, MALLOC_* env vars instead of mallopt",
    ),
    "baseline-env-malloc": ("plain", {}, MALLOC_ENV, "baseline + MALLOC_* env vars only"),
    "baseline-mallopt": ("plain", {"mallopt": True}, {}, "baseline + tune_malloc only"),
    "allkit-bf16": ("allkit", {"amp": True}, {}, "allkit + bf16 autocast"),
}


# --------------------------------------------------------------------------------------------------
# Worker (one subprocess per variant)
# --------------------------------------------------------------------------------------------------


def _datasets(frame_csv: str, size: int, cache_dir: str | None):
    import pandas as pd

    from allkit.data import build_cache

    frame = pd.read_csv(frame_csv, dtype={"subject": str, "fold": str})
    cache = build_cache(frame, size=size, folder=cache_dir, progress=False)
    return cache, frame


def _build(backbone: str, weights):
    import torch

    from allkit.models import PooledFeatures, build_model, get_backbone

    torch.manual_seed(0)
    model = build_model(backbone, weights=weights)
    return model, PooledFeatures(model, backbone), get_backbone(backbone).mean_std


class _PerItem:
    """A dataset seen the plain way: one ``__getitem__`` per cell (no batched ``__getitems__``)."""

    def __init__(self, dataset, transform=None):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return (self.transform(image) if self.transform else image), label


def _plain_input(images, mean, std):
    import torch

    x = images.float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _plain_extract(extractor, dataset, batch_size, mean, std, limit=None):
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_PerItem(dataset), batch_size=batch_size, shuffle=False)
    out, n = [], 0
    extractor.eval()
    with torch.inference_mode():
        for i, (images, _labels) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            out.append(extractor(_plain_input(images, mean, std)))
            n += images.shape[0]
    return torch.cat(out), n


def _plain_train(model, dataset, batch_size, mean, std, optimizer, limit=None):
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    from allkit.constants import FLIP_PROBABILITY, ROTATION_DEGREES

    augment = v2.Compose(
        [
            v2.RandomHorizontalFlip(FLIP_PROBABILITY),
            v2.RandomVerticalFlip(FLIP_PROBABILITY),
            v2.RandomRotation(ROTATION_DEGREES),
        ]
    )
    loader = DataLoader(
        _PerItem(dataset, augment), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    model.train()
    n = 0
    for i, (images, labels) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        loss = F.cross_entropy(model(_plain_input(images, mean, std)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += images.shape[0]
    return n


def run_worker(args) -> dict:
    import copy

    import torch

    import allkit.inference
    from allkit import perf
    from allkit.data import CellDataset
    from allkit.models import PooledFeatures

    options = json.loads(args.options)
    plain = args.pipeline == "plain"
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    malloc = perf.tune_malloc() if not plain or options.get("mallopt") else False  # before the big allocations
    if options.get("channels_last") is False:  # the ablation: allkit's loop in the default NCHW layout
        allkit.inference.channels_last = lambda device: False
    cache, frame = _datasets(args.frame_csv, args.size, args.cache_dir)
    weights = None if str(args.weights).lower() == "none" else args.weights
    model, extractor, (mean, std) = _build(args.backbone, weights)
    result = {"variant": args.variant, "threads": torch.get_num_threads(), "malloc": malloc}
    extract_ds = CellDataset(cache, frame.iloc[: args.n_images])
    train_ds = CellDataset(cache, frame.iloc[: args.train_images])
    bs = args.batch_size

    if "extract" in args.parts:
        times = []
        if plain:
            _plain_extract(extractor, extract_ds, bs, mean, std, limit=1)  # warm-up
            for _ in range(args.repeats):
                start = clock()
                features, n = _plain_extract(extractor, extract_ds, bs, mean, std)
                times.append(clock() - start)
        else:
            runner = extractor
            if options.get("fuse"):
                from torch.fx.experimental.optimization import fuse

                runner = PooledFeatures(fuse(copy.deepcopy(model).eval()), args.backbone)
            kwargs = dict(batch_size=bs, device="cpu", normalize=(mean, std), amp=options.get("amp", "auto"))
            allkit.inference.predict(runner, CellDataset(cache, frame.iloc[:bs]), **kwargs)  # warm-up
            for _ in range(args.repeats):
                start = clock()
                features = torch.from_numpy(allkit.inference.predict(runner, extract_ds, **kwargs))
                times.append(clock() - start)
            n = features.shape[0]
        result["extract_ips"] = [n / t for t in times]
        if args.features_out:
            import numpy as np

            np.save(args.features_out, features[:bs].float().numpy())

    if "train" in args.parts:
        ips = []
        if plain:
            optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
            _plain_train(model, train_ds, bs, mean, std, optimizer, limit=1)  # warm-up
            for _ in range(args.repeats):
                start = clock()
                n = _plain_train(model, train_ds, bs, mean, std, optimizer)
                ips.append(n / (clock() - start))
        else:
            from allkit.train import Trainer

            def trainer(max_batches=None):
                return Trainer(
                    epochs=1,
                    batch_size=bs,
                    device="cpu",
                    progress=False,
                    normalize=(mean, std),
                    amp=options.get("amp", "auto"),
                    max_batches=max_batches,
                )

            trainer(max_batches=1).fit(model, train_ds)  # warm-up
            for _ in range(args.repeats):
                start = clock()
                record = trainer().fit(model, train_ds).history_[0]
                ips.append(record["train_images"] / (clock() - start))
        result["train_ips"] = ips
    return result


# --------------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------------


def _default_backbone() -> tuple[str, str | None]:
    try:
        from allkit.models import build_model

        build_model("efficientnet_lite0", "offline")
        return "efficientnet_lite0", "offline"
    except Exception:
        return "efficientnet_b0", None


def _prepare_frame(args, workdir: Path) -> tuple[str, str]:
    from allkit.data import build_cache, load_cnmc
    from allkit.study.workspace import data_root

    root, source = data_root(args.data)
    frame = load_cnmc(root).frame
    n = max(args.n_images, args.train_images)
    if len(frame) < n:
        raise SystemExit(f"{root} has {len(frame)} labelled cells; --n-images/--train-images ask for {n}")
    sample = frame.sample(n=n, random_state=0).reset_index(drop=True)
    build_cache(sample, size=args.size, folder=args.cache_dir, progress=False)  # decode once, here
    path = workdir / "cells.csv"
    sample.to_csv(path, index=False)
    return str(path), f"{source}: {root}"


def _spawn(name: str, args, frame_csv: str, workdir: Path, parts: list[str]) -> dict:
    pipeline, options, extra_env, _ = {**VARIANTS, **ABLATION}[name]
    env = {k: v for k, v in os.environ.items() if k not in _TUNING_ENV}
    env.update(extra_env)
    env.setdefault("PYTHONPATH", str(ROOT))
    features = workdir / f"{name}.npy"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--variant",
        name,
        "--pipeline",
        pipeline,
        "--options",
        json.dumps(options),
        "--frame-csv",
        frame_csv,
        "--features-out",
        str(features),
        "--parts",
        ",".join(parts),
        "--backbone",
        args.backbone,
        "--weights",
        str(args.weights),
        "--n-images",
        str(args.n_images),
        "--train-images",
        str(args.train_images),
        "--batch-size",
        str(args.batch_size),
        "--size",
        str(args.size),
        "--repeats",
        str(args.repeats),
        "--clock",
        args.clock,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["features"] = str(features) if features.exists() else None
    return result


def _cpu_flags() -> set[str]:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def _median(values):
    return statistics.median(values) if values else float("nan")


def _feature_difference(a: str | None, b: str | None) -> float | None:
    if not (a and b):
        return None
    import numpy as np

    x, y = np.load(a), np.load(b)
    return float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default=None, help="folder holding C-NMC_Leukemia/ (default: $ALLKIT_DATA, else the synthetic set)"
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help="default: efficientnet_lite0 with its offline ImageNet weights if installed, "
        "else efficientnet_b0 with random weights",
    )
    parser.add_argument("--weights", default=None, help="None/'none', 'offline', 'imagenet' or a .pth path")
    parser.add_argument("--n-images", type=int, default=200, help="cells per feature-extraction pass")
    parser.add_argument("--train-images", type=int, default=80, help="cells per training pass")
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per workload (median reported)")
    parser.add_argument("--parts", default="extract,train")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads in every variant (default: torch's own choice)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="'cpu': images per second of process CPU time; with --threads 1 this is "
        "insensitive to other programs sharing the CPU (use on busy machines)",
    )
    parser.add_argument("--cache-dir", default=None, help="where the uint8 cell cache goes (default: allkit's)")
    parser.add_argument("--ablation", action="store_true", help="also time one-change-at-a-time variants")
    parser.add_argument("--variants", default=None, help="comma-separated subset of variants to run")
    parser.add_argument("--json", default=None, help="also write all results to this file")
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--frame-csv", help=argparse.SUPPRESS)
    parser.add_argument("--features-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]

    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    if args.backbone is None:
        args.backbone, default_weights = _default_backbone()
        if args.weights is None:
            args.weights = default_weights
    started = time.perf_counter()
    names = list(VARIANTS) + (list(ABLATION) if args.ablation else [])
    if args.variants:
        names = [n for n in args.variants.split(",") if n]
        unknown = [n for n in names if n not in {**VARIANTS, **ABLATION}]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {list({**VARIANTS, **ABLATION})}")

    import torch

    with tempfile.TemporaryDirectory(prefix="allkit-bench-") as tmp:
        workdir = Path(tmp)
        frame_csv, source = _prepare_frame(args, workdir)
        flags = _cpu_flags()
        print(f"data       {source}")
        print(f"model      {args.backbone} (weights={args.weights}), {args.size} px, batch {args.batch_size}")
        print(
            f"machine    {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
            f"{torch.__version__}, torch threads {torch.get_num_threads()}, bf16 hw: "
            f"{'amx_bf16' if 'amx_bf16' in flags else 'avx512_bf16' if 'avx512_bf16' in flags else 'none'}"
        )
        print(
            f"workload   extraction {args.n_images} cells/pass, training {args.train_images} cells/pass, "
            f"median of {args.repeats} passes, {args.clock} clock, threads {args.threads or 'default'}; "
            f"load average {os.getloadavg()[0]:.1f}\n",
            flush=True,
        )
        results = {}
        for name in names:
            results[name] = _spawn(name, args, frame_csv, workdir, args.parts)
            r = results[name]
            print(
                f"  {name:22s} done: extract {_median(r.get('extract_ips', [])):7.1f} img/s   "
                f"train {_median(r.get('train_ips', [])):6.1f} img/s",
                flush=True,
            )
        base = results.get("baseline")
        print()
        header = f"{'variant':22s} {'extract img/s':>14s} {'x baseline':>10s} {'train img/s':>12s} {'x baseline':>10s}"
        print(header)
        print("-" * len(header))
        for name, r in results.items():
            e, t = _median(r.get("extract_ips", [])), _median(r.get("train_ips", []))
            be = _median(base.get("extract_ips", [])) if base else float("nan")
            bt = _median(base.get("train_ips", [])) if base else float("nan")

            def cell(value, ratio, width):
                if value != value:  # nan: that workload was not run
                    return f"{'-':>{width}s} {'-':>10s}"
                return f"{value:{width}.1f} {ratio:9.2f}x"

            print(f"{name:22s} {cell(e, e / be, 14)} {cell(t, t / bt, 12)}")
            if base and name != "baseline":
                diff = _feature_difference(base.get("features"), r.get("features"))
                if diff is not None:
                    r["feature_rel_diff"] = diff
        diffs = {n: r["feature_rel_diff"] for n, r in results.items() if "feature_rel_diff" in r}
        if diffs:
            print(
                "\nmax |features - baseline features| / max |baseline features| (first batch): "
                + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items())
            )
        tuned = (results.get("allkit") or {}).get("malloc")
        if tuned:
            print(f"tune_malloc in the allkit worker: {tuned}")
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
