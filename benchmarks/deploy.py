"""Low-power deployment, measured: size, CPU latency, throughput and accuracy of PyTorch fp32 vs ONNX Runtime
fp32 vs ONNX Runtime int8 (static QDQ and dynamic) for four backbones. A thin CLI over
:func:`allkit.deploy.deployment_report` (the book's chapter 12 calls the same code).

What is measured, per backbone (224 px by default):

* model size: the fp32 and int8 ``.onnx`` files (MB = 10^6 bytes), and PyTorch's state_dict tensors;
* per-cell latency at batch 1 (median and p90 over up to ``--runs`` calls after warm-up), with 1 thread (a
  weak machine) and with all usable cores;
* throughput (cells/s) at batch 32;
* accuracy change: for a fine-tuned model (``--model NAME=DIR``; by default the sample run's
  EfficientNet-Lite0, the newest paper-recipe run in the store's ``runs/sample/``), accuracy of each variant on the run's test cells and its
  agreement with PyTorch. Backbones without a fine-tuned model here (no ImageNet download offline) are
  measured with random weights for size and latency only; their accuracy reads
  "n/a (no fine-tuned model offline)". With internet (Colab), pass fine-tuned folders with ``--model``.

Static int8 is calibrated on training cells of the run (never its test cells).

    python benchmarks/deploy.py                         # full: 4 backbones, 224 px -> runs/deploy/deploy.json
    python benchmarks/deploy.py --quick                 # a smoke run: fewer repetitions
    python benchmarks/deploy.py --model efficientnet_b0=RUN/model --run RUN   # RUN: e.g. from `allkit reproduce --out`
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from allkit.deploy import DEPLOY_BACKBONES, deployment_report, summary_table  # noqa: E402
from allkit.errors import AllkitError  # noqa: E402
from allkit.files import write_json  # noqa: E402
from allkit.perf import speed_up  # noqa: E402
from allkit.study.store import CONFIG_FILE, open_run  # noqa: E402


def _models(values: list[str]) -> dict[str, str]:
    models = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise AllkitError(f"--model {value!r}; expected NAME=DIR, e.g. efficientnet_lite0=run/model")
        models[name] = folder
    return models


def _run_folder(folder: Path) -> Path:
    """``folder`` if it is a run, else its newest paper-recipe run with a saved model (a profile's store folder)."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    runs = [p for p in folder.glob("paper-*") if (p / CONFIG_FILE).is_file() and (p / "model").is_dir()]
    return max(runs, key=lambda p: (p / CONFIG_FILE).stat().st_mtime) if runs else folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=list(DEPLOY_BACKBONES))
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a fine-tuned saved model per backbone (default: efficientnet_lite0=RUN/model)",
    )
    parser.add_argument(
        "--run",
        default=str(ROOT / "runs" / "sample"),
        help="finished run (or a profile's folder of the run store: its newest paper-recipe run) whose test cells "
        "(accuracy) and training cells (int8 calibration) are used; '' for none",
    )
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per measurement")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap per batch-1 measurement")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batch-runs", type=int, default=3, help="timed batches per throughput measurement")
    parser.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts ('all': usable cores)")
    parser.add_argument("--int8", nargs="+", default=["static", "dynamic"], choices=["static", "dynamic"])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke run, numbers are rough)")
    parser.add_argument("--note", help="recorded in the JSON, e.g. that another job shared the CPU")
    parser.add_argument("--out", default=str(ROOT / "runs" / "deploy" / "deploy.json"))
    parser.add_argument("--keep-onnx", action="store_true", help="keep the .onnx files next to --out")
    args = parser.parse_args(argv)

    speed_up()  # as every allkit entry point: tuned malloc, torch threads = the usable cores ("all" below)
    try:
        models = _models(args.model)
        test = calibration = None
        if args.run:
            run_dir = _run_folder(Path(args.run))
            if (run_dir / CONFIG_FILE).is_file() and (run_dir / "model").is_dir():
                run = open_run(run_dir).load(progress=True)
                models.setdefault(run.backbone, str(run_dir / "model"))
                test, calibration = run.data.datasets["test"], run.data.datasets["train"]
            else:
                print(f"no finished run in {run_dir}: no accuracy, int8 calibrated on noise", file=sys.stderr)
        threads = [None if t == "all" else int(t) for t in args.threads]
        runs, batch_runs, max_seconds, warmup = args.runs, args.batch_runs, args.max_seconds, 5
        if args.quick:
            runs, batch_runs, max_seconds, warmup = min(runs, 10), 1, min(max_seconds, 5.0), 2
        out = Path(args.out)
        report = deployment_report(
            args.backbones,
            image_size=args.size,
            models=models,
            test=test,
            calibration=calibration,
            threads=threads,
            runs=runs,
            warmup=warmup,
            max_seconds=max_seconds,
            batch=args.batch,
            batch_runs=batch_runs,
            int8_modes=args.int8,
            note=args.note,
            out_dir=out.parent / "onnx" if args.keep_onnx else None,
            progress=True,
        )
    except AllkitError as err:
        print(f"deploy.py: error: {err}", file=sys.stderr)
        return 2
    report["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    report["quick"] = bool(args.quick)
    write_json(out, report, indent=2)

    machine = report["machine"]
    print(
        f"\nCPU {machine['cpu']} ({machine['usable_cpus']} usable of {machine['logical_cpus']} logical CPUs; "
        f"int8 features {', '.join(machine['int8_cpu_features']) or 'none'}), onnxruntime "
        f"{machine['versions']['onnxruntime']}, torch {machine['versions']['torch']}, load average at start "
        f"{machine.get('load_average_at_start')}, at end {machine['load_average_1_5_15']}"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        print(summary_table(report).drop(columns=["weights"]).to_string(index=False))
    for name, weights in {r["backbone"]: r["weights"] for r in report["rows"]}.items():
        print(f"  {name}: {weights}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
