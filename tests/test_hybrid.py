"""Tests of allkit.hybrid: CNN features + XGBoost as a scikit-learn estimator, save/load, feature caching.

Data: one synthetic C-NMC tree per module (3 folds x (2 ALL + 1 HEM) subjects x 10 cells for training,
3 ALL + 3 HEM held-out preliminary-test subjects x 10 cells for testing), cached at 96 px.

CNNs: the accuracy test uses EfficientNet-Lite0 with its packaged (offline) ImageNet weights, frozen, as
the feature extractor (no fine-tuning on CPU in a unit test); the mechanics tests use a randomly
initialised EfficientNet-B0 (the paper's backbone), which extracts quickly at 96 px.
"""

from __future__ import annotations

import copy
import json
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

from allkit.constants import SEED, XGB_ETA
from allkit.data import CellDataset, build_cache
from allkit.errors import ModelError
from allkit.hybrid import HybridClassifier, cnn_predict_proba
from allkit.models import build_model, feature_extractor
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
    data = train_test_factory(tmp_path_factory.mktemp("hybrid-data"), cache_size=SIZE, seed=0, cells_per_subject=10,
                              prelim_subjects=(3, 3), final_cells=0, size=160)
    small = data["train"].frame.groupby("label").head(6)  # 12 cells of both classes, for quick mechanics tests
    return {**data, "small": CellDataset(data["cache"], small)}


@pytest.fixture(scope="module")
def lite_hybrid(data):
    model = HybridClassifier(
        backbone="efficientnet_lite0", weights="offline", n_estimators=50, progress=False, xgb_params=XGB
    )
    return model.fit(data["train"], eval_sets=[("train", data["train"]), ("validation", data["test"])])


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return build_model("efficientnet_b0", weights=None, num_classes=2)


class _CountForwards:
    """Counts CNN forward passes (one per batch) run for feature extraction.

    The extraction may run a batch-norm-fused copy of the CNN, so hooks on ``model`` would miss them:
    count the batches that :func:`allkit.train.batched_inference` yields instead.
    """

    def __init__(self, model=None):
        import allkit.train

        self.calls = 0
        self._module = allkit.train
        self._original = allkit.train.batched_inference

    def _counting(self, *args, **kwargs):
        for out in self._original(*args, **kwargs):
            self.calls += 1
            yield out

    def __enter__(self):
        self._module.batched_inference = self._counting
        return self

    def __exit__(self, *exc):
        self._module.batched_inference = self._original


# --------------------------------------------------------------------------------------------------
# scikit-learn conventions
# --------------------------------------------------------------------------------------------------


def test_init_does_no_work_and_params_round_trip():
    model = HybridClassifier(backbone="no_such_net", feature_source="nonsense", device="nowhere")
    params = model.get_params()
    assert params["backbone"] == "no_such_net" and params["eta"] == XGB_ETA and params["seed"] == SEED
    assert set(params) == {
        "backbone", "cnn", "weights", "feature_source", "normalize", "eta", "n_estimators", "max_depth",
        "xgb_params", "batch_size", "device", "seed", "feature_cache_dir", "progress", "tta", "threshold",
    }  # fmt: skip
    assert params["tta"] is False and params["threshold"] == 0.5
    assert model.set_params(backbone="efficientnet_b0", eta=0.1) is model
    assert model.backbone == "efficientnet_b0" and model.eta == 0.1
    with pytest.raises(ModelError, match="no_such_net"):
        HybridClassifier(backbone="no_such_net", progress=False).fit(np.zeros((4, 1280)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="feature_source"):
        HybridClassifier(feature_source="nonsense", progress=False).fit(np.zeros((4, 1280)), [0, 1, 0, 1])


def test_clone_copies_the_cnn_and_keeps_params(b0):
    model = HybridClassifier(cnn=b0, n_estimators=7, xgb_params={"subsample": 0.9})
    twin = clone(model)
    assert twin.n_estimators == 7 and twin.xgb_params == {"subsample": 0.9}
    assert twin.cnn is not b0 and isinstance(twin.cnn, torch.nn.Module)
    assert not hasattr(twin, "xgb_")


def test_not_fitted_errors(data):
    model = HybridClassifier(progress=False)
    for call in (model.predict, model.predict_proba, model.score):
        with pytest.raises(NotFittedError):
            call(np.zeros((2, 1280)))
    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    with pytest.raises(NotFittedError):
        model.save(data["root"] / "never")


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
    assert lite_hybrid.booster_ is lite_hybrid.xgb_.get_booster()
    params = lite_hybrid.xgb_.get_params()
    assert params["learning_rate"] == XGB_ETA and params["tree_method"] == "hist"
    assert params["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert lite_hybrid.preprocessing_["size"] == SIZE


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
    with pytest.raises(ValueError, match="threshold=1.5"):
        shifted.set_params(threshold=1.5).predict(data["test"])


def test_fit_on_feature_arrays_matches_fit_on_datasets(data, lite_hybrid):
    X_train = lite_hybrid.extract_features(data["train"])
    X_test = lite_hybrid.extract_features(data["test"])
    y_train, y_test = data["train"].labels.numpy(), data["test"].labels.numpy()
    assert X_train.dtype == np.float32 and X_train.shape == (len(data["train"]), 1280)
    on_arrays = clone(lite_hybrid).fit(X_train, y_train, eval_sets=[("validation", (X_test, y_test))])
    np.testing.assert_array_equal(on_arrays.predict_proba(X_test), lite_hybrid.predict_proba(data["test"]))
    assert on_arrays.score(X_test, y_test) == lite_hybrid.score(data["test"])
    assert list(on_arrays.evals_result_) == ["validation"]
    assert on_arrays.evals_result_["validation"] == lite_hybrid.evals_result_["validation"]
    # a fitted-on-arrays model still classifies datasets (same CNN)
    np.testing.assert_array_equal(on_arrays.predict(data["test"]), lite_hybrid.predict(data["test"]))
    with pytest.raises(ValueError, match="labels"):
        clone(lite_hybrid).fit(X_train)
    with pytest.raises(ValueError, match="1280"):
        lite_hybrid.predict(X_test[:, :100])
    with pytest.raises(ValueError, match="0 \\(HEM\\) or 1 \\(ALL\\)"):
        clone(lite_hybrid).fit(X_train, y_train + 1)
    with pytest.raises(ValueError, match="both"):
        clone(lite_hybrid).fit(X_train[y_train == 1], y_train[y_train == 1])


def test_dataset_cached_at_another_size_is_refused(data, lite_hybrid, tmp_path):
    frame = data["test"].frame.head(4)
    other = CellDataset(build_cache(frame, size=64, cache_dir=tmp_path, progress=False), frame)
    with pytest.raises(ModelError, match="size=96"):
        lite_hybrid.predict(other)


# --------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------


def test_extraction_is_evaluation_preprocessing_only(data, b0):
    frame = data["small"].frame

    def random_flip(image):  # an augmentation that must never reach the extracted features
        return image.flip(-1) if torch.rand(()) < 0.5 else image.flip(-2)

    augmented = CellDataset(data["cache"], frame, transform=random_flip)
    plain = CellDataset(data["cache"], frame)
    b0.train()  # fitting/extracting must put it in eval mode (batch norm running statistics)
    extractor = HybridClassifier(cnn=b0, progress=False, batch_size=5)
    first = extractor.extract_features(augmented)
    assert not extractor.cnn_.training  # the frozen CNN stays in eval mode
    second = HybridClassifier(cnn=b0, progress=False, batch_size=12).extract_features(augmented)
    np.testing.assert_allclose(first, second, rtol=1e-4, atol=1e-5)  # batch size does not matter
    pixels = torch.from_numpy(data["cache"].get(frame)).movedim(-1, -3)
    with torch.inference_mode():
        expected = feature_extractor(b0, "efficientnet_b0").eval()(to_model_input(pixels)).numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5)
    third = HybridClassifier(cnn=b0, progress=False).extract_features(plain)
    np.testing.assert_array_equal(third, HybridClassifier(cnn=b0, progress=False).extract_features(plain))


def test_cnn_before_fit_follows_params_and_random_init_is_seeded(data, b0):
    small = data["small"]
    model = HybridClassifier(progress=False)  # cnn=None: a seeded random-init EfficientNet-B0
    built = model.extract_features(small)
    np.testing.assert_array_equal(built, HybridClassifier(progress=False).extract_features(small))
    model.set_params(cnn=b0)
    given = model.extract_features(small)
    assert model.cnn_ is b0 and not np.array_equal(given, built)
    np.testing.assert_array_equal(given, HybridClassifier(cnn=b0, progress=False).extract_features(small))


def test_feature_cache_avoids_re_extraction(data, b0, tmp_path):
    small = data["small"]
    model = HybridClassifier(cnn=b0, n_estimators=5, batch_size=6, progress=False, feature_cache_dir=tmp_path,
                             xgb_params=XGB)
    with _CountForwards(b0) as count:
        first = model.extract_features(small)
        assert count.calls == 2  # 12 cells in batches of 6
        model.fit(small)
        model.score(small)
        model.predict_proba(small)
        np.testing.assert_array_equal(model.extract_features(small), first)
        assert count.calls == 2
        assert len(list(tmp_path.glob("features-*.npy"))) == 1
        # a new estimator with the same CNN weights reads the disk cache
        again = HybridClassifier(cnn=b0, batch_size=6, progress=False, feature_cache_dir=tmp_path)
        np.testing.assert_array_equal(again.extract_features(small), first)
        assert count.calls == 2
        # another feature source is another cache entry
        logits = HybridClassifier(cnn=b0, feature_source="logits", batch_size=6, progress=False,
                                  feature_cache_dir=tmp_path).extract_features(small)
        assert logits.shape == (len(small), 2) and count.calls == 4
    # other weights, other features: the cache is keyed by the weights' hash
    other = clone(again)
    with torch.no_grad():
        other.cnn.features[0][0].weight.mul_(0.5)
    with _CountForwards(other.cnn) as count_other:
        assert not np.array_equal(other.extract_features(small), first)
    assert count_other.calls == 2 and len(list(tmp_path.glob("features-*.npy"))) == 3


def test_logits_source_gives_1000_features_with_an_imagenet_head(data):
    torch.manual_seed(0)
    imagenet_head = build_model("efficientnet_b0", weights=None, num_classes=1000)
    model = HybridClassifier(cnn=imagenet_head, feature_source="logits", n_estimators=3, progress=False,
                             xgb_params=XGB)
    features = model.extract_features(data["small"])
    assert features.shape == (len(data["small"]), 1000) and features.dtype == np.float32
    model.fit(data["small"])
    assert model.n_features_in_ == 1000
    # cnn=None with feature_source="logits" keeps the 1000-class head, as the authors' code did
    built = HybridClassifier(feature_source="logits", n_estimators=3, progress=False, xgb_params=XGB)
    built.fit(data["small"])
    assert built.n_features_in_ == 1000 and built.cnn_.classifier[1].out_features == 1000
    assert HybridClassifier(n_estimators=3, progress=False, xgb_params=XGB).fit(data["small"]).n_features_in_ == 1280


def test_cnn_predict_proba(data, b0):
    b0.train()
    proba = cnn_predict_proba(b0, data["small"], batch_size=5)
    assert b0.training  # the caller's mode is restored
    assert proba.shape == (len(data["small"]), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    pixels = torch.from_numpy(data["cache"].get(data["small"].frame)).movedim(-1, -3)
    with torch.inference_mode():
        b0.eval()
        expected = torch.softmax(b0(to_model_input(pixels)), dim=1).numpy()
        b0.train()
    np.testing.assert_allclose(proba, expected, rtol=1e-4, atol=1e-5)
    b0.eval()
    cnn_predict_proba(b0, data["small"])
    assert not b0.training
    with pytest.raises(ModelError, match="1000-output"):
        cnn_predict_proba(build_model("efficientnet_b0", num_classes=1000), data["small"])


# --------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(lite_hybrid, tmp_path_factory):
    return lite_hybrid.save(tmp_path_factory.mktemp("saved") / "hybrid")


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_save_load_round_trip(data, lite_hybrid, saved):
    assert sorted(p.name for p in saved.iterdir()) == [
        "cnn.pt", "evals_result.json", "manifest.json", "xgboost.json"
    ]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["class_mapping"] == {"HEM": 0, "ALL": 1}
    assert manifest["feature_source"] == "features" and manifest["feature_dim"] == 1280
    assert manifest["preprocessing"]["size"] == SIZE and manifest["preprocessing"]["normalize"] is True
    assert {"torch", "xgboost", "sklearn"} <= set(manifest["versions"])
    assert set(manifest["files"]) == {"cnn.pt", "xgboost.json", "evals_result.json"}
    assert manifest["params"]["eta"] == XGB_ETA and manifest["params"]["n_estimators"] == 50

    loaded = HybridClassifier.load(saved, expected_backbone="efficientnet_lite0")
    np.testing.assert_array_equal(loaded.predict_proba(data["test"]), lite_hybrid.predict_proba(data["test"]))
    assert loaded.evals_result_ == lite_hybrid.evals_result_
    assert loaded.get_params()["n_estimators"] == 50 and loaded.classes_.tolist() == [0, 1]
    assert not any(p.name.startswith(".") for p in saved.parent.iterdir())  # no temp dir left


def test_save_replaces_atomically(data, lite_hybrid, tmp_path, monkeypatch):
    target = lite_hybrid.save(tmp_path / "model")
    lite_hybrid.save(target)  # replacing a saved model works
    before = (target / "manifest.json").read_bytes()

    def broken(self, path):
        Path(path).write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(type(lite_hybrid.xgb_), "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
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
    with pytest.raises(ModelError, match="does not exist"):
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
        with pytest.raises(ModelError, match="corrupted or was modified"):
            HybridClassifier.load(folder)
        shutil.rmtree(folder)


def test_load_refuses_mismatches(saved, tmp_path):
    with pytest.raises(ModelError, match="expected backbone 'efficientnet_b0'"):
        HybridClassifier.load(saved, expected_backbone="efficientnet_b0")
    cases = [
        ({"class_mapping": {"HEM": 1, "ALL": 0}}, "class mapping"),
        ({"manifest_version": 99}, "manifest_version 99"),
        ({"format": "something-else"}, "not an allkit hybrid manifest"),
        ({"backbone": "efficientnet_b0"}, "efficientnet_b0"),  # the state_dict is a Lite0's
        ({"backbone": "not_a_net"}, "unknown backbone"),
    ]
    for change, message in cases:
        folder = _copy(saved, tmp_path)
        _edit_manifest(folder, **change)
        with pytest.raises(ModelError, match=message):
            HybridClassifier.load(folder)
        shutil.rmtree(folder)


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
    import hashlib

    manifest["files"]["cnn.pt"]["sha256"] = hashlib.sha256((folder / "cnn.pt").read_bytes()).hexdigest()
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
    from allkit.models import get_spec

    spec = get_spec("efficientnet_lite0")
    own = HybridClassifier(**{**lite_hybrid.get_params(), "normalize": (spec.mean, spec.std)})
    own.fit(data["train"])
    features_imagenet = lite_hybrid.extract_features(data["test"])
    features_own = own.extract_features(data["test"])
    assert not np.allclose(features_imagenet, features_own)  # the statistics really reach the CNN
    folder = own.save(tmp_path / "own")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["preprocessing"]["mean"] == pytest.approx(list(spec.mean))
    loaded = HybridClassifier.load(folder)
    assert loaded.normalize == (tuple(spec.mean), tuple(spec.std))
    np.testing.assert_array_equal(loaded.predict_proba(data["test"]), own.predict_proba(data["test"]))
    with pytest.raises(ValueError, match="normalize="):
        HybridClassifier(backbone="efficientnet_lite0", normalize=(1, 2), progress=False).extract_features(data["small"])
