"""``allkit reproduce | train | fit-hybrid | evaluate | experiments | gradcam``: thin wrappers over the study layer.
Registering the commands imports nothing heavy (``allkit --help`` answers at once); each handler imports what it
runs."""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from allkit.study.config import PRESETS, RECIPES

REPRODUCE_EXAMPLES = """\
examples:
  allkit reproduce --profile ci --data ../shared/data --out runs/ci
  allkit reproduce --profile sample --data ../shared/data --backbone efficientnet_lite0 --weights offline --out runs/sample
  allkit reproduce --profile paper --data data --out runs/paper          # Colab GPU, full C-NMC
  allkit reproduce --profile sample --data ../shared/data --recipe improved --out runs/improved
"""
EVALUATE_EXAMPLES = """\
examples:
  allkit evaluate --model runs/ci/model --data ../shared/data/C-NMC_Leukemia/training_data/fold_1
  allkit evaluate --model runs/ci/model --data my_cells/ --json        # my_cells/{all,hem}/...
"""
TRAIN_EXAMPLES = """\
examples:
  allkit train --profile ci --data ../shared/data --out runs/cnn
  allkit fit-hybrid --cnn runs/cnn --out runs/cnn/model
"""
EXPERIMENTS_EXAMPLES = """\
examples:
  allkit experiments --profile ci --data ../shared/data
  allkit experiments --profile sample --data ../shared/data       # what notebooks 09-11 show (hours on a CPU)
  allkit experiments --chapter 12 --profile sample --data ../shared/data   # notebook 12's 14 fine-tunes
"""
CHAPTERS = ("9-11", "12", "all")
GRADCAM_EXAMPLES = """\
examples:
  allkit gradcam cell1.bmp cell2.bmp --model runs/ci/model --out heatmaps/
  allkit gradcam data/C-NMC_Leukemia/training_data/fold_0/all/UID_11_10_1_all.bmp --model runs/ci/model \\
      --target ALL --out heatmaps/
"""


def _common(parser, *, data_help="C-NMC root (default: ALLKIT_DATA, data/, synthetic)") -> None:
    parser.add_argument("--data", help=data_help)
    parser.add_argument(
        "--test-data",
        help="a folder of other people's cells to test on; --data then gives training and validation only "
        "(default: ALLKIT_TEST_DATA; none: the test part is split from --data)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PRESETS),
        help="run profile (default: ALLKIT_PROFILE; paper on Colab with a GPU, else sample)",
    )
    parser.add_argument("--backbone", help="backbone name (default: the profile's, efficientnet_b0)")
    parser.add_argument("--weights", help="imagenet | offline | random | path/to/weights.pth (default: the profile's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _recipe(parser) -> None:
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="paper",
        help="how the CNN is fine-tuned and predicts: the paper's; 'improved' (selected on validation "
        "subjects in notebook 11), 'robust' (chosen by cross-validation over people in notebook 12), or one change of "
        "notebook 12 (across-*)",
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (so that ``--epochs 0`` is refused before any work)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _overwrite(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace the results already in --out")


def register(commands, formatter) -> None:
    rep = commands.add_parser(
        "reproduce", help="the whole method end to end", epilog=REPRODUCE_EXAMPLES, formatter_class=formatter
    )
    _common(rep)
    _recipe(rep)
    rep.add_argument(
        "--out",
        help="output folder (config.json, cnn.pt, outputs/, metrics.json, model/, figures; default: the run "
        "store, RUNS/<profile>/<recipe>-<key>)",
    )
    _overwrite(rep)
    rep.set_defaults(handler=run_reproduce)

    train = commands.add_parser(
        "train", help="fine-tune the CNN only", epilog=TRAIN_EXAMPLES, formatter_class=formatter
    )
    _common(train)
    _recipe(train)
    train.add_argument("--out", required=True, help="output folder (config.json, cnn.pt, outputs/)")
    train.add_argument("--epochs", type=positive_int, help="override the profile's epochs")
    _overwrite(train)
    train.set_defaults(handler=run_train)

    fit = commands.add_parser(
        "fit-hybrid", help="XGBoost on a trained CNN's features", epilog=TRAIN_EXAMPLES, formatter_class=formatter
    )
    fit.add_argument("--cnn", required=True, help="folder written by `allkit train`")
    fit.add_argument("--out", help="model folder (default: CNN_FOLDER/model)")
    fit.add_argument("--quiet", action="store_true")
    _overwrite(fit)
    fit.set_defaults(handler=run_fit_hybrid)

    ev = commands.add_parser(
        "evaluate", help="predict and score a C-NMC-layout folder", epilog=EVALUATE_EXAMPLES, formatter_class=formatter
    )
    ev.add_argument("--model", required=True, help="model folder written by reproduce/fit-hybrid")
    ev.add_argument("--data", required=True, help="C-NMC folder, or any folder with all/ and hem/")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--allow-unknown-subjects", action="store_true")
    ev.set_defaults(handler=run_evaluate)

    exp = commands.add_parser(
        "experiments",
        help="the controlled fine-tunes of notebooks 09-12",
        epilog=EXPERIMENTS_EXAMPLES,
        formatter_class=formatter,
    )
    exp.add_argument("--data", help="C-NMC root (default: ALLKIT_DATA, data/, synthetic)")
    exp.add_argument("--profile", choices=sorted(PRESETS), help="run profile (default: ALLKIT_PROFILE or sample)")
    exp.add_argument("--runs", help="the run store (default: ALLKIT_RUNS or runs/); runs go to RUNS/<profile>/")
    exp.add_argument(
        "--chapter",
        choices=CHAPTERS,
        default="9-11",
        help="whose fine-tunes: notebooks 09-11 (default), notebook 12, or all of them",
    )
    exp.add_argument("--quiet", action="store_true", help="no progress bars")
    exp.set_defaults(handler=run_experiments)

    cam = commands.add_parser(
        "gradcam", help="Grad-CAM heatmaps for image files", epilog=GRADCAM_EXAMPLES, formatter_class=formatter
    )
    cam.add_argument("images", nargs="+", help="image files")
    cam.add_argument("--model", required=True, help="model folder written by reproduce/fit-hybrid")
    cam.add_argument("--out", required=True, help="folder for <name>_gradcam.png")
    cam.add_argument("--target", default="predicted", help="predicted | ALL | HEM | class index")
    cam.set_defaults(handler=run_gradcam)


def _with_ci(result: dict, key: str) -> str:
    """``0.812 [0.751, 0.860]``: a score with its bootstrap interval, where the result has one."""
    ci = result["ci"].get(key) or {}
    interval = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci.get("low") is not None else ""
    return f"{result[key]:.3f}{interval}"


def _print_metrics(title: str, metrics: dict) -> None:
    import pandas as pd

    print(
        f"\n{title}: accuracy {metrics['accuracy']:.3f} "
        f"(95% CI {metrics['ci']['accuracy']['low']:.3f}-{metrics['ci']['accuracy']['high']:.3f}, "
        f"bootstrap over subjects), weighted F1 {metrics['weighted_f1']:.3f}, n = {metrics['n']}"
    )

    # beside accuracy, what the larger class alone would score and the scores it cannot carry
    print(
        f"  balanced accuracy {_with_ci(metrics, 'balanced_accuracy')}"
        + (f", ROC AUC {_with_ci(metrics, 'roc_auc')}" if metrics.get("roc_auc") is not None else "")
        + f"; always answering the larger class: accuracy {metrics['majority_baseline']:.3f}, balanced 0.500;"
        f" {metrics['n_subjects']} people"
    )
    print(format_table2(pd.DataFrame(metrics["table2"]).T))


def config_of(args):
    """The configuration the options name: the profile, the recipe, then the command line's settings (a backbone
    or weights named there are used as they are: no offline fallback)."""
    from dataclasses import replace

    from allkit.study.config import get_config

    config = get_config(args.profile, args.recipe, epochs=getattr(args, "epochs", None))
    if args.backbone is not None or args.weights is not None:
        weights = args.weights if args.weights is not None else config.weights
        weights = None if weights is not None and weights.lower() in ("none", "random") else weights
        config = replace(config, backbone=args.backbone or config.backbone, weights=weights, fallback_backbone=None)
    return config


def run_options(args) -> dict:
    """What ``reproduce`` and ``train`` pass to the run store: the configuration, the data, where to write."""
    return {
        "config": config_of(args),
        "data": args.data,
        "out": args.out,
        "overwrite": args.overwrite,
        "device": args.device,
        "progress": not args.quiet,
        "test_data": args.test_data,
    }


def run_reproduce(args) -> int:
    from allkit.study.store import reproduce

    run = reproduce(**run_options(args))
    card, metrics = run.card, run.metrics
    print(
        f"run card: profile {card['profile']}, recipe {args.recipe}, data {card['data']} ({card['data_source']}"
        f"{', SYNTHETIC' if card['synthetic'] else ''}), backbone {card['backbone']} ({card['weights_note']}), "
        f"device {card['device']}"
    )
    _print_metrics("CNN alone (test)", metrics["cnn"])
    _print_metrics("Hybrid CNN -> XGBoost (test)", metrics["hybrid"])
    print(f"\nwrote {run.dir / 'metrics.json'}, {run.dir / 'model'}/ and figures")
    return 0


def run_train(args) -> int:
    from allkit.study.store import run

    done = run(**run_options(args))
    last = done.history[-1]
    print(
        f"trained {done.backbone} for {len(done.history)} epoch(s): train acc {last['train_acc']:.3f}"
        + (f", val acc {last['val_acc']:.3f}" if last.get("val_acc") is not None else "")
        + f"; wrote {done.dir / 'cnn.pt'}"
    )
    return 0


def run_fit_hybrid(args) -> int:
    from allkit.study.folders import claim_folder
    from allkit.study.store import CNN_FILE, CONFIG_FILE, open_run

    cnn = Path(args.cnn)
    out = Path(args.out) if args.out else cnn / "model"
    inputs = {f"the CNN's {name}": cnn / name for name in (CNN_FILE, CONFIG_FILE, "outputs")}
    with claim_folder(out, overwrite=args.overwrite, inputs=inputs) as staging:
        done = open_run(cnn)
        hybrid = done.hybrid()
        hybrid.save(staging)
    if done.config.threshold == "validation":
        print(f"decision threshold on P(ALL), chosen on the validation cells: {hybrid.threshold:.3f}")
    for name in ("val", "test"):
        if name in done.meta["parts"]:
            print(f"hybrid accuracy on {name}: {done.score(name, n_boot=1)['accuracy']:.3f}")
    print(f"wrote {out}")
    return 0


def run_evaluate(args) -> int:
    import pandas as pd

    from allkit.study.score import evaluate_folder

    result = evaluate_folder(
        args.model, args.data, allow_unknown_subjects=args.allow_unknown_subjects, progress=not args.json
    )
    if result["seen_subjects"]:
        print(
            f"allkit: WARNING: {len(result['seen_subjects'])} of the subjects in {args.data} were used to train or "
            f"select this model ({', '.join(result['seen_subjects'][:6])}): these scores are not on unseen people",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
        return 0
    with_ci = partial(_with_ci, result)
    print(
        f"{result['n']} cells of {result['n_subjects']} people from {result['data']}:\n"
        f"  accuracy {with_ci('accuracy')} (always answering the larger class: {result['majority_baseline']:.3f})\n"
        f"  balanced accuracy {with_ci('balanced_accuracy')}, weighted F1 {with_ci('weighted_f1')}"
        + (f", ROC AUC {with_ci('roc_auc')}" if result.get("roc_auc") is not None else "")
        + f"\n  per person: mean accuracy {result['subject_mean_accuracy']:.3f}; diagnosis (mean P(ALL) > 0.5) right "
        f"for {round(result['patient_level']['accuracy'] * result['n_subjects'])} of {result['n_subjects']}\n"
        "  [95% intervals: bootstrap over people]"
    )
    print(format_table2(pd.DataFrame(result["table2"]).T))
    cm = result["confusion_matrix"]
    print("confusion matrix (rows true, columns predicted):")
    print(f"          HEM    ALL\n  HEM {cm[0][0]:6d} {cm[0][1]:6d}\n  ALL {cm[1][0]:6d} {cm[1][1]:6d}")
    return 0


def experiment_configs(chapter: str, config) -> list:
    """The fine-tunes ``allkit experiments --chapter`` trains, each once (chapters share the paper's)."""
    from allkit.study.across_study import across_configs
    from allkit.study.recipe_study import study_configs

    configs = []
    if chapter in ("9-11", "all"):
        configs += study_configs(config)
    if chapter in ("12", "all"):
        configs += across_configs(config)
    return list(dict.fromkeys(configs))


def run_experiments(args) -> int:
    from allkit.study.config import get_config
    from allkit.study.store import run

    configs = experiment_configs(args.chapter, get_config(args.profile))
    for i, config in enumerate(configs, 1):
        done = run(config, args.data, runs=args.runs, progress=not args.quiet)
        last = done.history[-1]
        print(f"[{i}/{len(configs)}] {config.recipe}: val accuracy (CNN, last epoch) {last['val_acc']:.3f}; {done.dir}")
    return 0


def run_gradcam(args) -> int:
    from allkit.hybrid import HybridClassifier
    from allkit.study.heatmaps import gradcam_files, save_overlays

    hybrid = HybridClassifier.load(args.model)
    target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    result = gradcam_files(hybrid, args.images, target)
    paths = save_overlays(result, [Path(p).stem for p in args.images], args.out)
    for path, pred, prob in zip(paths, result.predictions, result.probabilities, strict=True):
        print(f"{path}: predicted {('HEM', 'ALL')[pred] if pred < 2 else pred} (p={prob[pred]:.3f})")
    return 0


def format_table2(table, decimals: int = 2) -> str:
    """Table 2 (:func:`allkit.metrics.classification_table`) as Markdown, rounded like the paper."""
    import pandas as pd

    lines = ["| | precision | recall | f1-score | support |", "|:--|--:|--:|--:|--:|"]
    for name, row in table[["precision", "recall", "f1-score", "support"]].iterrows():
        cells = [
            "" if pd.isna(v) else str(int(v)) if col == "support" else f"{v:.{decimals}f}" for col, v in row.items()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
