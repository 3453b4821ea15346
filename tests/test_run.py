"""The study layer end to end through the CLI: reproduce, evaluate, gradcam, train + fit-hybrid, on the synthetic
stand-in.

Backbone: the offline ImageNet-pretrained EfficientNet-Lite0, named explicitly so no test touches the network.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import allkit.study.store
from allkit.cli.main import main
from allkit.data import CellDataset, build_cache, load_cnmc, pixel_digests
from allkit.hybrid import HybridClassifier
from allkit.models import head
from allkit.study.config import ACROSS, RECIPES, ROBUST_CHANGES, get_config
from allkit.study.prepare import prepare
from allkit.study.score import evaluate_folder
from allkit.study.store import reproduce

LITE0 = {"backbone": "efficientnet_lite0", "weights": "offline", "fallback_backbone": None}

OFFLINE = ["--backbone", "efficientnet_lite0", "--weights", "offline"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def reproduced(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ci"
    code = main(["reproduce", "--profile", "ci", "--data", str(synthetic_root), "--out", str(out), "--quiet", *OFFLINE])
    assert code == 0
    return out


def test_reproduce_writes_metrics_model_and_figures(reproduced):
    metrics = json.loads((reproduced / "metrics.json").read_text())
    card = metrics["run_card"]
    assert card["synthetic"] and card["backbone"] == "efficientnet_lite0" and card["weights"] == "offline"
    assert card["split"] == "folds" and card["profile"] == "ci"  # the synthetic tree has folds 0-2: test on fold 2
    for model in ("cnn", "hybrid"):
        result = metrics[model]
        cm = np.array(result["confusion_matrix"])
        assert result["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())  # the score is the counts'
        assert result["ci"]["accuracy"]["unit"] == "subject"
        assert result["ci"]["accuracy"]["low"] <= result["accuracy"] <= result["ci"]["accuracy"]["high"]
        assert set(result["table2"]) == {"HEM", "ALL", "accuracy", "macro avg", "weighted avg"}
        assert result["n"] == card["counts"]["test"]["cells"]
    assert len(metrics["history"]) == 1 and {"train_loss", "val_loss"} <= set(metrics["history"][0])
    rounds = metrics["config"]["xgb_estimators"]
    assert len(metrics["xgb_evals"]["validation"]["error"]) == rounds
    for name in ("training_curves", "xgb_curves", "confusion_matrix", "samples", "gradcam"):
        with Image.open(reproduced / f"{name}.png") as image:
            assert image.size[0] > 200
    assert (reproduced / "model" / "manifest.json").is_file()


def test_evaluate_json_matches_the_saved_model(reproduced, synthetic_root, capsys):
    fold = synthetic_root / "C-NMC_Leukemia" / "training_data" / "fold_2"
    code, out, _ = run_cli(["evaluate", "--model", reproduced / "model", "--data", fold, "--json"], capsys)
    result = json.loads(out)
    n_files = sum(1 for _ in fold.glob("*/*.png"))
    assert code == 0 and result["n"] == n_files
    assert {"accuracy", "weighted_f1", "n", "per_class", "confusion_matrix"} <= set(result)
    assert set(result["per_class"]["ALL"]) >= {"precision", "recall", "f1"}
    assert np.sum(result["confusion_matrix"]) == n_files
    hybrid = HybridClassifier.load(reproduced / "model", progress=False)
    frame = load_cnmc(fold).frame
    dataset = CellDataset(build_cache(frame, size=hybrid.preprocessing_["size"], progress=False), frame)
    assert result["accuracy"] == pytest.approx(hybrid.score(dataset))

    code, out, _ = run_cli(["evaluate", "--model", reproduced / "model", "--data", fold], capsys)
    assert code == 0 and "confusion matrix" in out and "| ALL |" in out


def test_gradcam_command(reproduced, synthetic_root, tmp_path, capsys):
    images = sorted((synthetic_root / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all").iterdir())[:2]
    code, out, _ = run_cli(
        ["gradcam", *images, "--model", reproduced / "model", "--out", tmp_path, "--target", "ALL"], capsys
    )
    assert code == 0
    written = sorted(tmp_path.glob("*_gradcam.png"))
    assert [p.name for p in written] == [f"{p.stem}_gradcam.png" for p in images]


def test_train_then_fit_hybrid(synthetic_root, tmp_path, capsys):
    code, out, _ = run_cli(
        ["train", "--profile", "ci", "--data", synthetic_root, "--out", tmp_path, "--quiet", *OFFLINE], capsys
    )
    assert code == 0 and (tmp_path / "cnn.pt").is_file()
    code, out, _ = run_cli(["fit-hybrid", "--cnn", tmp_path, "--quiet"], capsys)
    assert code == 0 and "hybrid accuracy on test" in out
    loaded = HybridClassifier.load(tmp_path / "model")
    assert loaded.backbone == "efficientnet_lite0" and loaded.n_features_in_ == 1280
    (tmp_path / "config.json").write_text('{"config": ')  # a damaged record: one line naming it
    code, _, err = run_cli(["fit-hybrid", "--cnn", tmp_path, "--quiet", "--overwrite"], capsys)
    assert code == 2 and "config.json is not readable JSON" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--model", "/nonexistent/model", "--data", "."], "does not exist"),
        (["fit-hybrid", "--cnn", "/nonexistent"], "is not a finished run"),
        (
            ["reproduce", "--profile", "ci", "--data", "/nonexistent/data", "--out", "/tmp/x", *OFFLINE],
            "does not exist",
        ),
    ],
)
def test_errors_are_one_line(args, message, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_paper_profile_does_not_fall_back(synthetic_root, monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, _, err = run_cli(
        ["reproduce", "--profile", "paper", "--data", synthetic_root, "--out", tmp_path / "o"], capsys
    )
    # the error names the offline alternative, in the CLI's own words
    assert code == 2 and "--backbone efficientnet_lite0 --weights offline" in err


def test_help_has_examples(capsys):
    for command in ("reproduce", "evaluate", "train", "fit-hybrid", "gradcam"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "examples:" in capsys.readouterr().out
    assert Path(__file__).exists()


def test_inception_gets_its_299_px_input_and_random_weights_on_request(synthetic_root):
    config = replace(get_config("ci"), backbone="inception_v3", weights=None, fallback_backbone=None)
    prepared, model = prepare(config, synthetic_root, progress=False)
    assert prepared.config.image_size == 299 and prepared.card()["image_size"] == 299
    assert any("299" in note for note in prepared.notes)
    assert prepared.datasets["train"][0][0].shape == (3, 299, 299)


@pytest.mark.slow
def test_real_sample_learns_on_folds_0_1_and_tests_on_fold_2(real_root, tmp_path):
    """The ci profile on the real cells: offline Lite0 fine-tuned 1 epoch on 240 cells of the folds 0-1 training
    people, XGBoost, then the test part: fold 2's people, none of whom any step has seen, without the pictures the
    release also files under a training person."""
    run = reproduce(replace(get_config("ci"), **LITE0), real_root, out=tmp_path / "run", progress=False, figures=False)
    card, split, datasets = run.card, run.meta["split"], run.load().data.datasets
    frame = load_cnmc(real_root).frame
    fold_2 = set(frame.loc[frame["fold"] == "fold_2", "subject"])
    assert not card["synthetic"] and card["split"] == "folds"
    assert set(split["subjects"]["test"]) <= fold_2
    assert fold_2.isdisjoint(split["subjects"]["train"] + split["subjects"]["val"])
    assert "prelim" not in set(datasets["train"].frame["fold"])
    digests = pixel_digests(frame["path"], progress=False)
    seen = {digests[p] for part in ("train", "val") for p in datasets[part].frame["path"]}
    assert seen.isdisjoint(digests[p] for p in datasets["test"].frame["path"])
    assert card["dropped_copies"].get("test", 0) > 0  # the release files fold-1 pictures under fold-2 people
    assert (datasets["val"].frame.groupby("label")["subject"].nunique() >= 3).all()
    hybrid = run.metrics["hybrid"]
    print(  # the figure the data issue asks for, printed (not asserted): above the always-ALL 0.5?
        f"ci profile, fold 2: balanced accuracy {hybrid['balanced_accuracy']:.3f} "
        f"[{hybrid['ci']['balanced_accuracy']['low']:.3f}, {hybrid['ci']['balanced_accuracy']['high']:.3f}], "
        f"AUC {hybrid['roc_auc']:.3f}, majority baseline {hybrid['majority_baseline']:.3f}"
    )


def reproduce_with_recipe(recipe, synthetic_root, tmp_path, capsys):
    """`allkit reproduce --profile ci --recipe RECIPE` on the synthetic data: its folder and metrics."""
    out = tmp_path / recipe
    cli = ["reproduce", "--profile", "ci", "--data", synthetic_root, "--out", out, "--quiet", "--recipe", recipe]
    code, stdout, _ = run_cli([*cli, *OFFLINE], capsys)
    assert code == 0 and f"recipe {recipe}" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    hybrid = metrics["hybrid"]  # printed beside accuracy: balanced accuracy with its interval, and the baseline
    assert f"balanced accuracy {hybrid['balanced_accuracy']:.3f} [" in stdout
    assert f"larger class: accuracy {hybrid['majority_baseline']:.3f}, balanced 0.500" in stdout
    return out, metrics


@pytest.mark.slow
def test_reproduce_with_the_improved_recipe(synthetic_root, tmp_path, capsys):
    out, metrics = reproduce_with_recipe("improved", synthetic_root, tmp_path, capsys)
    assert metrics["config"]["recipe"] == "improved" and metrics["run_card"]["recipe"] == "improved"
    assert metrics["config"]["lr_schedule"] == "cosine" and metrics["run_card"]["normalize"] is not False
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["params"]["tta"] is True
    loaded = HybridClassifier.load(out / "model")
    assert loaded.tta is True  # `allkit evaluate` predicts over the eight views too
    params = json.loads((out / "config.json").read_text())["trainer"]  # what the Trainer actually ran with
    assert params["lr_schedule"] == "cosine" and params["label_smoothing"] == 0.1 and params["keep_best"]
    # the decision threshold was chosen on validation cells, used for the test metrics and saved
    threshold = metrics["thresholds"]["hybrid"]
    assert 0.0 <= threshold <= 1.0 and loaded.threshold == pytest.approx(threshold)
    assert manifest["params"]["threshold"] == pytest.approx(threshold)
    cm = np.array(metrics["hybrid"]["confusion_matrix"])
    assert cm.sum() == metrics["run_card"]["counts"]["test"]["cells"]


@pytest.mark.slow
def test_reproduce_with_the_robust_recipe(synthetic_root, tmp_path, capsys):
    out, metrics = reproduce_with_recipe("robust", synthetic_root, tmp_path, capsys)
    robust = get_config("ci", "robust")
    assert metrics["config"] == {**robust.to_dict(), **LITE0} and metrics["run_card"]["recipe"] == "robust"
    # what it changes from the paper's recipe is what the Trainer ran with
    params = json.loads((out / "config.json").read_text())["trainer"]
    for key in ("lr", "keep_best", "optimizer", "label_smoothing"):
        assert params[key] == getattr(robust, key), key
    jitter = {"color_jitter", "hed_jitter", "grayscale"} & set(RECIPES["robust"])
    assert ("StainAugment" in params["augment"]) == bool(jitter) and robust != get_config("ci")
    cm = np.array(metrics["hybrid"]["confusion_matrix"])
    assert cm.sum() == metrics["run_card"]["counts"]["test"]["cells"]


def test_robust_is_the_paper_recipe_with_the_chosen_changes():
    paper, robust = get_config("sample"), get_config("sample", "robust")
    changed = {k: v for k, v in robust.to_dict().items() if k != "recipe" and v != getattr(paper, k)}
    assert changed == {k: v for c in ROBUST_CHANGES for k, v in ACROSS[c].items()} == RECIPES["robust"]
    assert ROBUST_CHANGES and set(ROBUST_CHANGES) <= set(ACROSS)


@pytest.mark.slow
def test_train_with_a_recipe_then_fit_hybrid_keeps_its_tta_and_threshold(synthetic_root, tmp_path, capsys, monkeypatch):
    code, _, _ = run_cli(
        [
            "train",
            "--profile",
            "ci",
            "--data",
            synthetic_root,
            "--out",
            tmp_path,
            "--quiet",
            "--recipe",
            "improved",
            *OFFLINE,
        ],
        capsys,
    )
    assert code == 0
    assert json.loads((tmp_path / "config.json").read_text())["config"]["recipe"] == "improved"
    chosen, real = [], allkit.study.store.choose_threshold

    def recording(y, p, *args, **kwargs):
        chosen.append((len(y), real(y, p, *args, **kwargs).threshold))
        return real(y, p, *args, **kwargs)

    monkeypatch.setattr(allkit.study.store, "choose_threshold", recording)
    code, out, _ = run_cli(["fit-hybrid", "--cnn", tmp_path, "--quiet"], capsys)
    loaded = HybridClassifier.load(tmp_path / "model")
    n_val = json.loads((tmp_path / "config.json").read_text())["run_card"]["counts"]["val"]["cells"]
    assert code == 0 and loaded.tta is True
    # the improved recipe's decision threshold: chosen once, on the validation cells, and saved with the model
    assert chosen == [(n_val, loaded.threshold)] and f"{loaded.threshold:.3f}" in out


def test_unknown_recipe_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--recipe", "magic", "--out", "/tmp/x"])
    assert "invalid choice: 'magic'" in capsys.readouterr().err


def test_prepare_seeds_the_new_head(synthetic_root):
    """Same configuration and seed -> the same initial model in any process state, whether or not a backbone was
    tried and fell back first; another training seed -> another head."""
    config = replace(get_config("ci"), **LITE0)
    torch.manual_seed(123)
    _, a = prepare(config, synthetic_root, progress=False)
    torch.rand(1000)  # consume the global RNG: must not matter
    _, b = prepare(config, synthetic_root, progress=False)
    _, c = prepare(replace(config, train_seed=7), synthetic_root, progress=False)
    wa, wb, wc = (head(m, "efficientnet_lite0").weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.slow
def test_real_sample_with_fold_2_as_an_external_test_set(real_root, tmp_path):
    """--test-data: folds 0-1 as the data (split by subject into training and validation), fold 2's folder as
    the test set of other people; the pictures fold 2 shares with folds 0-1 leave the test part, and `allkit
    evaluate` on the fold-2 folder sees no training or validation person."""
    training = tmp_path / "data" / "C-NMC_Leukemia" / "training_data"
    training.mkdir(parents=True)
    for fold in ("fold_0", "fold_1"):  # links: the shared cells are read in place, never copied
        (training / fold).symlink_to(real_root / "C-NMC_Leukemia" / "training_data" / fold)
    fold_2 = real_root / "C-NMC_Leukemia" / "training_data" / "fold_2"
    config = replace(get_config("ci"), **LITE0)
    run = reproduce(config, tmp_path / "data", out=tmp_path / "run", progress=False, figures=False, test_data=fold_2)
    split, card = run.meta["split"], run.card
    assert card["split"] == "subject+external" and card["test_data"] == str(fold_2)
    external_people = set(load_cnmc(fold_2).frame["subject"])
    assert set(split["subjects"]["test"]) <= external_people
    assert external_people.isdisjoint(split["subjects"]["train"] + split["subjects"]["val"])
    assert card["dropped_copies"].get("test", 0) > 0
    result = evaluate_folder(run.dir / "model", fold_2, progress=False)
    assert result["seen_subjects"] == [] and result["n_subjects"] == len(external_people)


def test_cells_per_person_are_capped_in_training_and_validation_only(synthetic_root):
    config = replace(get_config("ci"), max_cells_per_subject=2, max_train_cells=10_000, max_eval_cells=10_000, **LITE0)
    prepared, _ = prepare(config, synthetic_root, progress=False)
    for part in ("train", "val"):
        per_person = prepared.datasets[part].frame.groupby("subject").size()
        assert per_person.max() == 2 and per_person.index.nunique() == prepared.split.parts()[part]["subject"].nunique()
    assert len(prepared.datasets["test"]) == len(prepared.split.test)  # the test part is scored whole
    assert get_config("sample").max_cells_per_subject == 80
