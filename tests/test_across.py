"""The pieces of the across-people study: stain and colour augmentation, class-balanced sampling, partial
freezing, per-person normalisation, the donor learning curve, and recipes that leave earlier keys alone."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from allkit.errors import ConfigError
from allkit.models import build_model
from allkit.study.across import (
    StainAugment,
    balanced_frame,
    freeze_early_layers,
    hed_to_rgb,
    rgb_to_hed,
    subject_normalised,
)
from allkit.study.across_study import across_configs, donor_curve, scores
from allkit.study.config import ACROSS, get_config
from allkit.transforms import BatchAugment


def test_hed_conversion_is_scikit_images():
    image = np.random.default_rng(0).random((16, 24, 3))
    np.testing.assert_allclose(rgb_to_hed(torch.tensor(image)).numpy(), rgb2hed(image), atol=1e-12)
    hed = rgb2hed(image)
    np.testing.assert_allclose(hed_to_rgb(torch.tensor(hed)).numpy(), hed2rgb(hed), atol=1e-12)


def test_stain_augment_changes_colour_per_cell_and_keeps_the_range():
    batch = torch.randint(30, 220, (6, 3, 20, 20), dtype=torch.uint8)
    identity = StainAugment(BatchAugment(0, 0, 0))
    np.testing.assert_allclose(identity(batch).numpy(), batch.float().div(255).numpy())  # nothing asked, nothing done
    out = StainAugment(BatchAugment(0, 0, 0), hed=0.05, color=0.3)(batch, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32 and float(out.min()) >= 0 and float(out.max()) <= 1
    ratios = (out.mean(dim=(1, 2, 3)) / batch.float().div(255).mean(dim=(1, 2, 3))).numpy()
    assert np.ptp(ratios) > 0.05  # each cell got its own change
    gray = StainAugment(BatchAugment(0, 0, 0), grayscale=1.0)(batch)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    with pytest.raises(ConfigError):
        StainAugment(BatchAugment(), hed=2.0)


def test_balanced_frame_repeats_the_minority_class():
    frame = pd.DataFrame({"path": [f"c{i}" for i in range(10)], "label": [1] * 8 + [0] * 2})
    balanced = balanced_frame(frame, seed=0)
    assert (balanced["label"] == 0).sum() == (balanced["label"] == 1).sum() == 8
    assert set(balanced.loc[balanced["label"] == 0, "path"]) == {"c8", "c9"}
    assert balanced_frame(frame, seed=0).equals(balanced)


def test_freezing_keeps_the_stem_and_trains_the_head():
    model = build_model("resnet18")
    total = sum(p.numel() for p in model.parameters())
    trainable = freeze_early_layers(model, 0.6)
    params = list(model.parameters())
    assert 0 < trainable < total and not params[0].requires_grad and params[-1].requires_grad


def test_subject_normalisation_centres_each_person():
    features = np.random.default_rng(1).normal(5, 2, (12, 4))
    subjects = ["a"] * 5 + ["b"] * 7
    out = subject_normalised(features, subjects)
    for person in ("a", "b"):
        rows = np.asarray(subjects) == person
        np.testing.assert_allclose(out[rows].mean(0), 0, atol=1e-6)


def test_scores_and_donor_curve_on_separable_people():
    rng = np.random.default_rng(2)
    people = [f"H{i}" for i in range(6)] + [str(i) for i in range(12)]
    frame = pd.DataFrame([{"subject": p, "label": int(not p.startswith("H"))} for p in people for _ in range(5)])
    features = rng.normal(0, 1, (len(frame), 3)) + frame[["label"]].to_numpy() * 3
    curve = donor_curve(features, frame, donors=(1, 2, 3, 4), draws=4)
    # 4 donors of 6 would leave 2 healthy people to score, fewer than half of them: that point is left out
    assert set(curve["healthy_donors"]) == {1, 2, 3} and curve["roc_auc"].min() > 0.9
    proba = np.column_stack([1 - frame["label"], frame["label"]]).astype(float)
    result = scores(frame, proba, n_boot=50)
    assert (
        result["balanced_accuracy"] == 1 and result["people"] == len(people) and result["majority_baseline"] == 12 / 18
    )


def test_across_recipes_are_one_change_from_the_paper_and_change_its_key():
    paper = get_config("sample")
    for name, changes in ACROSS.items():
        changed = {k for k, v in paper.with_recipe(name).to_dict().items() if v != getattr(paper, k)} - {"recipe"}
        assert changed == set(changes) and len(changed) == 1, (name, changed)
        assert paper.with_recipe(name).key("data") != paper.key("data")
    # the recipe's name is a label, not a setting: the same fine-tune under another name is the same run
    assert replace(paper, recipe="another name").key("data") == paper.key("data")
    # settings that change only predictions leave the fine-tune's key alone
    assert replace(paper, tta=True, threshold="validation", n_boot=5).key("data") == paper.key("data")
    for preset in ("sample", "ci"):
        config = get_config(preset)
        configs = across_configs(config)
        assert len(set(configs)) == len(configs) == 2 + (1 + len(ACROSS)) * config.cv_folds
        folds = configs[1:-1]  # every setting at every fold, each at most 40 cells per person
        assert [c.recipe for c in folds[:: config.cv_folds]] == ["paper", *ACROSS]
        assert [c.cv_fold for c in folds] == list(range(config.cv_folds)) * (1 + len(ACROSS))
        assert {c.max_cells_per_subject for c in folds} == {40} and configs[-1].cv_fold is None
    # a fold's fine-tune is a run of its own; the number of folds counts only where one of them is used
    sample = get_config("sample")
    assert len({sample.key("d"), *(replace(sample, cv_fold=i).key("d") for i in range(3))}) == 4
    assert replace(sample, cv_folds=5).key("d") == sample.key("d")
    with pytest.raises(ConfigError, match="cv_fold=3"):
        replace(sample, cv_fold=3)
    with pytest.raises(ConfigError, match="needs split 'folds'"):
        replace(get_config("paper"), cv_fold=0)
