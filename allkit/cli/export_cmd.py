"""``allkit export --onnx``: the fine-tuned CNN of a saved model as ONNX (fp32, optionally int8)."""

import json
from pathlib import Path

from allkit.errors import AllkitError

EXPORT_EXAMPLES = """\
examples:
  allkit export --onnx --model run/model --out deploy/model.onnx      # run: `allkit reproduce --out run`
  allkit export --onnx --model run/model --out deploy/model.onnx --int8     # + deploy/model.int8.onnx
  allkit export --onnx --model run/model --out m.onnx --int8 --calibration ../shared/data \\
      --check ../shared/data/C-NMC_Leukemia/training_data/fold_1

The ONNX graph is the fine-tuned CNN alone: float32 NCHW RGB in [0, 1] (cells centre-cropped and resized as
in training, then / 255; the normalisation is inside the graph) -> softmax probabilities [HEM, ALL], any
batch size. The hybrid's XGBoost stage is not exported: it stays in MODEL/xgboost.json (XGBoost's own
format). Each .onnx gets a manifest next to it (model.onnx.json). Needs: pip install 'allkit[onnx]'.
"""


def register(commands, formatter) -> None:
    exp = commands.add_parser(
        "export",
        help="the fine-tuned CNN as ONNX for CPU-only machines (fp32, int8)",
        description="Export the fine-tuned CNN of a saved model (reproduce/fit-hybrid) "
        "to ONNX, optionally quantised to int8, and check it against PyTorch.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=formatter,
    )
    exp.add_argument("--onnx", action="store_true", help="export to ONNX (the only format so far)")
    exp.add_argument("--model", required=True, help="model folder written by reproduce/fit-hybrid")
    exp.add_argument("--out", required=True, help="the .onnx file to write (its manifest: OUT.json)")
    exp.add_argument("--int8", action="store_true", help="also write an int8 model next to OUT (<stem>.int8.onnx)")
    exp.add_argument(
        "--int8-mode",
        choices=("static", "dynamic", "weights"),
        default="static",
        help="static: QDQ, activations calibrated on training cells (fast on CPUs); dynamic: "
        "activations quantised at run time (measured slower than fp32 for these CNNs); weights: int8 weights, "
        "fp32 arithmetic (the same numbers in every ONNX Runtime build)",
    )
    exp.add_argument(
        "--calibration",
        metavar="DATA",
        help="cells to calibrate static int8 on (C-NMC folder or a folder with all/ and hem/); "
        "default: the training cells of the run MODEL belongs to (runs/<name>/model)",
    )
    exp.add_argument("--calibration-cells", type=int, default=32, help="cells used for calibration")
    exp.add_argument(
        "--check",
        metavar="DATA",
        help="compare ONNX and PyTorch predictions on these cells (folder with all/ and hem/)",
    )
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset")
    exp.add_argument("--threads", type=int, help="onnxruntime threads for --check (default: all usable cores)")
    exp.add_argument("--json", action="store_true", help="print one JSON object")
    exp.set_defaults(handler=run_export)


def _cells(hybrid, data, progress: bool):
    """Every labelled cell under the folder ``data``, cached the way ``hybrid``'s training cells were."""
    from allkit.study.score import folder_cells

    return folder_cells(hybrid, data, allow_unknown_subjects=True, progress=progress)[1]


def _run_training_cells(model, progress: bool):
    """The training cells of the run the model folder belongs to (``runs/<name>/model``)."""
    from allkit.study.store import CONFIG_FILE, open_run

    run_dir = Path(model).resolve().parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise AllkitError(
            f"static int8 needs calibration cells: {model} is not inside a run folder (no ../{CONFIG_FILE}); "
            "pass --calibration DATA (training cells) or --int8-mode dynamic"
        )
    return open_run(run_dir).load(progress=progress).data.datasets.get("train")


def run_export(args) -> int:
    from allkit.deploy import export_saved_model
    from allkit.deploy.saved import load_hybrid
    from allkit.files import refuse_overlap

    if not args.onnx:
        raise AllkitError("choose an export format: --onnx (the only one so far)")
    if args.calibration and (not args.int8 or args.int8_mode != "static"):
        raise AllkitError("--calibration is only used with --int8 (static mode): the other modes need no calibration")
    if args.calibration_cells < 1:
        raise AllkitError(f"--calibration-cells {args.calibration_cells}; expected at least 1 cell to calibrate on")
    refuse_overlap(args.out, {"the model folder": args.model})  # before the cells are read (export checks it too)
    progress, calibration, check = not args.json, None, None
    hybrid = load_hybrid(args.model) if args.check or args.calibration else None  # once, for both
    if args.int8 and args.int8_mode == "static":
        calibration = (
            _cells(hybrid, args.calibration, progress)
            if args.calibration
            else _run_training_cells(args.model, progress)
        )
    if args.check:
        check = _cells(hybrid, args.check, progress)
    result = export_saved_model(
        args.model,
        args.out,
        int8=args.int8,
        int8_mode=args.int8_mode,
        calibration=calibration,
        n_calibration=args.calibration_cells,
        opset=args.opset,
        check=check,
        threads=args.threads,
        progress=not args.json,
    )
    summary = {
        "onnx": str(result.onnx),
        "bytes": result.manifest["bytes"],
        "sha256": result.manifest["sha256"],
        "int8": None if result.int8 is None else str(result.int8),
        "int8_bytes": None if result.int8_manifest is None else result.int8_manifest["bytes"],
        "int8_error": result.int8_error,
        "checks": result.checks,
        "backbone": result.manifest["backbone"],
        "image_size": result.manifest["image_size"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {result.onnx} ({result.manifest['bytes'] / 1e6:.1f} MB, fp32, {result.manifest['backbone']}, "
            f"{result.manifest['image_size']} px) and its manifest"
        )
        if result.int8 is not None:
            quant = result.int8_manifest["quantization"]
            print(
                f"wrote {result.int8} ({result.int8_manifest['bytes'] / 1e6:.1f} MB, int8 {quant['mode']}"
                + (f", calibrated on {quant['calibration']}" if quant.get("calibration") else "")
                + ")"
            )
        for label, check in result.checks.items():
            print(
                f"check {label} on {check['n']} cells: agreement with PyTorch {check['agreement']:.4f}, "
                f"max |Δp(ALL)| {check['max_abs_diff']:.2e}, accuracy ONNX {check['accuracy_onnx']:.3f} "
                f"vs PyTorch {check['accuracy_pytorch']:.3f}"
            )
        print(
            "the XGBoost stage is not in the ONNX graph: it stays in "
            f"{args.model.rstrip('/')}/xgboost.json (XGBoost's JSON format)"
        )
    if result.int8_error:
        raise AllkitError(f"the fp32 model was written, but int8 failed: {result.int8_error}")
    return 0
