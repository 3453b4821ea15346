"""Controlled experiments (allkit.study.experiments), test-time views (allkit.study.views), recipes, the
authors'-code measurements (allkit.study.pitfalls) and the recipe study, on the synthetic stand-in with a
tiny profile."""

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from allkit.errors import AllkitError, ConfigError, DataError
from allkit.hybrid import HybridClassifier
from allkit.inference import predict, predict_proba
from allkit.models import PooledFeatures
from allkit.study import experiments, pitfalls, recipe_study
from allkit.study.calibration import choose_threshold
from allkit.study.experiments import Variant, format_rows, run_variant, score_row
from allkit.study.plots import plot_gradcam_comparison
from allkit.study.profiles import Profile, get_profile
from allkit.study.recipes import RECIPES, Recipe, get_recipe
from allkit.study.run import writing
from allkit.study.views import RandomViews, features_and_logits

PROFILE = Profile(
    name="unit",
    split="subject",
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
    folder = tmp_path_factory.mktemp("experiments")
    variants = {
        "paper": Variant("paper"),
        "improved": Variant("improved", recipe="improved"),
        "head": Variant("authors-head", head="imagenet"),
        "raw": Variant("no-normalization", normalize=False),
        "image": Variant("image-split", split="image"),
    }
    return {
        key: run_variant(v, PROFILE, synthetic_root, runs_dir=folder, progress=False) for key, v in variants.items()
    }, folder


# ---------------------------------------------------------------------------------------------- variants


def test_variant_writes_model_meta_and_outputs(runs):
    paper = runs[0]["paper"]
    assert (paper.dir / "cnn.pt").is_file()
    meta = json.loads((paper.dir / "meta.json").read_text())
    assert meta["variant"]["name"] == "paper" and meta["recipe"]["name"] == "paper"
    assert meta["run_card"]["synthetic"] and meta["run_card"]["backbone"] == "efficientnet_lite0"
    for split in ("train", "val", "test"):
        out = paper.outputs(split)
        assert out.dtype == np.float32 and out.shape == (len(paper.frame(split)), 1280 + 2)


def test_finished_variant_is_loaded_not_retrained(runs, synthetic_root, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished experiment was fine-tuned again")

    monkeypatch.setattr(experiments, "finetune", refuse)
    again = run_variant(Variant("paper"), PROFILE, synthetic_root, runs_dir=runs[1], progress=False)
    assert again.dir == runs[0]["paper"].dir
    np.testing.assert_array_equal(again.cnn_proba("test"), runs[0]["paper"].cnn_proba("test"))


def test_replacing_the_profiles_run_keeps_its_fine_tunes(runs):
    # the book's chapter 4 and `allkit reproduce --overwrite` replace RUNS/<profile> as a whole
    paper = runs[0]["paper"]
    with writing(runs[1] / PROFILE.name, overwrite=True) as staging:
        (staging / "metrics.json").write_text("{}")
    assert (paper.dir / "cnn.pt").is_file() and (paper.dir / "meta.json").is_file()


def test_fine_tunes_in_the_earlier_place_are_still_found(runs, synthetic_root, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished experiment was fine-tuned again")

    paper = runs[0]["paper"]
    legacy = tmp_path / PROFILE.name / "experiments" / paper.dir.name
    shutil.copytree(paper.dir, legacy)
    monkeypatch.setattr(experiments, "finetune", refuse)
    again = run_variant(Variant("paper"), PROFILE, synthetic_root, runs_dir=tmp_path, progress=False)
    assert again.dir == legacy


def test_damaged_meta_is_named_not_retrained_over(runs, synthetic_root, tmp_path):
    paper = runs[0]["paper"]
    copy = Path(shutil.copytree(paper.dir, tmp_path / paper.dir.relative_to(runs[1])))
    (copy / "meta.json").write_text("{")
    with pytest.raises(AllkitError, match=r"meta\.json is not readable JSON.*delete"):
        run_variant(Variant("paper"), PROFILE, synthetic_root, runs_dir=tmp_path, progress=False)
    assert (copy / "cnn.pt").is_file()


def test_a_changed_choice_is_a_new_experiment(runs):
    dirs = {run.dir for run in runs[0].values()}
    assert len(dirs) == len(runs[0])


def test_cnn_proba_matches_the_pipeline_path(runs):
    run = runs[0]["paper"].ensure_loaded()
    expected = predict_proba(run.model, run.prepared.datasets["test"], normalize=run.prepared.normalize, device="cpu")
    np.testing.assert_allclose(run.cnn_proba("test"), expected, atol=1e-5)


def test_features_and_logits_are_the_core_features_and_the_model_output(runs):
    run = runs[0]["paper"].ensure_loaded()
    dataset, kw = run.prepared.datasets["test"], {"normalize": run.prepared.normalize, "device": "cpu"}
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
    outside = pitfalls.outside_binary(head)
    assert outside == pytest.approx(np.mean(head.logits("test").argmax(axis=1) >= 2)) and 0.0 <= outside <= 1.0


def test_image_split_is_leaky_with_the_subject_split_sizes(runs):
    paper, image = runs[0]["paper"], runs[0]["image"]
    for split in ("train", "val", "test"):
        assert abs(len(image.frame(split)) - len(paper.frame(split))) <= 1
    train_subjects = set(image.frame("train")["subject"])
    assert train_subjects & set(image.frame("test")["subject"])
    assert not set(paper.frame("train")["subject"]) & set(paper.frame("test")["subject"])


def test_no_normalization_variant_trains_on_raw_pixels(runs):
    """The variant's saved outputs are its CNN on raw [0, 1] pixels, not on ImageNet-normalised ones."""
    raw = runs[0]["raw"].ensure_loaded()
    test = raw.prepared.datasets["test"]
    saved = raw.outputs("test")
    on = {
        name: features_and_logits(raw.model, raw.backbone, test, normalize=normalize, device="cpu")
        for name, normalize in (("raw", False), ("imagenet", True))
    }
    assert raw.prepared.normalize is False
    np.testing.assert_allclose(saved, on["raw"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(saved, on["imagenet"], atol=1e-2)


def test_bad_variants_are_refused():
    with pytest.raises(ConfigError, match="split"):
        Variant("x", split="patient")
    with pytest.raises(ConfigError, match="head"):
        Variant("x", head="big")
    with pytest.raises(ConfigError, match="recipe"):
        Variant("x", recipe="magic")


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
    dataset = runs[0]["paper"].ensure_loaded().prepared.datasets["test"]
    model = PointwisePool()
    plain = predict_proba(model, dataset, device="cpu")
    np.testing.assert_allclose(predict_proba(model, dataset, tta=True, device="cpu"), plain, atol=1e-6)
    assert not np.allclose(plain, plain[::-1])  # the cells differ, so the equality above is not trivial


def test_tta_is_the_mean_of_the_eight_views(runs):
    run = runs[0]["improved"].ensure_loaded()
    dataset = run.prepared.datasets["test"]
    kw = {"normalize": run.prepared.normalize, "device": "cpu"}
    views = [features_and_logits(run.model, run.backbone, dataset, view=v, **kw)[:, -2:] for v in range(8)]
    averaged = np.mean([torch.softmax(torch.from_numpy(logits).double(), 1).numpy() for logits in views], axis=0)
    np.testing.assert_allclose(run.cnn_proba("test", "tta"), averaged, atol=1e-5)
    np.testing.assert_allclose(predict_proba(run.model, dataset, tta=True, **kw), averaged, atol=1e-5)
    assert not np.allclose(averaged, run.cnn_proba("test"), atol=1e-6)


def test_random_views_are_seeded(runs):
    run = runs[0]["paper"].ensure_loaded()
    dataset = run.prepared.datasets["test"]
    index = np.arange(len(dataset))
    a = RandomViews(dataset, seed=1).__getitems__(index)[0]
    b = RandomViews(dataset, seed=1).__getitems__(index)[0]
    c = RandomViews(dataset, seed=2).__getitems__(index)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, dataset.__getitems__(index)[0])
    kw = {"normalize": run.prepared.normalize, "device": "cpu"}
    random = features_and_logits(run.model, run.backbone, dataset, random_seed=run.seed, **kw)
    assert not np.allclose(random, features_and_logits(run.model, run.backbone, dataset, **kw))
    np.testing.assert_allclose(run.outputs("test", "random"), random, atol=1e-5)
    assert (run.dir / "outputs" / "test.random.npy").is_file()


def test_hybrid_tta_predicts_the_mean_over_views_and_is_saved(runs, tmp_path):
    run = runs[0]["improved"].ensure_loaded()
    hybrid = run.hybrid("features")
    dataset = run.prepared.datasets["test"]
    hybrid.set_params(tta=True)
    np.testing.assert_allclose(hybrid.predict_proba(dataset), run.hybrid_proba("test", "tta"), atol=1e-5)
    hybrid.save(tmp_path / "model")
    assert HybridClassifier.load(tmp_path / "model").tta is True
    hybrid.set_params(tta=False)


# ---------------------------------------------------------------------------------------------- recipes


def test_recipes():
    paper, improved = get_recipe("paper"), get_recipe("improved")
    assert paper.trainer_kwargs()["augment"] is True and paper.lr_schedule == "constant" and not paper.tta
    kwargs = improved.trainer_kwargs()
    assert kwargs["augment"].degrees == 180.0 and kwargs["lr_schedule"] == "cosine" and kwargs["keep_best"]
    assert get_recipe(None) is RECIPES["paper"]
    with pytest.raises(AllkitError, match="unknown"):
        get_recipe("magic")


def test_improved_variant_keeps_its_best_epoch(synthetic_root, tmp_path):
    """With 3 epochs (1 could not tell) the improved recipe keeps the epoch of the lowest validation loss,
    whichever it is, and records which."""
    profile = PROFILE.with_overrides(epochs=3)
    run = run_variant(
        Variant("improved", recipe="improved"), profile, synthetic_root, runs_dir=tmp_path, progress=False
    )
    losses = [epoch["val_loss"] for epoch in run.history]
    assert len(losses) == 3 and run.meta["best_epoch"] == int(np.argmin(losses)) + 1


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
    assert recipe_study.study_seeds(PROFILE) == (42, 43)
    assert recipe_study.study_seeds(PROFILE, 3) == (42, 43, 44)
    assert recipe_study.recipe_variant("paper", 43, PROFILE).seed == 43


def test_validation_threshold_and_ablation(runs):
    r = runs[0]
    improved = r["improved"]
    assert improved.recipe.threshold == "validation" and r["paper"].recipe.threshold == "argmax"
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


def test_recipe_threshold_is_checked():
    with pytest.raises(AllkitError, match="threshold"):
        Recipe(name="x", threshold="youden")


def _variants_in_source(path: Path) -> list[Variant]:
    """Every literal ``Variant(...)`` a notebook source constructs."""
    found = []
    code = re.sub(r"^(\s*)[%!]", r"\1# ", path.read_text(), flags=re.M)  # IPython magics are not Python
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Variant":
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            found.append(Variant(*args, **kwargs))
    return found


def test_allkit_experiments_trains_every_fine_tune_of_chapters_9_to_11():
    # `allkit experiments` is documented as training what chapters 9-11 load; one it misses is trained
    # inside the notebook instead, hours later, with no progress bar
    src = Path(__file__).resolve().parents[1] / "notebooks" / "src"
    profile = get_profile("sample")
    wanted = [
        v for name in ("09_authors_code", "10_patients_calibration") for v in _variants_in_source(src / f"{name}.py")
    ]
    wanted += [
        recipe_study.recipe_variant(r, s, profile)
        for r in ("paper", "improved")
        for s in recipe_study.study_seeds(profile)
    ]
    assert len(wanted) >= 8
    missing = set(wanted) - set(experiments.study_variants(seeds=recipe_study.study_seeds(profile)))
    assert not missing, f"chapters 9-11 use fine-tunes that `allkit experiments` does not train: {missing}"


def test_allkit_experiments_chapter_12_trains_what_chapter_12_loads(monkeypatch, capsys):
    # chapter 12 compares the paper's recipe with each single change at seed 42, then the paper's and the
    # robust recipe at three seeds; the CLI must name them exactly as the notebook does, or the notebook
    # trains them again
    from allkit.cli.main import main
    from allkit.study.recipes import ACROSS

    trained = []

    def record(variant, profile, data, **kwargs):
        trained.append(variant)
        return type("Run", (), {"history": [{"val_acc": 0.5}], "dir": Path(variant.name)})()

    monkeypatch.setattr(experiments, "run_variant", record)  # the command imports it when it runs
    assert main(["experiments", "--chapter", "12", "--profile", "sample", "--quiet"]) == 0
    expected = [Variant("paper"), *(Variant(name, recipe=name) for name in ACROSS)]
    expected += [Variant(f"{r}-seed{s}", recipe=r, seed=s) for r in ("paper", "robust") for s in (43, 44)]
    expected += [Variant("robust", recipe="robust")]
    assert len(ACROSS) == 8 and sorted(trained, key=repr) == sorted(expected, key=repr)
    assert f"[14/14] {trained[-1].name}" in capsys.readouterr().out

    trained.clear()
    assert main(["experiments", "--chapter", "all", "--profile", "sample", "--quiet"]) == 0
    names = [v.name for v in trained]
    assert len(names) == len(set(names)) == 9 + 14 - 2  # both share the paper's seed-42 and seed-43 fine-tunes
    assert {"subject-internal", "improved-seed43", "across-stain", "robust-seed44"} <= set(names)

    trained.clear()
    assert main(["experiments", "--profile", "sample", "--quiet"]) == 0
    assert set(trained) == set(experiments.study_variants(seeds=recipe_study.study_seeds(get_profile("sample"))))
