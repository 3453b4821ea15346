"""The run store (allkit.study.store): one configuration, one fine-tune, one folder; test-time views
(allkit.study.views), recipes, the authors'-code measurements (allkit.study.pitfalls) and the recipe study, on the
synthetic stand-in with a tiny configuration."""

import ast
import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import allkit.study.store as store
from allkit.errors import AllkitError, ConfigError, DataError
from allkit.hybrid import HybridClassifier
from allkit.inference import predict, predict_proba
from allkit.models import PooledFeatures
from allkit.study import pitfalls, recipe_study
from allkit.study.across_study import across_configs, cv_config
from allkit.study.calibration import choose_threshold
from allkit.study.config import ACROSS, RECIPES, Config, get_config
from allkit.study.finetune import augmentation
from allkit.study.folders import RUN_MARKER, claim_folder
from allkit.study.plots import plot_gradcam_comparison
from allkit.study.score import format_rows, score_row
from allkit.study.store import open_run, run
from allkit.study.views import RandomViews, features_and_logits

CONFIG = Config(
    name="unit",
    split="folds",
    backbone="efficientnet_lite0",
    weights="offline",
    fallback_backbone=None,
    image_size=64,
    epochs=1,
    xgb_estimators=8,
    n_boot=30,
    n_gradcam=1,
)


@pytest.fixture(scope="module")
def runs(synthetic_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    configs = {
        "paper": CONFIG,
        "improved": CONFIG.with_recipe("improved"),
        "head": replace(CONFIG, head="imagenet"),
        "raw": replace(CONFIG, normalize=False),
        "image": replace(CONFIG, split="image"),
    }
    return {key: run(c, synthetic_root, runs=folder, progress=False) for key, c in configs.items()}, folder


# ---------------------------------------------------------------------------------------------- the store


def test_a_run_writes_its_config_cnn_and_outputs(runs):
    paper = runs[0]["paper"]
    assert (paper.dir / "cnn.pt").is_file() and paper.dir.parent == runs[1] / "unit"
    meta = json.loads((paper.dir / "config.json").read_text())
    assert meta["config"]["recipe"] == "paper" and meta["config"]["backbone"] == "efficientnet_lite0"
    assert meta["run_card"]["synthetic"] and meta["run_card"]["backbone"] == "efficientnet_lite0"
    for split in ("train", "val", "test"):
        out = paper.outputs(split)
        assert out.dtype == np.float32 and out.shape == (len(paper.frame(split)), 1280 + 2)


def test_finished_run_is_opened_not_retrained(runs, synthetic_root, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished fine-tune was trained again")

    monkeypatch.setattr(store, "finetune", refuse)
    again = run(CONFIG, synthetic_root, runs=runs[1], progress=False)
    assert again.dir == runs[0]["paper"].dir
    np.testing.assert_array_equal(again.cnn_proba("test"), runs[0]["paper"].cnn_proba("test"))
    # a setting that changes only the predictions is applied to the same fine-tune
    views = run(replace(CONFIG, tta=True, xgb_estimators=4), synthetic_root, runs=runs[1], progress=False)
    assert views.dir == again.dir and views.config.tta and views.hybrid().n_estimators == 4


def test_the_fallback_backbone_is_the_same_run_as_asking_for_it(runs, synthetic_root, monkeypatch):
    # EfficientNet-B0's weights cannot be had offline: its fallback is the Lite0 run, not a second fine-tune
    def refuse(*args, **kwargs):
        raise AssertionError("the fallback's fine-tune was trained again")

    monkeypatch.setattr(store, "finetune", refuse)
    import allkit.models

    real = allkit.models._state_dict

    def offline_only(weights, backbone, progress):
        if backbone.name == "efficientnet_b0":
            raise allkit.models.ModelError("no internet")
        return real(weights, backbone, progress)

    monkeypatch.setattr(allkit.models, "_state_dict", offline_only)
    asked = replace(CONFIG, backbone="efficientnet_b0", weights="imagenet", fallback_backbone="efficientnet_lite0")
    assert run(asked, synthetic_root, runs=runs[1], progress=False).dir == runs[0]["paper"].dir


def test_replacing_an_out_folder_keeps_the_store(runs):
    paper = runs[0]["paper"]
    with claim_folder(runs[1] / "elsewhere", overwrite=True) as staging:
        (staging / "metrics.json").write_text("{}")
    assert (paper.dir / "cnn.pt").is_file() and (paper.dir / "config.json").is_file()


def test_damaged_config_is_named_not_retrained_over(runs, synthetic_root, tmp_path):
    paper = runs[0]["paper"]
    copy = Path(shutil.copytree(paper.dir, tmp_path / paper.dir.relative_to(runs[1])))
    (copy / "config.json").write_text("{")
    with pytest.raises(AllkitError, match=r"config\.json is not readable JSON.*delete"):
        run(CONFIG, synthetic_root, runs=tmp_path, progress=False)
    assert (copy / "cnn.pt").is_file()


def test_a_run_whose_data_changed_is_refused(runs, synthetic_root, tmp_path):
    paper = runs[0]["paper"]
    copy = Path(shutil.copytree(paper.dir, tmp_path / "copy", ignore=shutil.ignore_patterns("outputs")))
    meta = json.loads((copy / "config.json").read_text())
    meta["split"]["sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(AllkitError, match="changed since the CNN"):
        open_run(copy).features("test")


def test_a_changed_choice_is_a_new_run(runs):
    dirs = {run.dir for run in runs[0].values()}
    assert len(dirs) == len(runs[0])


def test_out_folder_copies_a_stored_run(runs, synthetic_root, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a stored fine-tune was trained again for --out")

    monkeypatch.setattr(store, "finetune", refuse)
    done = run(CONFIG, synthetic_root, runs=runs[1], out=tmp_path / "mine", progress=False)
    assert done.dir == tmp_path / "mine" and (tmp_path / "mine" / RUN_MARKER).is_file()
    np.testing.assert_array_equal(done.outputs("test"), runs[0]["paper"].outputs("test"))


def test_cnn_proba_matches_the_pipeline_path(runs):
    run = runs[0]["paper"].load()
    expected = predict_proba(run.model, run.data.datasets["test"], normalize=run.data.normalize, device="cpu")
    np.testing.assert_allclose(run.cnn_proba("test"), expected, atol=1e-5)


def test_features_and_logits_are_the_core_features_and_the_model_output(runs):
    run = runs[0]["paper"].load()
    dataset, kw = run.data.datasets["test"], {"normalize": run.data.normalize, "device": "cpu"}
    both = run.outputs("test")
    np.testing.assert_allclose(both[:, :-2], predict(PooledFeatures(run.model, run.backbone), dataset, **kw), atol=1e-5)
    np.testing.assert_allclose(both[:, -2:], predict(run.model, dataset, **kw), atol=1e-5)
    np.testing.assert_array_equal(run.features("test"), both[:, :-2])
    np.testing.assert_array_equal(run.logits("test"), both[:, -2:])


def test_hybrid_proba_is_a_probability_and_xgb_params_matter(runs):
    run = runs[0]["paper"]
    proba = run.hybrid_proba("test")
    assert proba.shape == (len(run.frame("test")), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    weighted = run.hybrid_proba("test", xgb_params={"scale_pos_weight": 0.1})
    assert not np.allclose(proba, weighted)


def test_kept_imagenet_head_gives_1000_logits(runs):
    head = runs[0]["head"]
    assert head.outputs("test").shape[1] == 1280 + 1000
    assert head.hybrid("logits").n_features_in_ == 1000
    # the share of cells whose largest ImageNet output is neither 0 (HEM) nor 1 (ALL): known logits, known share
    logits = np.zeros((4, 1000), dtype=np.float32)
    logits[[0, 1, 2, 3], [0, 1, 181, 999]] = 5.0
    known = type("Known", (), {"logits": lambda self, split: logits})()
    assert pitfalls.outside_binary(known) == 0.5


def test_image_split_is_leaky_with_the_cells_and_sizes_of_the_folds_split(runs):
    paper, image = runs[0]["paper"], runs[0]["image"]
    assert paper.card["split"] == "folds" and image.card["split"] == "image"
    for split in ("train", "val", "test"):
        assert abs(len(image.frame(split)) - len(paper.frame(split))) <= 1
    cells = {name: set(pd.concat([r.frame(p) for p in ("train", "val", "test")])["path"]) for name, r in
             (("paper", paper), ("image", image))}  # fmt: skip
    assert cells["paper"] == cells["image"]  # the same cells, drawn by image instead of by person
    train_subjects = set(image.frame("train")["subject"])
    assert train_subjects & set(image.frame("test")["subject"])
    assert not set(paper.frame("train")["subject"]) & set(paper.frame("test")["subject"])


def test_no_normalization_run_trains_on_raw_pixels(runs):
    """The run's saved outputs are its CNN on raw [0, 1] pixels, not on normalised ones."""
    raw = runs[0]["raw"].load()
    test = raw.data.datasets["test"]
    saved = raw.outputs("test")
    on = {
        name: features_and_logits(raw.model, raw.backbone, test, normalize=normalize, device="cpu")
        for name, normalize in (("raw", False), ("imagenet", True))
    }
    np.testing.assert_allclose(saved, on["raw"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(saved, on["imagenet"], atol=1e-2)


def test_bad_configurations_are_refused():
    for name, value in (("split", "patient"), ("head", "big"), ("threshold", "youden"), ("image_size", 0),
                        ("lr", -1.0), ("normalize", "imagenet"), ("freeze", 1.0), ("train_seed", 2**32)):  # fmt: skip
        with pytest.raises(ConfigError, match=f"{name}=") as err:
            replace(CONFIG, **{name: value})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="recipe 'magic' is unknown"):
        CONFIG.with_recipe("magic")
    with pytest.raises(ConfigError, match="unknown configuration setting"):
        store.from_dict({**CONFIG.to_dict(), "colour": 1})


def test_unknown_view_and_kind_are_refused(runs):
    with pytest.raises(ConfigError, match="view"):
        runs[0]["paper"].outputs("test", "d4-9")
    with pytest.raises(ConfigError, match="kind"):
        runs[0]["paper"].cnn_proba("test", "d4")


def test_score_row_and_format(runs):
    run = runs[0]["paper"]
    row = score_row("x", run.frame("test"), run.hybrid_proba("test"), n_boot=20)
    assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    table = format_rows([row])
    assert table.loc["x", "accuracy [95% CI]"].startswith(f"{row['accuracy']:.3f} [")


# ---------------------------------------------------------------------------------------------- views


class PointwisePool(nn.Module):
    """1x1 convolution + global average pooling: exactly invariant to flips and quarter turns."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_tta_of_an_invariant_model_equals_one_view(runs):
    dataset = runs[0]["paper"].load().data.datasets["test"]
    model = PointwisePool()
    plain = predict_proba(model, dataset, device="cpu")
    np.testing.assert_allclose(predict_proba(model, dataset, tta=True, device="cpu"), plain, atol=1e-6)
    assert not np.allclose(plain, plain[::-1])  # the cells differ, so the equality above is not trivial


def test_tta_is_the_mean_of_the_eight_views(runs):
    run = runs[0]["improved"].load()
    dataset = run.data.datasets["test"]
    kw = {"normalize": run.data.normalize, "device": "cpu"}
    views = [features_and_logits(run.model, run.backbone, dataset, view=v, **kw)[:, -2:] for v in range(8)]
    averaged = np.mean([torch.softmax(torch.from_numpy(logits).double(), 1).numpy() for logits in views], axis=0)
    np.testing.assert_allclose(run.cnn_proba("test", "tta"), averaged, atol=1e-5)
    np.testing.assert_allclose(predict_proba(run.model, dataset, tta=True, **kw), averaged, atol=1e-5)
    assert not np.allclose(averaged, run.cnn_proba("test", "plain"), atol=1e-6)
    np.testing.assert_array_equal(run.cnn_proba("test"), run.cnn_proba("test", "tta"))  # the recipe says tta


def test_random_views_are_seeded(runs):
    run = runs[0]["paper"].load()
    dataset = run.data.datasets["test"]
    index = np.arange(len(dataset))
    a = RandomViews(dataset, seed=1).__getitems__(index)[0]
    b = RandomViews(dataset, seed=1).__getitems__(index)[0]
    c = RandomViews(dataset, seed=2).__getitems__(index)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, dataset.__getitems__(index)[0])
    kw = {"normalize": run.data.normalize, "device": "cpu"}
    random = features_and_logits(run.model, run.backbone, dataset, random_seed=run.config.training_seed, **kw)
    assert not np.allclose(random, features_and_logits(run.model, run.backbone, dataset, **kw))
    np.testing.assert_allclose(run.outputs("test", "random"), random, atol=1e-5)
    assert (run.dir / "outputs" / "test.random.npy").is_file()


def test_hybrid_tta_predicts_the_mean_over_views_and_is_saved(runs, tmp_path):
    run = runs[0]["improved"].load()
    hybrid = run.hybrid("features")
    dataset = run.data.datasets["test"]
    hybrid.set_params(tta=True)
    np.testing.assert_allclose(hybrid.predict_proba(dataset), run.hybrid_proba("test", "tta"), atol=1e-5)
    hybrid.save(tmp_path / "model")
    assert HybridClassifier.load(tmp_path / "model").tta is True
    hybrid.set_params(tta=False)


# ---------------------------------------------------------------------------------------------- recipes


def test_recipes_are_changes_of_the_preset():
    paper, improved = get_config("ci", "paper"), get_config("ci", "improved")
    assert augmentation(paper) is True and paper.lr_schedule == "constant" and not paper.tta
    augment = augmentation(improved)
    assert augment.degrees == 180.0 and improved.lr_schedule == "cosine" and improved.keep_best and improved.tta
    # a recipe changes only what it names: the preset's size, epochs and caps stay
    assert (improved.image_size, improved.epochs, improved.max_train_cells) == (128, 1, 240)
    assert get_config("paper", "improved").normalize and not get_config("paper").normalize
    assert get_config("sample").lr == get_config("sample", "paper").lr
    assert get_config("sample", "robust") == replace(get_config("sample"), recipe="robust", **RECIPES["robust"])
    with pytest.raises(AllkitError, match="unknown"):
        get_config("sample", "magic")


def test_improved_run_keeps_its_best_epoch(synthetic_root, tmp_path):
    """With 3 epochs (1 could not tell) the improved recipe keeps the epoch of the lowest validation loss,
    whichever it is, and records which."""
    done = run(replace(CONFIG.with_recipe("improved"), epochs=3), synthetic_root, runs=tmp_path, progress=False)
    losses = [epoch["val_loss"] for epoch in done.history]
    assert len(losses) == 3 and done.meta["best_epoch"] == int(np.argmin(losses)) + 1


# ---------------------------------------------------------------------------------------------- studies


def test_authors_code_rows_and_spread(runs):
    r = runs[0]
    rows = pitfalls.authors_code_rows(r["paper"], r["head"], r["raw"], n_boot=20)
    assert [row["choice"] for row in rows] == ["-", "a", "b", "e"]
    assert rows[1]["accuracy"] != rows[0]["accuracy"] or rows[1]["roc_auc"] != rows[0]["roc_auc"]
    spread = pitfalls.unseeded_split_spread(r["paper"], n_draws=6)
    assert len(spread) == 6 and spread["accuracy"].nunique() > 1
    assert (spread["shared_subjects"] > 0).all()
    row = pitfalls.spread_row(spread, "c")
    assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    assert len(pitfalls.cnn_rows(r["paper"], r["head"], r["raw"], n_boot=20)) == 4
    with pytest.raises(ConfigError, match="model='svm'"):
        pitfalls.authors_code_rows(r["paper"], r["head"], r["raw"], model="svm")


def test_leakage_rows_and_overlap(runs):
    rows = pitfalls.leakage_rows(runs[0]["paper"], runs[0]["image"], n_boot=20)
    assert [(row["model"], row["split"]) for row in rows] == [
        ("CNN", "by subject"),
        ("hybrid", "by subject"),
        ("CNN", "by image (leaky)"),
        ("hybrid", "by image (leaky)"),
    ]
    overlap = pitfalls.split_overlap(runs[0]["image"])
    assert overlap.loc["test", "subjects also in train"] > 0
    assert pitfalls.split_overlap(runs[0]["paper"]).loc["test", "subjects also in train"] == 0


def test_class_181_gradcam(runs):
    authors, true = pitfalls.class_181_gradcam(runs[0]["head"], n_per_class=1)
    assert authors.targets == [181, 181] and sorted(true.targets) == [0, 1]
    assert authors.heatmaps.shape == true.heatmaps.shape
    assert pitfalls.imagenet_class_name(181) == "Bedlington terrier"
    fig = plot_gradcam_comparison(authors, true, titles=("class 181", "true class"))
    assert len(fig.axes) == 3 * len(authors.heatmaps)
    assert fig.axes[1].get_title() == "class 181" and fig.axes[1].get_xlabel() == "explains class 181"
    with pytest.raises(DataError, match="same"):
        plot_gradcam_comparison(authors, pitfalls.class_181_gradcam(runs[0]["head"], n_per_class=2)[1])


def test_recipe_study(runs):
    r = runs[0]
    rows = recipe_study.selection_rows(r["paper"], r["improved"], n_boot=20)
    assert len(rows) == 8 and {row["fine_tune"] for row in rows} == {"paper", "improved"}
    best = recipe_study.best_on_validation(rows)
    assert best["accuracy"] == max(
        row["accuracy"] for row in rows if row["fine_tune"] == "improved" and row["model"] == "hybrid"
    )
    comparison = recipe_study.comparison_rows([r["paper"]], [r["improved"]], n_boot=20)
    gain = recipe_study.gain_points(comparison)
    assert gain == pytest.approx(100 * (comparison[1]["accuracy"] - comparison[0]["accuracy"]))
    assert recipe_study.study_seeds(CONFIG) == (42, 43)
    assert recipe_study.study_seeds(CONFIG, 3) == (42, 43, 44)
    assert recipe_study.recipe_config(CONFIG, "paper", 43).training_seed == 43
    assert recipe_study.recipe_config(CONFIG, "paper", 42) == CONFIG


def test_validation_threshold_and_ablation(runs):
    r = runs[0]
    improved = r["improved"]
    assert improved.config.threshold == "validation" and r["paper"].config.threshold == "argmax"
    expected = choose_threshold(improved.labels("val"), improved.hybrid_proba("val", "tta")).threshold
    assert recipe_study.threshold_for(improved) == pytest.approx(expected)
    assert recipe_study.threshold_for(r["paper"]) == 0.5
    rows = recipe_study.comparison_rows([r["paper"]], [improved], n_boot=20)
    assert rows[1]["threshold"] == pytest.approx(expected)
    table = recipe_study.ablation([r["paper"]], [improved])
    assert list(table.index) == [name for name, *_ in recipe_study.ABLATION]
    assert table.iloc[0]["accuracy gain (points)"] == 0
    assert table.iloc[3]["accuracy (mean over seeds)"] == pytest.approx(rows[1]["accuracy"])


def test_hybrid_threshold_decides_predict(runs):
    hybrid = runs[0]["paper"].hybrid("features")
    X = runs[0]["paper"].outputs("test")[:, :1280]
    p_all = hybrid.predict_proba(X)[:, 1]
    try:
        for threshold in (0.0, 0.5, float(np.median(p_all)), 1.0):
            hybrid.set_params(threshold=threshold)
            np.testing.assert_array_equal(hybrid.predict(X), (p_all > threshold).astype(int))
        hybrid.set_params(threshold=1.5)
        with pytest.raises(ValueError, match="threshold"):
            hybrid.predict(X)
    finally:
        hybrid.set_params(threshold=0.5)


def _runs_in_source(path: Path, config: Config) -> list[Config]:
    """Every configuration a notebook source asks ``ctx.run(...)`` for with literal arguments (as Context.run
    builds it from the chapter's preset)."""
    found = []
    code = re.sub(r"^(\s*)[%!]", r"\1# ", path.read_text(), flags=re.M)  # IPython magics are not Python
    for node in ast.walk(ast.parse(code)):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr == "run" and getattr(func.value, "id", None) == "ctx":
            try:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg != "progress"}
            except ValueError:
                continue  # computed arguments: checked by the chapter's own list below
            found.append(replace(config.with_recipe(args[0] if args else "paper"), **kwargs))
    return found


def test_allkit_experiments_trains_every_fine_tune_of_chapters_9_to_11():
    # `allkit experiments` is documented as training what chapters 9-11 load; one it misses is trained
    # inside the notebook instead, hours later, with no progress bar
    src = Path(__file__).resolve().parents[1] / "notebooks" / "src"
    config = get_config("sample")
    wanted = [c for name in ("09_authors_code", "10_patients_calibration", "11_improved_recipe")
              for c in _runs_in_source(src / f"{name}.py", config)]  # fmt: skip
    wanted += [
        recipe_study.recipe_config(config, r, s)
        for r in ("paper", "improved")
        for s in recipe_study.study_seeds(config)
    ]
    assert len(set(wanted)) >= 8
    missing = set(wanted) - set(recipe_study.study_configs(config))
    assert not missing, f"chapters 9-11 use fine-tunes that `allkit experiments` does not train: {missing}"


def test_allkit_experiments_chapter_12_trains_what_chapter_12_loads(monkeypatch, capsys):
    # chapter 12 chooses between the paper's recipe and each single change by cross-validation over people, then
    # fine-tunes the robust recipe; the CLI must ask for exactly those, or the notebook trains them again
    from allkit.cli.main import main

    trained = []

    def record(config, data, **kwargs):
        trained.append(config)
        return type("Run", (), {"history": [{"val_acc": 0.5}], "dir": Path(config.recipe)})()

    monkeypatch.setattr(store, "run", record)  # the command imports it when it runs
    assert main(["experiments", "--chapter", "12", "--profile", "sample", "--quiet"]) == 0
    sample = get_config("sample")
    expected = [sample, sample.with_recipe("robust")]
    expected += [cv_config(sample, name, fold) for name in ("paper", *ACROSS) for fold in range(3)]
    assert sorted(trained, key=repr) == sorted(expected, key=repr) == sorted(across_configs(sample), key=repr)
    assert f"[14/14] {trained[-1].recipe}" in capsys.readouterr().out
    src = Path(__file__).resolve().parents[1] / "notebooks" / "src" / "12_across_people.py"
    assert set(_runs_in_source(src, sample)) <= set(expected)

    trained.clear()
    assert main(["experiments", "--chapter", "all", "--profile", "sample", "--quiet"]) == 0
    assert len(trained) == len(set(trained)) == 9 + 14 - 1  # both use the paper's fine-tune at seed 42
    assert replace(sample, test="internal") in trained and cv_config(sample, "across-stain", 2) in trained

    trained.clear()
    assert main(["experiments", "--profile", "sample", "--quiet"]) == 0
    assert set(trained) == set(recipe_study.study_configs(sample))


def test_a_setting_added_later_leaves_every_finished_run_its_key():
    # the store keeps hours of fine-tunes: a new setting at its default must not make them all new runs
    @dataclass(frozen=True)
    class Later(Config):
        new_knob: int = 0

    base = get_config("sample")
    assert Later(**base.to_dict()).key("cells") == base.key("cells")
    assert Later(**base.to_dict(), new_knob=1).key("cells") != base.key("cells")
    assert replace(base, epochs=6).key("cells") != base.key("cells")  # a setting of the first runs always counts


def test_a_store_finds_its_runs_after_the_data_moved(tmp_path, monkeypatch):
    # a run is keyed by which cells it saw, not by where they were: the data moved (another machine, a Drive
    # folder) still opens the finished run, and its cells are read from where they are now
    from allkit.study.synthetic import make_synthetic_cnmc

    first = make_synthetic_cnmc(tmp_path / "a" / "data", seed=5, cells_per_subject=3, final_cells=0).parent
    done = run(CONFIG, first, runs=tmp_path / "runs", progress=False)
    moved = tmp_path / "b" / "data"
    shutil.move(first, moved)

    def refuse(*args, **kwargs):
        raise AssertionError("the moved data's run was trained again")

    monkeypatch.setattr(store, "finetune", refuse)
    again = run(CONFIG, moved, runs=tmp_path / "runs", progress=False)
    assert again.dir == done.dir
    assert str(again.load().data.data_root) == str(moved) and len(again.data.datasets["test"]) > 0
