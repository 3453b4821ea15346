"""Trainer, checkpoints, batched inference and perf helpers, on a tiny CNN and small synthetic cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from allkit import perf
from allkit.data.cache import build_cache
from allkit.data.discover import load_cnmc
from allkit.data.loader import CellDataset
from allkit.data.synthetic import make_synthetic_cnmc
from allkit.errors import AllkitError
from allkit.train import (
    CheckpointError,
    Trainer,
    TrainingDivergedError,
    batched_inference,
    epoch_seeds,
    load_checkpoint,
)

SIZE = 32


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


class Crashing(TinyCNN):
    """Raises (a simulated interruption) or returns NaN at the ``at``-th training forward call."""

    def __init__(self, at: int, mode: str = "raise"):
        super().__init__()
        self.at, self.mode, self.calls = at, mode, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                if self.mode == "raise":
                    raise KeyboardInterrupt("simulated interruption")
                return out * float("nan")
        return out


class WithAux(TinyCNN):
    """Returns (logits, aux) in train mode, like Inception-v3; aux == logits."""

    def forward(self, x):
        out = super().forward(x)
        return (out, out) if self.training else out


def tiny(seed: int = 0, cls=TinyCNN, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kwargs)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def quick(**kwargs) -> Trainer:
    params = dict(epochs=3, batch_size=8, lr=3e-3, device="cpu", progress=False, seed=1)
    params.update(kwargs)
    return Trainer(**params)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-synthetic")
    make_synthetic_cnmc(root, seed=3, subjects_per_fold=(2, 1), n_folds=2, cells_per_subject=10,
                        prelim_subjects=(0, 0), final_cells=0, size=64)
    frame = load_cnmc(root).frame
    cache = build_cache(frame, size=SIZE, cache_dir=tmp_path_factory.mktemp("train-cache"), progress=False)
    train_frame = cache.frame[cache.frame["fold"] == "fold_0"]
    val_frame = cache.frame[cache.frame["fold"] == "fold_1"]
    flipped = val_frame.assign(label=1 - val_frame["label"])  # val loss rises as the model learns
    return {
        "train": CellDataset(cache, train_frame),
        "val": CellDataset(cache, val_frame),
        "flipped": CellDataset(cache, flipped),
    }


# --------------------------------------------------------------------------------------------------
# fit, history
# --------------------------------------------------------------------------------------------------


def test_loss_falls_and_history_complete(data):
    trainer = quick(epochs=6).fit(tiny(), data["train"], data["val"])
    history = trainer.history_
    assert [h["epoch"] for h in history] == list(range(1, 7))
    keys = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_second", "lr"}
    for record in history:
        assert keys <= record.keys()
        assert 0.0 <= record["train_acc"] <= 1.0 and 0.0 <= record["val_acc"] <= 1.0
        assert record["images_per_second"] > 0 and record["lr"] == pytest.approx(3e-3)
        assert record["train_images"] == len(data["train"])
    first, last_two = history[0]["train_loss"], [h["train_loss"] for h in history[-2:]]
    assert max(last_two) < first - 0.05, [h["train_loss"] for h in history]
    assert trainer.device_ == torch.device("cpu")
    assert trainer.best_epoch_ == min(history, key=lambda h: h["val_loss"])["epoch"]


def test_without_validation(data):
    trainer = quick(epochs=1).fit(tiny(), data["train"])
    assert trainer.history_[0]["val_loss"] is None and trainer.best_epoch_ is None


def test_max_batches_caps_each_epoch(data):
    trainer = quick(epochs=2, batch_size=4, max_batches=2).fit(tiny(), data["train"], data["val"])
    assert [h["train_images"] for h in trainer.history_] == [8, 8]


def test_same_seed_same_weights_and_seed_matters(data):
    a, b, c = tiny(), tiny(), tiny()
    quick(epochs=2).fit(a, data["train"])
    quick(epochs=2).fit(b, data["train"])
    quick(epochs=2, seed=99).fit(c, data["train"])
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_epoch_seeds_depend_on_seed_and_epoch():
    assert epoch_seeds(1, 2) == epoch_seeds(1, 2)
    assert len({epoch_seeds(1, 1), epoch_seeds(1, 2), epoch_seeds(2, 1)}) == 3
    assert len(set(epoch_seeds(1, 1))) == 3


def test_inception_style_aux_loss_weighted(data):
    # lr so small that nothing moves: the aux model's loss is (1 + 0.4) x the plain one
    plain = quick(epochs=1, lr=1e-30, augment=False).fit(tiny(), data["train"])
    aux = quick(epochs=1, lr=1e-30, augment=False).fit(tiny(cls=WithAux), data["train"])
    assert aux.history_[0]["train_loss"] == pytest.approx(1.4 * plain.history_[0]["train_loss"], rel=1e-5)


def test_class_weight_balanced_matches_sklearn(data):
    from sklearn.utils.class_weight import compute_class_weight

    labels = data["train"].labels.numpy()
    assert len(set(labels.tolist())) == 2 and np.bincount(labels)[0] != np.bincount(labels)[1]
    balanced = quick(epochs=1, class_weight="balanced").fit(tiny(), data["train"])
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    np.testing.assert_allclose(balanced.class_weight_.numpy(), expected, rtol=1e-6)
    plain = quick(epochs=1).fit(tiny(), data["train"])
    assert plain.class_weight_ is None
    assert balanced.history_[0]["train_loss"] != pytest.approx(plain.history_[0]["train_loss"], rel=1e-6)
    manual = quick(epochs=1, class_weight=list(expected)).fit(tiny(), data["train"])
    assert manual.history_[0]["train_loss"] == pytest.approx(balanced.history_[0]["train_loss"], rel=1e-6)


def test_bad_parameters_are_named(data):
    with pytest.raises(ValueError, match="lr="):
        quick(lr=-1).fit(tiny(), data["train"])
    with pytest.raises(ValueError, match="optimizer="):
        quick(optimizer="lbfgs").fit(tiny(), data["train"])
    with pytest.raises(ValueError, match="class_weight="):
        quick(class_weight="auto").fit(tiny(), data["train"])
    with pytest.raises(ValueError, match="keep_best"):
        quick(keep_best=True).fit(tiny(), data["train"])
    with pytest.raises(ValueError, match="checkpoint_dir"):
        quick().fit(tiny(), data["train"], resume=True)


# --------------------------------------------------------------------------------------------------
# keep_best, checkpoints, resume, divergence
# --------------------------------------------------------------------------------------------------


def test_keep_best_restores_best_epoch(data, tmp_path):
    reference = quick(epochs=4).fit(tiny(), data["train"], data["flipped"])
    best = reference.best_epoch_
    assert best == min(reference.history_, key=lambda h: h["val_loss"])["epoch"]
    at_best = tiny()
    quick(epochs=best).fit(at_best, data["train"], data["flipped"])
    kept = tiny()
    trainer = quick(epochs=4, keep_best=True, checkpoint_dir=tmp_path)
    trainer.fit(kept, data["train"], data["flipped"])
    assert trainer.best_epoch_ == best
    assert same_weights(kept, at_best)
    assert len(trainer.history_) == 4


def test_checkpoint_loads_with_weights_only(data, tmp_path):
    model = tiny()
    trainer = quick(epochs=2, checkpoint_dir=tmp_path).fit(model, data["train"], data["val"])
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw["epoch"] == 2 and len(raw["history"]) == 2
    assert raw["params"]["batch_size"] == 8 and raw["params"]["optimizer"] == "adamax"
    assert raw["history"] == trainer.history_
    state = model.state_dict()
    assert all(torch.equal(raw["model"][k], state[k]) for k in state)
    assert raw["optimizer"]["state"]  # Adamax moments are there
    assert load_checkpoint(tmp_path)["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_equals_uninterrupted(data, tmp_path, num_workers):
    uninterrupted = tiny()
    quick(epochs=3, num_workers=num_workers).fit(uninterrupted, data["train"], data["val"])

    batches = math.ceil(len(data["train"]) / 8)
    crashing = tiny(cls=Crashing, at=2 * batches + 2)  # dies during epoch 3
    with pytest.raises(KeyboardInterrupt):
        quick(epochs=3, checkpoint_dir=tmp_path, num_workers=num_workers).fit(
            crashing, data["train"], data["val"])
    assert load_checkpoint(tmp_path)["epoch"] == 2

    resumed = tiny(seed=123)  # a fresh process would build the model anew: its init does not matter
    trainer = quick(epochs=3, checkpoint_dir=tmp_path, num_workers=num_workers)
    trainer.fit(resumed, data["train"], data["val"], resume=True)
    assert same_weights(resumed, uninterrupted)
    assert [h["epoch"] for h in trainer.history_] == [1, 2, 3]
    assert load_checkpoint(tmp_path)["epoch"] == 3

    # resuming a finished run trains nothing and restores its final weights
    again = tiny(seed=7)
    quick(epochs=3, checkpoint_dir=tmp_path).fit(again, data["train"], data["val"], resume=True)
    assert same_weights(again, uninterrupted)


def test_efficientnet_b0_resume_exact(data, tmp_path):
    """The paper's backbone (dropout + stochastic depth, channels-last on CPU): resume is still exact."""
    from allkit.models import build_model

    def b0():
        torch.manual_seed(0)
        return build_model("efficientnet_b0", weights=None)

    settings = dict(epochs=2, max_batches=2, lr=1e-3)
    uninterrupted = b0()
    quick(**settings).fit(uninterrupted, data["train"])

    crashing, calls = b0(), []

    def interrupt(module, args):
        if module.training:
            calls.append(1)
            if len(calls) == 3:  # epoch 2, batch 1
                raise KeyboardInterrupt("simulated interruption")

    handle = crashing.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        quick(checkpoint_dir=tmp_path, **settings).fit(crashing, data["train"])
    handle.remove()
    resumed = b0()
    quick(checkpoint_dir=tmp_path, **settings).fit(resumed, data["train"], resume=True)
    assert same_weights(resumed, uninterrupted)


def test_resume_refuses_other_settings(data, tmp_path):
    quick(epochs=1, checkpoint_dir=tmp_path).fit(tiny(), data["train"])
    with pytest.raises(CheckpointError, match="lr"):
        quick(epochs=2, lr=1e-2, checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    with pytest.raises(CheckpointError, match="label_smoothing: checkpoint 0.0 vs now 0.1"):
        quick(epochs=2, label_smoothing=0.1, checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    with pytest.raises(CheckpointError, match="lr_schedule: checkpoint 'constant' vs now 'cosine'"):
        quick(epochs=2, lr_schedule="cosine", checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    cosine = tmp_path / "cosine"
    quick(epochs=2, lr_schedule="cosine", checkpoint_dir=cosine).fit(tiny(), data["train"])
    with pytest.raises(CheckpointError, match="the cosine schedule spans all epochs"):
        quick(epochs=3, lr_schedule="cosine", checkpoint_dir=cosine).fit(tiny(), data["train"], resume=True)


def test_checkpoint_from_before_the_schedule_parameters_resumes(data, tmp_path):
    quick(epochs=1, checkpoint_dir=tmp_path).fit(tiny(), data["train"])
    state = load_checkpoint(tmp_path)
    for name in ("lr_schedule", "warmup_epochs", "label_smoothing"):
        del state["params"][name]
    torch.save(state, tmp_path / "last.pt")
    resumed = quick(epochs=2, checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    assert [h["epoch"] for h in resumed.history_] == [1, 2]


def test_nan_loss_raises_and_keeps_checkpoint(data, tmp_path):
    batches = math.ceil(len(data["train"]) / 8)
    model = tiny(cls=Crashing, at=batches + 2, mode="nan")  # epoch 2, batch 2
    with pytest.raises(TrainingDivergedError) as info:
        quick(epochs=3, checkpoint_dir=tmp_path).fit(model, data["train"], data["val"])
    error = info.value
    assert isinstance(error, AllkitError)
    assert (error.epoch, error.batch) == (2, 2)
    message = str(error)
    assert "epoch 2" in message and "batch 2" in message and "lower learning rate" in message
    saved = load_checkpoint(tmp_path)
    assert saved["epoch"] == 1
    state = model.state_dict()  # weights restored to the end of epoch 1 = the checkpoint
    assert all(torch.equal(saved["model"][k], state[k]) for k in state)


def test_huge_learning_rate_diverges(data):
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2))
    with pytest.raises(TrainingDivergedError, match="lower learning rate"):
        quick(epochs=2, lr=1e38, augment=False, optimizer="sgd").fit(linear, data["train"])
    assert all(torch.isfinite(p).all() for p in linear.parameters())  # restored to the initial weights


# --------------------------------------------------------------------------------------------------
# evaluate, predict_proba, batched_inference
# --------------------------------------------------------------------------------------------------


def test_evaluate_and_predict_proba_agree(data):
    model = tiny()
    trainer = quick(epochs=1).fit(model, data["train"])
    model.train()
    proba = trainer.predict_proba(model, data["val"])
    assert model.training  # mode restored
    assert proba.shape == (len(data["val"]), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    result = trainer.evaluate(model, data["val"])
    labels = data["val"].labels.numpy()
    assert result["n"] == len(labels)
    assert result["accuracy"] == pytest.approx(np.mean(proba.argmax(1) == labels))
    nll = -np.log(proba[np.arange(len(labels)), labels]).mean()
    assert result["loss"] == pytest.approx(nll, rel=1e-4)


def test_batched_inference_matches_plain_forward(data):
    from allkit.transforms import to_model_input

    model = tiny().eval()
    dataset = data["val"]
    images, _ = dataset.__getitems__(list(range(len(dataset))))
    with torch.no_grad():
        expected = model(to_model_input(images))
    for channels_last in (False, True):
        outputs = list(batched_inference(model, dataset, batch_size=7, device="cpu",
                                         channels_last=channels_last))
        assert len(outputs) == math.ceil(len(dataset) / 7)
        torch.testing.assert_close(torch.cat(outputs), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# allkit.perf
# --------------------------------------------------------------------------------------------------


def test_perf_helpers():
    assert perf.select_device("cpu") == torch.device("cpu")
    assert perf.select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            perf.select_device("cuda")
    with pytest.raises(ValueError, match="device="):
        perf.select_device("tpu")
    assert perf.autocast_dtype("cpu", False) is None
    assert perf.autocast_dtype("cpu", True) is torch.bfloat16
    assert perf.use_channels_last("cpu", False) is False
    with pytest.raises(ValueError, match="channels_last="):
        perf.use_channels_last("cpu", "yes")
    first = perf.tune_malloc()
    assert perf.tune_malloc() == first  # idempotent
    assert perf.default_num_threads() >= 1
    perf.set_seed(5)
    a = torch.rand(3)
    perf.set_seed(5)
    assert torch.equal(a, torch.rand(3))
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with perf.torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored even after an error


def test_optimize_for_inference_folds_batchnorm():
    model = tiny().eval()
    model.features[1].running_mean.uniform_(-1, 1)
    model.features[1].running_var.uniform_(0.5, 2)
    fused = perf.optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# learning-rate schedule, label smoothing (the improved recipe)
# --------------------------------------------------------------------------------------------------


def test_cosine_schedule_warms_up_then_decays_to_zero():
    trainer = Trainer(epochs=4, lr=1e-3, lr_schedule="cosine", warmup_epochs=1)
    total = 40
    lrs = [trainer.lr_at(step, total) for step in range(total)]
    assert lrs[0] == pytest.approx(1e-3 / 10)  # warm-up over 10 steps (1 of 4 epochs)
    assert lrs[9] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 1e-3 * 0.01
    assert Trainer(lr=2e-3).lr_at(5, 40) == 2e-3  # constant: the paper


def test_cosine_schedule_is_applied_and_recorded(data):
    trainer = quick(epochs=3, lr_schedule="cosine")
    trainer.fit(tiny(), data["train"], data["val"])
    lrs = [h["lr"] for h in trainer.history_]
    assert lrs[0] > lrs[1] > lrs[2] >= 0
    assert lrs[0] < 3e-3


def test_cosine_resume_equals_uninterrupted(data, tmp_path):
    uninterrupted = tiny()
    quick(epochs=3, lr_schedule="cosine", warmup_epochs=0.5).fit(uninterrupted, data["train"], data["val"])
    batches = math.ceil(len(data["train"]) / 8)
    with pytest.raises(KeyboardInterrupt):
        quick(epochs=3, lr_schedule="cosine", warmup_epochs=0.5, checkpoint_dir=tmp_path).fit(
            tiny(cls=Crashing, at=batches + 2), data["train"], data["val"])
    resumed = tiny(seed=5)
    quick(epochs=3, lr_schedule="cosine", warmup_epochs=0.5, checkpoint_dir=tmp_path).fit(
        resumed, data["train"], data["val"], resume=True)
    assert same_weights(resumed, uninterrupted)


def test_label_smoothing_changes_the_loss_and_training(data):
    plain, smooth = tiny(), tiny()
    a = quick(epochs=1).fit(plain, data["train"])
    b = quick(epochs=1, label_smoothing=0.2).fit(smooth, data["train"])
    assert a.history_[0]["train_loss"] != pytest.approx(b.history_[0]["train_loss"])
    assert not same_weights(plain, smooth)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"warmup_epochs": 5, "epochs": 3}, "warmup_epochs"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_schedule_parameters_are_checked(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quick(**kwargs).fit(tiny(), data["train"])
