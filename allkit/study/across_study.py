"""The chapter "Across people", measured: each change of :data:`allkit.study.recipes.ACROSS` fine-tuned on the
same fold-1 split and seed as the paper's recipe, scored on the fold-1 validation donors (where choices are
made) and once on the external people (``ALLKIT_TEST_DATA``); a learning curve over the number of training
donors; and two clearly labelled side roads (per-person feature normalisation, which is transductive, and
frozen ImageNet features with a logistic regression).
"""

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from allkit.hybrid import extract_features
from allkit.metrics import bootstrap_ci, evaluate_with_ci
from allkit.study.across import subject_normalised
from allkit.study.experiments import Variant, VariantRun
from allkit.study.profiles import Profile
from allkit.study.recipe_study import recipe_variant, study_seeds
from allkit.study.recipes import ACROSS

PARTS = {"val": "fold-1 validation donors", "test": "external people"}


def across_seeds(profile: Profile) -> tuple[int, ...]:
    """The training seeds at which the chapter compares the paper's and the ``robust`` recipe: three (one in
    the ``ci`` profile), because the difference between two recipes means something only beside the
    spread between seeds of one."""
    return study_seeds(profile, 1 if profile.name == "ci" else 3)


def across_variants(profile: Profile) -> list[Variant]:
    """Every fine-tune the chapter loads, in the order it loads them: the paper's recipe and each single
    change of :data:`~allkit.study.recipes.ACROSS` at the profile's seed, then the paper's and the
    ``robust`` recipe at each of :func:`across_seeds` (named by
    :func:`~allkit.study.recipe_study.recipe_variant`, so the same fine-tune is found on disk)."""
    variants = [Variant("paper"), *(Variant(name, recipe=name) for name in ACROSS)]
    for recipe in ("paper", "robust"):
        variants += [recipe_variant(recipe, seed, profile) for seed in across_seeds(profile)]
    return list(dict.fromkeys(variants))


def scores(frame: pd.DataFrame, proba: np.ndarray, *, threshold: float = 0.5, n_boot: int = 1000) -> dict:
    """What transfers to people, for one set of cells: balanced accuracy and AUC with subject-bootstrap 95%
    intervals, recall of healthy cells (HEM), accuracy against always answering the larger class, and the
    mean over people of each person's share of cells called right."""
    p_all = np.asarray(proba)[:, 1]
    y, subjects = frame["label"].to_numpy(), frame["subject"].astype(str).to_numpy()
    y_pred = (p_all > threshold).astype(int)
    result = evaluate_with_ci(y, y_pred, subjects, y_score=p_all, n_boot=n_boot)
    balanced = bootstrap_ci(y, y_pred, subjects, "balanced_accuracy", n_boot=n_boot)
    per_person = pd.Series(y == y_pred).groupby(subjects).mean()
    return {
        "balanced_accuracy": balanced["estimate"],
        "balanced_low": balanced["low"],
        "balanced_high": balanced["high"],
        "roc_auc": result["roc_auc"],
        "auc_low": (result["ci"]["roc_auc"] or {}).get("low"),
        "auc_high": (result["ci"]["roc_auc"] or {}).get("high"),
        "hem_recall": result["specificity"],
        "accuracy": result["accuracy"],
        "majority_baseline": float(max(y.mean(), 1 - y.mean())),
        "person_mean_accuracy": float(per_person.mean()),
        "cells": len(y),
        "people": len(per_person),
    }


def variant_rows(run: VariantRun, name: str, *, model: str = "hybrid", kind: str = "plain", n_boot: int = 1000) -> list:
    """One row per part (validation donors, external people) for ``run``'s hybrid or CNN alone."""
    rows = []
    for part, label in PARTS.items():
        proba = run.hybrid_proba(part, kind) if model == "hybrid" else run.cnn_proba(part, kind)
        rows.append({"setting": name, "model": model, "part": label, **scores(run.frame(part), proba, n_boot=n_boot)})
    return rows


def normalised_rows(run: VariantRun, name: str, *, n_boot: int = 1000) -> list:
    """The hybrid on features centred and scaled within each person (training people included): transductive."""
    hybrid = run.hybrid()
    train = subject_normalised(run.features("train"), run.frame("train")["subject"])
    model = type(hybrid)(**{**hybrid.get_params(), "cnn": None}).fit(train, run.labels("train"))
    rows = []
    for part, label in PARTS.items():
        features = subject_normalised(run.features(part), run.frame(part)["subject"])
        proba = model.predict_proba(features)
        rows.append(
            {
                "setting": name,
                "model": "hybrid, per-person normalised features (transductive)",
                "part": label,
                **scores(run.frame(part), proba, n_boot=n_boot),
            }
        )
    return rows


def frozen_logistic_rows(cnn, backbone, prepared, *, n_boot: int = 1000) -> list:
    """ImageNet features, not fine-tuned, with a logistic regression fitted on the training donors."""
    features = {
        p: extract_features(cnn, prepared.datasets[p], backbone, normalize=prepared.normalize)
        for p in ("train", *PARTS)
    }
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    model.fit(features["train"], prepared.datasets["train"].labels.numpy())
    return [
        {
            "setting": "ImageNet features, not fine-tuned",
            "model": "logistic regression",
            "part": label,
            **scores(prepared.datasets[part].frame, model.predict_proba(features[part]), n_boot=n_boot),
        }
        for part, label in PARTS.items()
    ]


def donor_curve(features: np.ndarray, frame: pd.DataFrame, donors=(1, 2, 3, 5, 8), *, draws: int = 30, seed=0):
    """How much would more healthy donors buy? For each number ``k`` of healthy training donors (and as many
    ALL patients, up to those there are), ``draws`` subject-wise splits of all the people in ``frame``: a
    logistic regression on ``features`` of ``k`` donors and their patients, scored on every other person
    (AUC and balanced accuracy over cells). Uses the external people for training too: a what-if, not a test."""
    rng = np.random.default_rng(seed)
    people = frame.groupby("subject")["label"].first()
    healthy, sick = people.index[people == 0].to_numpy(), people.index[people == 1].to_numpy()
    rows = []
    for k in donors:
        if k >= len(healthy):
            continue
        for draw in range(draws):
            train_people = [
                *rng.choice(healthy, k, replace=False),
                *rng.choice(sick, min(len(sick) - 2, 3 * k), replace=False),
            ]
            train = frame["subject"].isin(train_people).to_numpy()
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
            model.fit(features[train], frame["label"].to_numpy()[train])
            result = scores(frame[~train], model.predict_proba(features[~train]), n_boot=1)
            rows.append(
                {
                    "healthy_donors": k,
                    "draw": draw,
                    "roc_auc": result["roc_auc"],
                    "balanced_accuracy": result["balanced_accuracy"],
                }
            )
    return pd.DataFrame(rows)
