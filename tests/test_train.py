"""allkit.train (Trainer, checkpoints, resume), allkit.inference (the one inference loop, CNN probabilities,
evaluation), allkit.device and the study's process settings (allkit.perf), on a tiny CNN and small
synthetic cells."""

import math
import os

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from allkit import perf
from allkit.data import CellDataset, build_cache, load_cnmc
from allkit.device import amp_dtype, autocast, channels_last, select_device
from allkit.errors import AllkitError, ConfigError, ModelError
from allkit.inference import evaluate, predict, predict_proba
from allkit.models import build_model
from allkit.study.synthetic import make_synthetic_cnmc
from allkit.train import (
    CHECKPOINT,
    Trainer,
    TrainingDivergedError,
    epoch_seeds,
    load_checkpoint,
)
from allkit.transforms import dihedral, to_model_input

SIZE = 32


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
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
    make_synthetic_cnmc(
        root,
        seed=3,
        subjects_per_fold=(2, 1),
        n_folds=2,
        cells_per_subject=10,
        prelim_subjects=(0, 0),
        final_cells=0,
        size=64,
    )
    frame = load_cnmc(root).frame
    cache = build_cache(frame, size=SIZE, folder=tmp_path_factory.mktemp("train-cache"), progress=False)
    train_frame = cache.frame[cache.frame["fold"] == "fold_0"]
    val_frame = cache.frame[cache.frame["fold"] == "fold_1"]
    flipped = val_frame.assign(label=1 - val_frame["label"])  # val loss rises as the model learns
    return {
        "train": CellDataset(cache, train_frame),
        "val": CellDataset(cache, val_frame),
        "flipped": CellDataset(cache, flipped),
    }


@pytest.fixture
def step_lrs():
    """The learning rate of every optimiser step taken while the test runs."""
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"])
    )
    yield seen
    handle.remove()


# --------------------------------------------------------------------------------------------------
# fit, history
# --------------------------------------------------------------------------------------------------


def test_loss_falls_and_history_complete(data):
    trainer = quick(epochs=6).fit(tiny(), data["train"], data["val"])
    history = trainer.history_
    assert [h["epoch"] for h in history] == list(range(1, 7))
    keys = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_second", "lr"}
    for record in history:
        assert keys | {"train_images"} == record.keys()
        assert 0.0 <= record["train_acc"] <= 1.0 and 0.0 <= record["val_acc"] <= 1.0
        assert record["images_per_second"] > 0 and record["lr"] == pytest.approx(3e-3)
        assert record["train_images"] == len(data["train"])
    first, last_two = history[0]["train_loss"], [h["train_loss"] for h in history[-2:]]
    assert max(last_two) < first - 0.05, [h["train_loss"] for h in history]
    assert trainer.best_epoch_ == min(history, key=lambda h: h["val_loss"])["epoch"]


def test_fit_leaves_the_model_in_eval_mode_and_returns_the_trainer(data):
    model = tiny()
    trainer = quick(epochs=1)
    assert trainer.fit(model, data["train"]) is trainer
    assert not model.training


def test_validation_scores_are_evaluate(data):
    model = tiny()
    trainer = quick(epochs=1, augment=False).fit(model, data["train"], data["val"])
    scores = evaluate(model, data["val"], batch_size=8)
    assert trainer.history_[0]["val_loss"] == pytest.approx(scores["loss"], rel=1e-5)
    assert trainer.history_[0]["val_acc"] == pytest.approx(scores["accuracy"])


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
    assert all(0 <= s < 2**63 for s in epoch_seeds(-5, 3))


def test_augment_and_optimizer_change_training(data):
    base = tiny()
    quick(epochs=1).fit(base, data["train"])
    for kwargs in ({"augment": False}, {"optimizer": "adam"}, {"optimizer": "adamw"}):
        other = tiny()
        quick(epochs=1, **kwargs).fit(other, data["train"])
        assert not same_weights(base, other), kwargs
    calls = []

    def augment(batch, generator=None):
        calls.append((batch.dtype, tuple(batch.shape), generator is not None))
        return batch

    same_as_off, off = tiny(), tiny()
    quick(epochs=1, augment=augment).fit(same_as_off, data["train"])
    quick(epochs=1, augment=False).fit(off, data["train"])
    assert calls and all(c[0] == torch.uint8 and c[1][1:] == (3, SIZE, SIZE) and c[2] for c in calls)
    assert same_weights(same_as_off, off)  # an identity module is no augmentation


def test_inception_style_aux_loss_weighted(data):
    # lr so small that nothing moves: the aux model's loss is (1 + 0.4) x the plain one
    plain = quick(epochs=1, lr=1e-30, augment=False).fit(tiny(), data["train"])
    aux = quick(epochs=1, lr=1e-30, augment=False).fit(tiny(cls=WithAux), data["train"])
    assert aux.history_[0]["train_loss"] == pytest.approx(1.4 * plain.history_[0]["train_loss"], rel=1e-5)


def test_class_weight_balanced_matches_sklearn(data):
    labels = data["train"].labels.numpy()
    assert len(set(labels.tolist())) == 2 and np.bincount(labels)[0] != np.bincount(labels)[1]
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    balanced = quick(epochs=1, class_weight="balanced").fit(tiny(), data["train"])
    manual = quick(epochs=1, class_weight=list(expected)).fit(tiny(), data["train"])
    plain = quick(epochs=1).fit(tiny(), data["train"])
    assert manual.history_[0]["train_loss"] == pytest.approx(balanced.history_[0]["train_loss"], rel=1e-6)
    assert balanced.history_[0]["train_loss"] != pytest.approx(plain.history_[0]["train_loss"], rel=1e-6)


def test_bad_parameters_are_named(data):
    with pytest.raises(ConfigError, match="lr="):
        quick(lr=-1).fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="optimizer="):
        quick(optimizer="lbfgs").fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="class_weight="):
        quick(class_weight=[1.0, -1.0]).fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="class_weight="):
        quick(class_weight=[1.0, 2.0, 3.0]).fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="keep_best"):
        quick(keep_best=True).fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        quick().fit(tiny(), data["train"], resume=True)
    for name in ("epochs", "batch_size", "max_batches"):
        for bad in (0, 1.5, True):
            with pytest.raises(ConfigError, match=f"{name}="):
                quick(**{name: bad}).fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="augment="):
        quick(augment="yes").fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="normalize="):
        quick(normalize="imagenet").fit(tiny(), data["train"])
    with pytest.raises(ConfigError, match="device="):
        quick(device="toaster").fit(tiny(), data["train"])


def test_unknown_class_weight_name_is_named(data):
    with pytest.raises(ConfigError, match="class_weight="):
        quick(class_weight="auto").fit(tiny(), data["train"])


def test_get_params_are_plain_values():
    params = quick(augment=False, class_weight=[1.0, 2.0]).get_params()
    assert params["epochs"] == 3 and params["optimizer"] == "adamax" and params["class_weight"] == [1.0, 2.0]
    assert set(params) == {
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "seed",
        "augment",
        "normalize",
        "lr_schedule",
        "warmup_epochs",
        "label_smoothing",
        "class_weight",
        "keep_best",
        "max_batches",
        "checkpoint_dir",
        "device",
        "amp",
        "progress",
    }
    assert Trainer().get_params()["optimizer"] == "adamax" and Trainer().lr == 1e-3  # the paper's recipe


# --------------------------------------------------------------------------------------------------
# keep_best, checkpoints, resume, divergence
# --------------------------------------------------------------------------------------------------


def test_keep_best_restores_best_epoch(data, tmp_path):
    reference = quick(epochs=5, seed=2).fit(tiny(), data["train"], data["flipped"])
    best = reference.best_epoch_
    assert best == min(reference.history_, key=lambda h: h["val_loss"])["epoch"]
    assert best < 5  # the flipped labels make the validation loss rise (measured: epoch 3)
    at_best = tiny()
    quick(epochs=best, seed=2).fit(at_best, data["train"], data["flipped"])
    kept = tiny()
    trainer = quick(epochs=5, seed=2, keep_best=True, checkpoint_dir=tmp_path)
    trainer.fit(kept, data["train"], data["flipped"])
    assert trainer.best_epoch_ == best
    assert same_weights(kept, at_best)
    assert len(trainer.history_) == 5


def test_checkpoint_loads_with_weights_only(data, tmp_path):
    model = tiny()
    trainer = quick(epochs=2, checkpoint_dir=tmp_path).fit(model, data["train"], data["val"])
    assert CHECKPOINT == "last.pt" and trainer.checkpoint_path == tmp_path / "last.pt"
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (raw["format"], raw["version"]) == ("allkit-checkpoint", 2)
    assert len(raw["history"]) == 2 and raw["n_train"] == len(data["train"])
    assert raw["params"]["batch_size"] == 8 and raw["params"]["optimizer"] == "adamax"
    assert raw["history"] == trainer.history_ and raw["best_epoch"] == trainer.best_epoch_
    state = model.state_dict()
    assert all(torch.equal(raw["model"][k], state[k]) for k in state)
    assert raw["optimizer"]["state"]  # Adamax moments are there
    assert len(load_checkpoint(tmp_path)["history"]) == 2
    assert load_checkpoint(tmp_path / "last.pt")["params"] == raw["params"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # atomic writes leave no temporary files


def test_load_checkpoint_refuses_what_is_not_one(tmp_path):
    with pytest.raises(ModelError, match="cannot read the checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "allkit-checkpoint", "version": 1}, tmp_path / "old.pt")
    with pytest.raises(ModelError, match="not an allkit checkpoint of this version"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # a pickled object: refused, never unpickled
    with pytest.raises(ModelError, match="pickled.pt"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_resume_equals_uninterrupted(data, tmp_path):
    uninterrupted = tiny()
    quick(epochs=3).fit(uninterrupted, data["train"], data["val"])

    batches = math.ceil(len(data["train"]) / 8)
    crashing = tiny(cls=Crashing, at=2 * batches + 2)  # dies during epoch 3
    with pytest.raises(KeyboardInterrupt):
        quick(epochs=3, checkpoint_dir=tmp_path).fit(crashing, data["train"], data["val"])
    assert len(load_checkpoint(tmp_path)["history"]) == 2

    resumed = tiny(seed=123)  # a fresh process would build the model anew: its init does not matter
    trainer = quick(epochs=3, checkpoint_dir=tmp_path)
    trainer.fit(resumed, data["train"], data["val"], resume=True)
    assert same_weights(resumed, uninterrupted)
    assert [h["epoch"] for h in trainer.history_] == [1, 2, 3]
    assert len(load_checkpoint(tmp_path)["history"]) == 3

    # resuming a finished run trains nothing and restores its final weights
    again = tiny(seed=7)
    quick(epochs=3, checkpoint_dir=tmp_path).fit(again, data["train"], data["val"], resume=True)
    assert same_weights(again, uninterrupted)

    # a constant-rate run may be extended: 3 epochs, then 1 more, is 4 epochs
    four = tiny()
    quick(epochs=4).fit(four, data["train"], data["val"])
    extended = tiny(seed=9)
    quick(epochs=4, checkpoint_dir=tmp_path).fit(extended, data["train"], data["val"], resume=True)
    assert same_weights(extended, four)


def test_resume_without_a_checkpoint_starts_at_epoch_1(data, tmp_path):
    with pytest.warns(UserWarning, match="does not exist yet"):
        trainer = quick(epochs=1, checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    assert [h["epoch"] for h in trainer.history_] == [1]


def test_efficientnet_b0_resume_exact(data, tmp_path):
    """The paper's backbone (dropout + stochastic depth, channels-last on CPU): resume is still exact."""

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
    with pytest.raises(ModelError, match="lr 0.003 → 0.01"):
        quick(epochs=2, lr=1e-2, checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    with pytest.raises(ModelError, match="label_smoothing 0.0 → 0.1"):
        quick(epochs=2, label_smoothing=0.1, checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    with pytest.raises(ModelError, match="lr_schedule 'constant' → 'cosine'"):
        quick(epochs=2, lr_schedule="cosine", checkpoint_dir=tmp_path).fit(tiny(), data["train"], resume=True)
    fewer = CellDataset(data["train"].cache, data["train"].frame.iloc[1:])
    with pytest.raises(ModelError, match=rf"training cells {len(data['train'])} → {len(fewer)}"):
        quick(epochs=2, checkpoint_dir=tmp_path).fit(tiny(), fewer, resume=True)
    with pytest.raises(ModelError, match="another model's weights"):
        quick(epochs=2, checkpoint_dir=tmp_path).fit(
            nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)), data["train"], resume=True
        )
    # the cosine schedule spans all epochs: a cosine run cannot be extended
    cosine = tmp_path / "cosine"
    quick(epochs=2, lr_schedule="cosine", checkpoint_dir=cosine).fit(tiny(), data["train"])
    with pytest.raises(ModelError, match="epochs 2 → 3"):
        quick(epochs=3, lr_schedule="cosine", checkpoint_dir=cosine).fit(tiny(), data["train"], resume=True)
    # settings that do not change the weights may differ
    quick(epochs=1, checkpoint_dir=tmp_path, progress=True, amp=False).fit(tiny(), data["train"], resume=True)


def test_nan_loss_raises_and_keeps_checkpoint(data, tmp_path):
    batches = math.ceil(len(data["train"]) / 8)
    model = tiny(cls=Crashing, at=batches + 2, mode="nan")  # epoch 2, batch 2
    with pytest.raises(TrainingDivergedError) as info:
        quick(epochs=3, checkpoint_dir=tmp_path).fit(model, data["train"], data["val"])
    error = info.value
    assert isinstance(error, ModelError) and isinstance(error, AllkitError)
    assert "diverged" in str(error) and "learning rate" in str(error)
    saved = load_checkpoint(tmp_path)
    assert len(saved["history"]) == 1
    state = model.state_dict()  # weights restored to the end of epoch 1 = the checkpoint
    assert all(torch.equal(saved["model"][k], state[k]) for k in state)


def test_huge_learning_rate_diverges(data):
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2))
    initial = {k: v.clone() for k, v in linear.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match="diverged"):
        quick(epochs=2, lr=1e36, augment=False).fit(linear, data["train"])
    assert all(torch.equal(initial[k], v) for k, v in linear.state_dict().items())  # restored


# --------------------------------------------------------------------------------------------------
# allkit.inference: predict, predict_proba, evaluate
# --------------------------------------------------------------------------------------------------


def _all_images(dataset):
    return dataset.__getitems__(list(range(len(dataset))))[0]


def test_evaluate_and_predict_proba_agree(data):
    model = tiny()
    quick(epochs=1).fit(model, data["train"])
    model.train()
    proba = predict_proba(model, data["val"])
    assert model.training  # mode restored
    assert proba.shape == (len(data["val"]), 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    result = evaluate(model, data["val"])
    assert model.training
    labels = data["val"].labels.numpy()
    assert result["n"] == len(labels)
    assert result["accuracy"] == pytest.approx(np.mean(proba.argmax(1) == labels))
    nll = -np.log(proba[np.arange(len(labels)), labels]).mean()
    assert result["loss"] == pytest.approx(nll, rel=1e-4)


def test_predict_matches_plain_forward(data):
    model = tiny().eval()
    dataset = data["val"]
    images = _all_images(dataset)
    with torch.no_grad():
        expected = model(to_model_input(images))
        raw = model(to_model_input(images, normalize=False))
        turned = model(to_model_input(dihedral(images, 3)))
    for batch_size in (7, 40):
        out = predict(model, dataset, batch_size=batch_size, device="cpu")
        assert out.dtype == np.float32 and out.shape == (len(dataset), 2)
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(predict(model, dataset, normalize=False)), raw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(predict(model, dataset, view=3)), turned, rtol=1e-4, atol=1e-5)
    # the output of any module, flattened per cell
    features = predict(model.features, dataset)
    assert features.shape == (len(dataset), 32)


def test_predict_refuses_bad_arguments(data):
    model = tiny()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size="):
            predict(model, data["val"], batch_size=bad)
    empty = CellDataset(data["val"].cache, data["val"].frame.iloc[:0])
    with pytest.raises(ConfigError, match="empty"):
        predict(model, empty)
    with pytest.raises(ConfigError, match="view="):
        predict(model, data["val"], view=8)


def test_predict_proba_tta_is_the_mean_over_the_8_dihedral_views(data):
    model = tiny()
    quick(epochs=1).fit(model, data["train"])
    images = _all_images(data["val"])
    with torch.no_grad():
        views = [torch.softmax(model(to_model_input(dihedral(images, v))).double(), 1) for v in range(8)]
    expected = torch.stack(views).mean(0)
    tta = predict_proba(model, data["val"], tta=True, batch_size=7)
    np.testing.assert_allclose(tta, expected.numpy(), rtol=1e-4, atol=1e-6)
    plain = predict_proba(model, data["val"])
    np.testing.assert_allclose(plain, views[0].numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(tta, plain, atol=1e-4)  # the views do differ for this model


# --------------------------------------------------------------------------------------------------
# allkit.device and allkit.perf
# --------------------------------------------------------------------------------------------------


def test_device_helpers():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    assert select_device(None) == select_device("auto")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            select_device("cuda")
    with pytest.raises(ConfigError, match="device="):
        select_device("tpu")
    with pytest.raises(ConfigError, match="device="):
        select_device("toaster")
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, False) is None
    assert amp_dtype(cpu, "auto") is None  # bf16 training measured slower on CPUs
    assert amp_dtype(cpu, True) is torch.bfloat16
    with pytest.raises(ConfigError, match="amp="):
        amp_dtype(cpu, "yes")
    assert channels_last(cpu) is True
    assert channels_last(torch.device("mps")) is False
    with autocast(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_perf_helpers(monkeypatch):
    first = perf.tune_malloc()
    assert perf.tune_malloc() == first  # idempotent
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with perf.torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored even after an error
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with perf.torch_threads(256):
        assert 1 <= perf.configure_threads() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with perf.torch_threads(5):
        assert perf.configure_threads() == 5  # OMP_NUM_THREADS: left as the user set it


# --------------------------------------------------------------------------------------------------
# learning-rate schedule, label smoothing (the improved recipe)
# --------------------------------------------------------------------------------------------------


def test_cosine_schedule_warms_up_then_decays_to_zero(data, step_lrs):
    batches = math.ceil(len(data["train"]) / 8)
    trainer = quick(epochs=4, lr=1e-3, lr_schedule="cosine", warmup_epochs=1).fit(tiny(), data["train"])
    assert len(step_lrs) == 4 * batches
    warm = step_lrs[:batches]
    assert warm[0] == pytest.approx(1e-3 / batches)  # linear warm-up over the first epoch's steps
    assert all(b > a for a, b in zip(warm, warm[1:], strict=False))
    assert step_lrs[batches] == pytest.approx(1e-3)
    decay = step_lrs[batches:]
    assert all(b < a for a, b in zip(decay, decay[1:], strict=False))
    assert trainer.history_[-1]["lr"] < 1e-3 * 0.01  # ends at (about) zero
    step_lrs.clear()
    quick(epochs=2, lr=2e-3).fit(tiny(), data["train"])
    assert set(step_lrs) == {2e-3}  # constant: the paper


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
            tiny(cls=Crashing, at=batches + 2), data["train"], data["val"]
        )
    resumed = tiny(seed=5)
    quick(epochs=3, lr_schedule="cosine", warmup_epochs=0.5, checkpoint_dir=tmp_path).fit(
        resumed, data["train"], data["val"], resume=True
    )
    assert same_weights(resumed, uninterrupted)


def test_label_smoothing_changes_the_loss_and_training(data):
    plain, smooth = tiny(), tiny()
    a = quick(epochs=1).fit(plain, data["train"])
    b = quick(epochs=1, label_smoothing=0.2).fit(smooth, data["train"])
    assert a.history_[0]["train_loss"] != pytest.approx(b.history_[0]["train_loss"])
    assert not same_weights(plain, smooth)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"warmup_epochs": 5, "epochs": 3}, "warmup_epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_schedule_parameters_are_checked(data, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        quick(**kwargs).fit(tiny(), data["train"])
