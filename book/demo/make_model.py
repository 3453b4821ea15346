"""Make the model and the example list of the book's in-browser demo (book/demo.md) from chapter 13's run.

    ALLKIT_DATA=../shared/data ALLKIT_RUNS=runs .venv/bin/python book/demo/make_model.py

Writes ``book/demo/site/demo/model.int8.onnx`` and its manifest: the fine-tuned CNN of the ``sample`` profile's run
(chapters 4-6 and 13), exported as chapter 13 exports it plus a second output, the class activation maps
(``export_onnx(..., cam=True)``), its weights stored in 8 bits and its arithmetic fp32
(``quantize_onnx(..., mode="weights")``): the fp32 file with the runtime would not fit the page's 15 MB, and the
int8 arithmetic of chapter 13's static file rounds differently in onnxruntime-web than in Python (measured:
the heatmap moved by 1%). And ``book/demo/demo.json``: the
int8 model's accuracy and balanced accuracy on the run's test cells beside the majority baseline (the page
builds its sentence about the model from them), and eight test cells (fold 2: people no step of the method saw), four ALL and four HEM, each of another person,
named by their path in the C-NMC folder and their sha256. The cells themselves are not in the repository:
the book's build copies them from the data it has (book/_ext/web_demo.py).
"""

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "book" / "demo" / "site" / "demo" / "model.int8.onnx"
FACTS = ROOT / "book" / "demo" / "demo.json"
PER_CLASS = 4


def pick_examples(frame, data_root: Path) -> list[dict]:
    """The person's first cell (by file name) of the PER_CLASS people with the most test cells, per class."""
    rows = []
    for label, name in ((1, "ALL"), (0, "HEM")):
        part = frame[frame.label == label]
        people = part.subject.value_counts().sort_index().sort_values(ascending=False, kind="stable")
        for person in people.index[:PER_CLASS]:
            path = Path(sorted(part[part.subject == person].path)[0])
            rows.append(
                {
                    "file": path.relative_to(data_root).as_posix(),
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    "label": name,
                    "person": str(person),
                }
            )
    return rows


def main() -> int:
    from allkit.deploy import OnnxPredictor, export_saved_model, manifest_path, read_manifest
    from allkit.files import write_json
    from allkit.metrics import evaluate
    from allkit.study.book import setup

    ctx = setup("13_deployment", "sample", download=False)
    run = ctx.run(progress=False)
    card = run.card
    if card["synthetic"]:
        print("make_model.py: the demo's model is made from real C-NMC cells; set ALLKIT_DATA", file=sys.stderr)
        return 2
    data = run.load().data
    with tempfile.TemporaryDirectory() as tmp:
        result = export_saved_model(
            run.dir / "model", Path(tmp) / "model.onnx", int8=True, int8_mode="weights", cam=True
        )
        if result.int8 is None:
            print(f"make_model.py: int8 quantisation failed: {result.int8_error}", file=sys.stderr)
            return 1
        manifest = read_manifest(result.int8)
        MODEL.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.int8, MODEL)
    # The manifest names the run, not this machine's folders
    manifest["source"] = (
        f"the fine-tuned CNN of run {run.dir.name} ({card['profile']} profile, data fingerprint "
        f"{card['data fingerprint']}, trained at allkit commit {card['commit']}), exported with cam=True, weights "
        "stored as int8, fp32 arithmetic"
    )
    write_json(manifest_path(MODEL), manifest, indent=2)
    test = data.datasets["test"]
    labels = test.labels.numpy()
    probabilities = OnnxPredictor(MODEL).predict_proba(test)
    predicted = probabilities.argmax(1)
    scores = evaluate(labels, predicted, probabilities[:, 1], test.frame.subject)
    evaluation = {
        "cells": scores["n"],
        "people": scores["n_subjects"],
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "majority": float(max(labels.mean(), 1 - labels.mean())),
        "auc": scores["roc_auc"],
        "predicted_all": float(predicted.mean()),
        "what": "the int8 model of this page on the run's test cells (fold 2)",
    }
    frame = test.frame
    data_root = Path(frame.path.iloc[0]).parents[4]  # .../C-NMC_Leukemia/training_data/fold_2/<class>/<file>
    facts = {
        "evaluation": evaluation,
        "examples": {"data": "C-NMC 2019 training set, fold 2 (CC BY 3.0)", "cells": pick_examples(frame, data_root)},
    }
    write_json(FACTS, facts, indent=2)
    print(f"wrote {MODEL.relative_to(ROOT)} ({MODEL.stat().st_size / 1e6:.1f} MB) and {FACTS.relative_to(ROOT)}")
    print(json.dumps(evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
