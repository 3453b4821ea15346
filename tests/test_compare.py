"""compare_backbones (the paper's Table 1, measured) on the synthetic stand-in, with the network blocked."""

from __future__ import annotations

import json
import math
import socket
import urllib.error

import pytest
import torch

import allkit.pipeline
from allkit.compare import COLUMNS, UNAVAILABLE, backbone_image_size, compare_backbones
from allkit.errors import AllkitError
from allkit.profiles import get_profile


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


def test_offline_rows_and_cache(synthetic_root, tmp_path, no_network, monkeypatch):
    out = tmp_path / "backbones"
    names = ("efficientnet_lite0", "resnet18")
    table = compare_backbones("ci", synthetic_root, names=names, out=out, progress=False)

    assert list(table.columns) == COLUMNS and list(table["backbone"]) == list(names)
    lite0, resnet = table.iloc[0], table.iloc[1]
    assert lite0["status"] == "computed" and "offline" in lite0["weights"]
    for col in ("cnn_accuracy", "hybrid_accuracy", "low", "high", "hybrid_weighted_f1"):
        assert 0.0 <= lite0[col] <= 1.0
    assert lite0["low"] <= lite0["hybrid_accuracy"] <= lite0["high"]
    assert lite0["image_size"] == get_profile("ci").image_size and lite0["test_cells"] > 0
    assert resnet["status"] == UNAVAILABLE and "resnet18" in resnet["note"]
    assert all(math.isnan(resnet[col]) for col in ("cnn_accuracy", "hybrid_accuracy", "low", "high"))
    assert resnet["params"] > 0  # counted from the architecture, no weights needed

    cached = json.loads((out / "efficientnet_lite0.json").read_text())
    assert cached["row"]["hybrid_accuracy"] == lite0["hybrid_accuracy"]
    assert not (out / "resnet18.json").exists()  # unavailable rows are retried next time

    def no_training(*args, **kwargs):
        raise AssertionError("the cached backbone was trained again")

    monkeypatch.setattr(allkit.pipeline, "finetune", no_training)
    again = compare_backbones("ci", synthetic_root, names=names, out=out, progress=False)
    assert again.iloc[0]["hybrid_accuracy"] == lite0["hybrid_accuracy"]
    assert again.iloc[1]["status"] == UNAVAILABLE


def test_image_size_per_profile():
    size, note = backbone_image_size(get_profile("paper"), "inception_v3")
    assert size == 299 and "native" in note
    assert backbone_image_size(get_profile("paper"), "efficientnet_b0") == (224, "")
    assert backbone_image_size(get_profile("sample"), "resnet18") == (224, "")
    size, note = backbone_image_size(get_profile("ci"), "inception_v3")
    assert size == 299 and "auxiliary" in note


def test_rebuild_prepared_gives_a_loaded_run_its_test_cells(synthetic_root, tmp_path, no_network):
    from allkit.pipeline import load_run, rebuild_prepared, reproduce

    fresh = reproduce("ci", synthetic_root, out=tmp_path / "run", backbone="efficientnet_lite0", weights="offline",
                      progress=False, figures=False)
    loaded = load_run(tmp_path / "run", with_model=True)
    assert loaded.prepared is None
    prepared = rebuild_prepared(loaded, progress=False)
    assert loaded.prepared is prepared and rebuild_prepared(loaded) is prepared
    for part, dataset in fresh.prepared.datasets.items():
        assert list(prepared.datasets[part].frame["path"]) == list(dataset.frame["path"])
    assert prepared.backbone == "efficientnet_lite0" and prepared.weights == "offline"
    assert prepared.normalize == fresh.prepared.normalize
    test = prepared.datasets["test"]
    accuracy = float((loaded.hybrid.predict(test) == test.frame["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(fresh.metrics["hybrid"]["accuracy"])
    (tmp_path / "run" / "metrics.json").write_text("{")  # damaged: an error naming the file, not a traceback
    with pytest.raises(AllkitError, match=r"metrics\.json is not valid JSON"):
        load_run(tmp_path / "run")
