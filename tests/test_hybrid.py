"""allkit.hybrid: CNN features + XGBoost as a scikit-learn estimator, test-time views, save/load.

Data: one synthetic C-NMC tree per module (3 folds x (2 ALL + 1 HEM) subjects x 10 cells for training,
3 ALL + 3 HEM held-out preliminary-test subjects x 10 cells for testing), cached at 96 px.

CNNs: the accuracy test uses EfficientNet-Lite0 with its packaged (offline) ImageNet weights, frozen, as
the feature extractor (no fine-tuning on CPU in a unit test); the mechanics tests use a randomly
initialised EfficientNet-B0 (the paper's backbone), which extracts quickly at 96 px.
"""

import copy
import hashlib
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from allkit.constants import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, SEED, XGB_ETA
from allkit.data import CellDataset, build_cache
from allkit.errors import ConfigError, ModelError
from allkit.hybrid import HybridClassifier, extract_features
from allkit.inference import predict_proba
from allkit.models import PooledFeatures, build_model, get_backbone
from allkit.study.synthetic import make_synthetic_cnmc
from allkit.transforms import to_model_input

SIZE = 96
# Measured (seed 0 data, 96 px): 0.83 held-out accuracy for frozen Lite0 ImageNet features + XGBoost
# (0.77-0.90 across data seeds 0-2 and cache sizes 64/96); chance is 0.5 (balanced held-out subjects).
ACCURACY_FLOOR = 0.68
# One thread for XGBoost and torch (torch's: the one_torch_thread fixture of conftest.py): on a 2-core runner
# shared with other processes, OpenMP threads that spin at barriers made a 0.2 s XGBoost fit take 10 s.
XGB = {"n_jobs": 1}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory, train_test_factory):
    data = train_test_factory(
        tmp_path_factory.mktemp("hybrid-data"),
        cache_size=SIZE,
        seed=0,
        cells_per_subject=10,
        prelim_subjects=(3, 3),
        final_cells=0,
        size=160,
    )
    small = data["train"].frame.groupby("label").head(6)  # 12 cells of both classes, for quick mechanics tests
    return {**data, "small": CellDataset(data["cache"], small)}


@pytest.fixture(scope="module")
def lite_hybrid(data):
    cnn = build_model("efficientnet_lite0", weights="offline")
    model = HybridClassifier(cnn=cnn, backbone="efficientnet_lite0", n_estimators=50, xgb_params=XGB)
    return model.fit(data["train"], eval_set=[("train", data["train"]), ("validation", data["test"])])


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return build_model("efficientnet_b0", weights=None, num_classes=2).eval()


def _pixels(dataset: CellDataset) -> torch.Tensor:
    return dataset.__getitems__(list(range(len(dataset))))[0]


# --------------------------------------------------------------------------------------------------
# scikit-learn conventions
# --------------------------------------------------------------------------------------------------


def test_init_does_no_work_and_params_round_trip():
    model = HybridClassifier(backbone="no_such_net", feature_source="nonsense", device="nowhere")
    params = model.get_params()
    assert params["backbone"] == "no_such_net" and params["eta"] == XGB_ETA and params["seed"] == SEED
    assert set(params) == {
        "backbone",
        "cnn",
        "feature_source",
        "normalize",
        "eta",
        "n_estimators",
        "max_depth",
        "xgb_params",
        "batch_size",
        "device",
        "seed",
        "progress",
        "tta",
        "threshold",
    }
    assert params["tta"] is False and params["threshold"] == 0.5 and params["cnn"] is None
    assert model.set_params(backbone="efficientnet_b0", eta=0.1) is model
    assert model.backbone == "efficientnet_b0" and model.eta == 0.1
    with pytest.raises(ModelError, match="no_such_net"):
        HybridClassifier(backbone="no_such_net").fit(np.zeros((4, 1280)), [0, 1, 0, 1])
    with pytest.raises(ConfigError, match="feature_source"):
        HybridClassifier(feature_source="nonsense").fit(np.zeros((4, 1280)), [0, 1, 0, 1])


@pytest.mark.parametrize(
    "param, value",
    [
        ("n_estimators", 0),
        ("max_depth", 2.5),
        ("batch_size", True),
        ("eta", 0),
        ("eta", 1.5),
        ("threshold", -0.1),
        ("threshold", float("nan")),
        ("tta", "yes"),
        ("normalize", (1, 2)),
    ],
)
def test_bad_params_are_named_at_fit(param, value):
    with pytest.raises(ConfigError, match=f"{param}="):
        HybridClassifier(**{param: value}).fit(np.zeros((4, 8)), [0, 1, 0, 1])


def test_clone_copies_the_cnn_and_keeps_params(b0):
    model = HybridClassifier(cnn=b0, n_estimators=7, xgb_params={"subsample": 0.9})
    twin = clone(model)
    assert twin.n_estimators == 7 and twin.xgb_params == {"subsample": 0.9}
    assert twin.cnn is not b0 and isinstance(twin.cnn, torch.nn.Module)
    assert not hasattr(twin, "xgb_")


def test_not_fitted_errors(data):
    model = HybridClassifier()
    for call in (model.predict, model.predict_proba, model.score):
        with pytest.raises(NotFittedError):
            call(np.zeros((2, 1280)))
    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    with pytest.raises(NotFittedError):
        model.save(data["root"] / "never")
    # fitted on feature arrays without a CNN: it cannot be saved as a whole model
    on_arrays = HybridClassifier(n_estimators=2, xgb_params=XGB).fit(np.eye(4, 8), [0, 1, 0, 1])
    with pytest.raises(NotFittedError, match="cnn"):
        on_arrays.save(data["root"] / "never")


# --------------------------------------------------------------------------------------------------
# Fit, predict, scores
# --------------------------------------------------------------------------------------------------


def test_hybrid_beats_chance_on_held_out_subjects(data, lite_hybrid):
    accuracy = lite_hybrid.score(data["test"])
    assert accuracy >= ACCURACY_FLOOR, f"held-out accuracy {accuracy:.3f} (measured 0.83 when written)"
    assert lite_hybrid.score(data["train"]) == 1.0
    assert lite_hybrid.n_features_in_ == 1280
    check_is_fitted(lite_hybrid)
    assert lite_hybrid.classes_.tolist() == [0, 1]
    params = lite_hybrid.xgb_.get_params()
    assert params["learning_rate"] == XGB_ETA and params["tree_method"] == "hist" and params["n_estimators"] == 50
    assert params["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert lite_hybrid.preprocessing_ == {"size": SIZE, "crop_ratio": round(CROP_RATIO, 6)}


def test_evals_result_has_error_and_auc_per_round(lite_hybrid):
    result = lite_hybrid.evals_result_
    assert list(result) == ["train", "validation"]
    for curves in result.values():
        assert set(curves) == {"error", "auc"}
        assert len(curves["error"]) == len(curves["auc"]) == 50
        assert all(0.0 <= v <= 1.0 for v in curves["error"] + curves["auc"])
    assert result["train"]["error"][-1] == 0.0


def test_validation_error_curve_matches_accuracy(data, lite_hybrid):
    final_error = lite_hybrid.evals_result_["validation"]["error"][-1]
    assert np.isclose(final_error, 1.0 - lite_hybrid.score(data["test"]), atol=1e-6)


def test_predict_proba_rows_sum_to_one_and_follow_classes(data, lite_hybrid):
    proba = lite_hybrid.predict_proba(data["test"])
    assert proba.shape == (len(data["test"]), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    predicted = lite_hybrid.predict(data["test"])
    np.testing.assert_array_equal(predicted, lite_hybrid.classes_[proba.argmax(axis=1)])
    # column 1 is P(ALL): on the training cells (fitted perfectly) it is high exactly for label 1
    train_proba = lite_hybrid.predict_proba(data["train"])
    labels = data["train"].labels.numpy()
    assert (train_proba[labels == 1, 1] > 0.5).all() and (train_proba[labels == 0, 0] > 0.5).all()


def test_threshold_moves_the_decision_survives_save_and_is_checked(data, lite_hybrid, tmp_path):
    p_all = lite_hybrid.predict_proba(data["test"])[:, 1]
    cut = float(np.quantile(p_all, 0.8))  # well above 0.5 on this fixture: fewer ALL calls
    shifted = copy.deepcopy(lite_hybrid).set_params(threshold=cut)
    expected = (p_all > cut).astype(np.int64)
    np.testing.assert_array_equal(shifted.predict(data["test"]), expected)
    assert 0 < expected.sum() < len(p_all) and not np.array_equal(expected, lite_hybrid.predict(data["test"]))
    loaded = HybridClassifier.load(shifted.save(tmp_path / "shifted"))
    assert loaded.threshold == cut
    np.testing.assert_array_equal(loaded.predict(data["test"]), expected)
    with pytest.raises(ConfigError, match="threshold=1.5"):
        shifted.set_params(threshold=1.5).predict(data["test"])


@pytest.mark.slow
def test_tta_averages_the_8_dihedral_views(data, lite_hybrid, tmp_path):
    tta = copy.deepcopy(lite_hybrid).set_params(tta=True)
    views = [lite_hybrid.xgb_.predict_proba(lite_hybrid.transform(data["test"], view)) for view in range(8)]
    expected = np.mean(views, axis=0)
    np.testing.assert_allclose(tta.predict_proba(data["test"]), expected, rtol=1e-6)
    assert not np.allclose(expected, views[0])  # the views do change the features
    np.testing.assert_array_equal(tta.predict(data["test"]), (expected[:, 1] > 0.5).astype(np.int64))
    assert HybridClassifier.load(tta.save(tmp_path / "tta")).tta is True


def test_fit_on_feature_arrays_matches_fit_on_datasets(data, lite_hybrid):
    X_train = lite_hybrid.transform(data["train"])
    X_test = lite_hybrid.transform(data["test"])
    y_train, y_test = data["train"].labels.numpy(), data["test"].labels.numpy()
    assert X_train.dtype == np.float32 and X_train.shape == (len(data["train"]), 1280)
    on_arrays = clone(lite_hybrid).fit(X_train, y_train, eval_set=[("validation", (X_test, y_test))])
    np.testing.assert_array_equal(on_arrays.predict_proba(X_test), lite_hybrid.predict_proba(data["test"]))
    assert on_arrays.score(X_test, y_test) == lite_hybrid.score(data["test"])
    assert list(on_arrays.evals_result_) == ["validation"]
    assert on_arrays.evals_result_["validation"] == lite_hybrid.evals_result_["validation"]
    assert not hasattr(on_arrays, "preprocessing_")  # features carry no preprocessing
    # a fitted-on-arrays model still classifies datasets (same CNN)
    np.testing.assert_array_equal(on_arrays.predict(data["test"]), lite_hybrid.predict(data["test"]))
    with pytest.raises(ConfigError, match="labels"):
        clone(lite_hybrid).fit(X_train)
    with pytest.raises(ConfigError, match="1280"):
        lite_hybrid.predict(X_test[:, :100])
    with pytest.raises(ConfigError, match="0 \\(HEM\\) or 1 \\(ALL\\)"):
        clone(lite_hybrid).fit(X_train, y_train + 1)
    with pytest.raises(ConfigError, match="both"):
        clone(lite_hybrid).fit(X_train[y_train == 1], y_train[y_train == 1])
    with pytest.raises(ConfigError, match="pass y only with a feature array"):
        clone(lite_hybrid).fit(data["small"], data["small"].labels.numpy())
    with pytest.raises(ConfigError, match="2-D"):
        clone(lite_hybrid).fit(X_train[0], y_train[:1])


def test_refit_forgets_the_previous_fit(data, lite_hybrid):
    X_train = lite_hybrid.transform(data["train"])
    refit = copy.deepcopy(lite_hybrid).fit(X_train, data["train"].labels.numpy())
    assert not hasattr(refit, "preprocessing_") and list(refit.evals_result_) == ["train"]


def test_dataset_cached_at_another_size_is_refused(data, lite_hybrid, tmp_path):
    frame = data["test"].frame.head(4)
    other = CellDataset(build_cache(frame, size=64, folder=tmp_path, progress=False), frame)
    with pytest.raises(ModelError, match="'size': 96"):
        lite_hybrid.predict(other)


# --------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------


def test_extraction_is_evaluation_preprocessing_only(data, lite_hybrid):
    small, cnn = data["small"], copy.deepcopy(lite_hybrid.cnn)
    cnn.train()  # extraction must run in eval mode (batch norm running statistics, no dropout)
    first = HybridClassifier(cnn=cnn, backbone="efficientnet_lite0", batch_size=5).transform(small)
    assert cnn.training  # the caller's mode is restored
    second = HybridClassifier(cnn=cnn, backbone="efficientnet_lite0", batch_size=12).transform(small)
    np.testing.assert_allclose(first, second, rtol=1e-4, atol=1e-4)  # batch size does not matter
    with torch.inference_mode():
        expected = PooledFeatures(cnn, "efficientnet_lite0").eval()(to_model_input(_pixels(small))).numpy()
    assert np.abs(expected).max() > 0.1  # features of a real size: the comparisons below mean something
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-4)
    assert first.shape == (len(small), 1280) and first.dtype == np.float32
    raw = HybridClassifier(cnn=cnn, backbone="efficientnet_lite0", normalize=False).transform(small)
    assert np.abs(raw - first).max() > 0.01 * np.abs(first).max()  # the normalisation reaches the CNN


def test_extraction_leaves_an_eval_cnn_in_eval_mode(data, lite_hybrid):
    cnn = copy.deepcopy(lite_hybrid.cnn).eval()
    HybridClassifier(cnn=cnn, backbone="efficientnet_lite0").transform(data["small"])
    assert not cnn.training


def test_a_cnn_is_needed_to_see_cells(data, b0):
    small = data["small"]
    with pytest.raises(ConfigError, match="cnn=None"):
        HybridClassifier().transform(small)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        HybridClassifier(cnn="efficientnet_b0").transform(small)
    with pytest.raises(ConfigError, match="CellDataset"):
        HybridClassifier(cnn=b0).transform(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ModelError, match="no Linear head"):
        HybridClassifier(cnn=b0, backbone="resnet18").transform(small)
    model = HybridClassifier()
    model.set_params(cnn=b0)
    np.testing.assert_array_equal(model.transform(small), HybridClassifier(cnn=b0).transform(small))


def test_extract_features_sources(data, lite_hybrid):
    small, cnn = data["small"], lite_hybrid.cnn
    features = extract_features(cnn, small, "efficientnet_lite0")
    logits = extract_features(cnn, small, "efficientnet_lite0", source="logits", batch_size=5)
    assert features.shape == (len(small), 1280) and logits.shape == (len(small), 2)
    with torch.inference_mode():
        head = cnn._fc
        np.testing.assert_allclose(head(torch.from_numpy(features)).numpy(), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(features, lite_hybrid.transform(small))
    with pytest.raises(ConfigError, match="feature source 'pixels'"):
        extract_features(cnn, small, "efficientnet_lite0", source="pixels")


def test_logits_source_gives_1000_features_with_an_imagenet_head(data):
    torch.manual_seed(0)
    imagenet_head = build_model("efficientnet_b0", weights=None, num_classes=1000)
    model = HybridClassifier(cnn=imagenet_head, feature_source="logits", n_estimators=3, xgb_params=XGB)
    features = model.transform(data["small"])
    assert features.shape == (len(data["small"]), 1000) and features.dtype == np.float32
    model.fit(data["small"])
    assert model.n_features_in_ == 1000
    default = HybridClassifier(cnn=imagenet_head, n_estimators=3, xgb_params=XGB).fit(data["small"])
    assert default.n_features_in_ == 1280


def test_cnn_predict_proba(data, lite_hybrid):
    cnn = copy.deepcopy(lite_hybrid.cnn)
    cnn.train()
    proba = predict_proba(cnn, data["small"], batch_size=5)
    assert cnn.training  # the caller's mode is restored
    cnn.eval()
    assert proba.shape == (len(data["small"]), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    with torch.inference_mode():
        expected = torch.softmax(cnn(to_model_input(_pixels(data["small"]))), dim=1).numpy()
    assert np.ptp(expected[:, 1]) > 0.01  # the probabilities differ between cells: the comparison means something
    np.testing.assert_allclose(proba, expected, rtol=1e-4, atol=1e-5)
    predict_proba(cnn, data["small"])
    assert not cnn.training


# --------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(lite_hybrid, tmp_path_factory):
    return lite_hybrid.save(tmp_path_factory.mktemp("saved") / "hybrid")


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _edit_manifest(folder: Path, params=None, *, sign=True, **changes) -> None:
    """Edit saved values; with ``sign`` also recompute the manifest's own sha256, as someone crafting a
    manifest would, so that the checks of each value (behind that signature) are what is tested."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("sha256")
    manifest.update(changes)
    manifest["params"].update(params or {})
    if sign:
        manifest["sha256"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(manifest))


def test_an_edited_manifest_is_refused_by_its_own_sha256(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_manifest(folder, {"threshold": 0.3}, sign=False)  # a valid value, but not what was saved
    with pytest.raises(ModelError, match="was edited after the model was saved"):
        HybridClassifier.load(folder)


def test_save_load_round_trip(data, lite_hybrid, saved):
    assert sorted(p.name for p in saved.iterdir()) == ["cnn.pt", "manifest.json", "xgboost.json"]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert (manifest["format"], manifest["version"]) == ("allkit.hybrid", 2)
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["classes"] == {"HEM": 0, "ALL": 1}
    assert manifest["params"]["feature_source"] == "features" and manifest["feature_dim"] == 1280
    assert manifest["cnn_outputs"] == 2
    assert manifest["preprocessing"] == {"size": SIZE, "crop_ratio": round(CROP_RATIO, 6)}
    assert manifest["params"]["normalize"] == [list(IMAGENET_MEAN), list(IMAGENET_STD)]  # normalize=True, spelt out
    assert {"torch", "xgboost", "sklearn"} <= set(manifest["versions"])
    assert set(manifest["files"]) == {"cnn.pt", "xgboost.json"}
    assert manifest["files"]["cnn.pt"] == hashlib.sha256((saved / "cnn.pt").read_bytes()).hexdigest()
    assert manifest["params"]["eta"] == XGB_ETA and manifest["params"]["n_estimators"] == 50
    assert "cnn" not in manifest["params"] and manifest["evals_result"] == lite_hybrid.evals_result_

    loaded = HybridClassifier.load(saved)
    np.testing.assert_array_equal(loaded.predict_proba(data["test"]), lite_hybrid.predict_proba(data["test"]))
    assert loaded.evals_result_ == lite_hybrid.evals_result_
    assert loaded.get_params()["n_estimators"] == 50 and loaded.classes_.tolist() == [0, 1]
    assert loaded.normalize == (IMAGENET_MEAN, IMAGENET_STD) and loaded.preprocessing_ == lite_hybrid.preprocessing_
    assert isinstance(loaded.cnn, torch.nn.Module) and loaded.cnn is not lite_hybrid.cnn
    assert not any(p.name.startswith(".") for p in saved.parent.iterdir())  # no temp dir left


def test_save_replaces_atomically(data, lite_hybrid, tmp_path, monkeypatch):
    target = lite_hybrid.save(tmp_path / "model")
    lite_hybrid.save(target)  # replacing a saved model works
    before = (target / "manifest.json").read_bytes()

    def broken(self, path):
        Path(path).write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(type(lite_hybrid.xgb_), "save_model", broken)
    with pytest.raises(ModelError, match="disk full.*unchanged"):
        lite_hybrid.save(target)
    monkeypatch.undo()
    assert (target / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no half-written or temp dir
    loaded = HybridClassifier.load(target)
    np.testing.assert_array_equal(loaded.predict(data["test"]), lite_hybrid.predict(data["test"]))
    # a non-empty folder that is not a saved model is never replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="refusing"):
        lite_hybrid.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_load_refuses_missing_dir_and_files(saved, tmp_path):
    with pytest.raises(ModelError, match="nowhere does not exist"):
        HybridClassifier.load(tmp_path / "nowhere")
    for name in ("xgboost.json", "cnn.pt", "manifest.json"):
        folder = _copy(saved, tmp_path)
        (folder / name).unlink()
        with pytest.raises(ModelError, match=name.replace(".", r"\.")):
            HybridClassifier.load(folder)
        shutil.rmtree(folder)


def test_load_refuses_tampered_files(saved, tmp_path):
    for name in ("cnn.pt", "xgboost.json"):
        folder = _copy(saved, tmp_path)
        with open(folder / name, "r+b") as handle:
            handle.seek(200)
            byte = handle.read(1)
            handle.seek(200)
            handle.write(bytes([byte[0] ^ 0x01]))
        with pytest.raises(ModelError, match=f"{name}.* damaged or was modified"):
            HybridClassifier.load(folder)
        shutil.rmtree(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": {"HEM": 1, "ALL": 0}}, "classes"),
        ({"version": 99}, "not an allkit model of this version"),
        ({"format": "something-else"}, "not an allkit model of this version"),
        ({"backbone": "efficientnet_b0"}, "efficientnet_b0"),  # the state_dict is a Lite0's
        ({"backbone": "not_a_net"}, "not_a_net"),
        ({"files": {"cnn.pt": "0" * 64}}, "sha256"),
        ({"files": {"../cnn.pt": "0" * 64, "xgboost.json": "0" * 64}}, "damaged or was modified"),
        ({"feature_dim": 7}, "the manifest says 7"),
        ({"params": {"threshold": 2.0}}, "threshold"),
        ({"params": {"threshold": math.nan}}, "threshold"),
        ({"params": {"n_estimators": -3}}, "n_estimators"),
        ({"params": {"eta": "fast"}}, "eta"),
        ({"params": {"normalize": [[0.5], [1]]}}, "normalize"),
        ({"params": {"unknown_param": 1}}, "unknown_param"),
        ({"preprocessing": {"size": -1, "crop_ratio": 0.995556}}, "preprocessing"),
        ({"preprocessing": {"size": 96, "crop_ratio": 2.0}}, "preprocessing"),
    ],
)
def test_load_refuses_edited_manifests(saved, tmp_path, change, message):
    folder = _copy(saved, tmp_path)
    params = change.pop("params", None)
    _edit_manifest(folder, params, **change)
    with pytest.raises(ModelError, match=message):
        HybridClassifier.load(folder)


class _Marker:
    """Unpickling this creates a directory: the test proves that load never gets that far."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_load_never_unpickles(saved, tmp_path, monkeypatch):
    folder = _copy(saved, tmp_path)
    marker = tmp_path / "unpickled"
    torch.save({"features.0.weight": _Marker(marker)}, folder / "cnn.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["cnn.pt"] = hashlib.sha256((folder / "cnn.pt").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError):
        HybridClassifier.load(folder)
    assert not marker.exists()

    # and a genuine model loads with Python's pickle machinery disabled
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    HybridClassifier.load(saved)


def test_backbone_own_normalisation_round_trips(data, lite_hybrid, tmp_path):
    stats = get_backbone("efficientnet_lite0").mean_std
    own = HybridClassifier(**{**lite_hybrid.get_params(), "normalize": stats})
    own.fit(data["train"])
    features_imagenet = lite_hybrid.transform(data["test"])
    features_own = own.transform(data["test"])
    assert not np.allclose(features_imagenet, features_own)  # the statistics really reach the CNN
    folder = own.save(tmp_path / "own")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["params"]["normalize"][0] == pytest.approx(list(stats[0]))
    loaded = HybridClassifier.load(folder)
    assert loaded.normalize == (tuple(stats[0]), tuple(stats[1]))
    np.testing.assert_array_equal(loaded.predict_proba(data["test"]), own.predict_proba(data["test"]))
    with pytest.raises(ConfigError, match="normalize="):
        HybridClassifier(cnn=lite_hybrid.cnn, backbone="efficientnet_lite0", normalize=(1, 2)).transform(data["small"])


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["efficientnet_b0", "efficientnet_lite0"])
def test_the_readme_snippet_runs_as_written(tmp_path, monkeypatch, backbone):
    """The README's library snippet, with its comment's offline hint followed for Lite0 (B0's ImageNet weights
    cannot be downloaded here: random ones), one short epoch, on a small synthetic tree."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("## As a library", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    line = 'build_model("efficientnet_b0", weights="imagenet")'
    assert line in snippet and "Trainer().fit(" in snippet
    swap = 'build_model("efficientnet_lite0", "offline")' if backbone == "efficientnet_lite0" else f"{line[:-11]}None)"
    snippet = snippet.replace(line, swap).replace("Trainer().fit(", "Trainer(epochs=1, max_batches=1).fit(")
    make_synthetic_cnmc(tmp_path, seed=1, cells_per_subject=3, final_cells=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALLKIT_CACHE", str(tmp_path / "cache"))
    exec(compile(snippet.replace('load_cnmc("data")', 'load_cnmc(".")'), "README.md", "exec"), {})
