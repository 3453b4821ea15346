"""The GPU and Colab paths, checked on a CPU with the CUDA queries mocked: the precision chosen for each
card, the profile Colab runs by default, the extraction batch size, and a Kaggle download used in place."""

import sys
import types

import pytest
import torch

import allkit.inference
import allkit.study.download
from allkit.data import CellDataset, build_cache, load_cnmc
from allkit.device import amp_dtype
from allkit.models import build_model
from allkit.study.config import get_config
from allkit.study.download import download_cnmc
from allkit.study.synthetic import make_synthetic_cnmc
from allkit.train import Trainer


@pytest.fixture
def cuda(monkeypatch):
    """A pretend GPU of the compute capability the test sets with ``cuda(major, minor)``."""

    def set_capability(major: int, minor: int = 0):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (major, minor))

    return set_capability


@pytest.mark.parametrize(
    "capability, expected",
    [((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_the_precision_follows_the_card(cuda, capability, expected):
    """T4 (7.5) and V100 (7.0): float16 with a gradient scaler; A100 (8.0) and H100 (9.0): bfloat16."""
    cuda(*capability)
    assert amp_dtype(torch.device("cuda"), "auto") is expected
    assert amp_dtype(torch.device("cuda"), False) is None
    assert amp_dtype(torch.device("cpu"), "auto") is None and amp_dtype(torch.device("cpu"), True) is torch.bfloat16


def test_float16_training_gets_a_gradient_scaler_and_bfloat16_none(cuda, monkeypatch):
    made = []

    class Scaler:
        def __init__(self, device):
            made.append(device)

    monkeypatch.setattr(torch.amp, "GradScaler", Scaler)
    optimizer = torch.optim.Adamax([torch.nn.Parameter(torch.zeros(1))])
    cuda(7, 5)
    tools = Trainer(amp="auto")._step_tools(optimizer, torch.device("cuda"), steps=3)
    assert tools["dtype"] is torch.float16 and isinstance(tools["scaler"], Scaler) and made == ["cuda"]
    cuda(8, 0)
    tools = Trainer(amp="auto")._step_tools(optimizer, torch.device("cuda"), steps=3)
    assert tools["dtype"] is torch.bfloat16 and tools["scaler"] is None


def test_colab_with_a_gpu_runs_the_paper_profile_by_default(cuda, monkeypatch):
    monkeypatch.delenv("ALLKIT_PROFILE", raising=False)
    assert get_config().name == "sample"  # not on Colab
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_config().name == "sample"  # Colab without a GPU
    cuda(7, 5)
    assert get_config().name == "paper"
    monkeypatch.setenv("ALLKIT_PROFILE", "ci")  # a choice made by the user wins
    assert get_config().name == "ci" and get_config("sample").name == "sample"


def test_inference_batches_are_large_on_a_gpu_only(monkeypatch, tmp_path):
    seen = []
    real = allkit.inference.make_loader

    def recording(dataset, *, batch_size, **kwargs):
        seen.append(batch_size)
        return real(dataset, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(allkit.inference, "make_loader", recording)
    root = make_synthetic_cnmc(tmp_path / "data", seed=1, cells_per_subject=2, final_cells=0)
    frame = load_cnmc(root).frame.head(3)
    cells = CellDataset(build_cache(frame, size=32, folder=tmp_path / "cache", progress=False), frame)
    model = build_model("resnet18").eval()
    allkit.inference.predict(model, cells)
    allkit.inference.predict(model, cells, batch_size=7)
    assert seen == [allkit.inference.BATCH_SIZE, 7] and allkit.inference.GPU_BATCH_SIZE == 256


def test_a_kaggle_download_is_used_where_it_lies(monkeypatch, tmp_path):
    fetched = make_synthetic_cnmc(tmp_path / "kagglehub-cache", seed=2, cells_per_subject=2, final_cells=0).parent
    fake = types.SimpleNamespace(dataset_download=lambda handle, force_download=False: str(fetched))
    monkeypatch.setattr(allkit.study.download, "kagglehub", fake)
    found = download_cnmc(tmp_path / "data")
    assert found == fetched and not (tmp_path / "data").exists()  # no second copy of 0.9 GB
