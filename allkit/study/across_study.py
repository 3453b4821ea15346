"""The chapter "Across people", measured: the paper's recipe and each single change of
:data:`allkit.study.config.ACROSS` chosen between by cross-validation over the people of folds 0-1 (each group of
people is the validation part once, :attr:`~allkit.study.config.Config.cv_fold`), the paper's and the chosen
``robust`` recipe then scored once on the test people (fold 2: people no step has seen); a learning curve over the
number of healthy donors; and two clearly labelled side roads (per-person feature normalisation, which is
transductive, and frozen ImageNet features with a logistic regression).
"""

from dataclasses import replace

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from allkit.hybrid import extract_features
from allkit.study.across import subject_normalised
from allkit.study.config import ACROSS, Config
from allkit.study.score import score_row
from allkit.study.store import Run

PARTS = {"val": "validation donors", "test": "test people"}
# People matter more than cells (the donor curve): the cross-validation fine-tunes see at most this many cells of
# each person, so that (1 + len(ACROSS)) x cv_folds of them fit in a CPU afternoon
CV_CELLS_PER_PERSON = 40


def cv_config(config: Config, recipe: str, fold: int) -> Config:
    """``recipe`` fine-tuned with group ``fold`` of the training folds' people as validation."""
    return replace(config.with_recipe(recipe), cv_fold=fold, max_cells_per_subject=CV_CELLS_PER_PERSON)


def across_configs(config: Config) -> list[Config]:
    """Every fine-tune the chapter loads, in the order it loads them: the paper's recipe, then it and each single
    change of :data:`~allkit.study.config.ACROSS` at every cross-validation fold, then the ``robust`` recipe."""
    folds = [cv_config(config, name, fold) for name in ("paper", *ACROSS) for fold in range(config.cv_folds)]
    return [config.with_recipe("paper"), *folds, config.with_recipe("robust")]


def scores(frame: pd.DataFrame, proba: np.ndarray, *, threshold: float = 0.5, n_boot: int = 1000) -> dict:
    """What transfers to people, for one set of cells: :func:`allkit.study.score.score_row` without its name."""
    row = score_row("", frame, proba, threshold=threshold, n_boot=n_boot)
    row.pop("setting")
    return row


def variant_rows(run: Run, name: str, *, model: str = "hybrid", kind: str = "plain", n_boot: int = 1000) -> list:
    """One row per part (validation donors, test people) for ``run``'s hybrid or CNN alone."""
    rows = []
    for part, label in PARTS.items():
        proba = run.hybrid_proba(part, kind) if model == "hybrid" else run.cnn_proba(part, kind)
        rows.append({"setting": name, "model": model, "part": label, **scores(run.frame(part), proba, n_boot=n_boot)})
    return rows


def normalised_rows(run: Run, name: str, *, n_boot: int = 1000) -> list:
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


LEFT_TO_SCORE = 4  # people of each class a donor-curve draw leaves to score: fewer, and one person is the score


def donor_curve(features: np.ndarray, frame: pd.DataFrame, donors=(1, 2, 3, 5, 8), *, draws: int = 30, seed=0):
    """How much would more healthy donors buy? For each number ``k`` of healthy training donors (and as many
    ALL patients, ``3 k`` where there are), ``draws`` subject-wise splits of all the people in ``frame``: a
    logistic regression on ``features`` of ``k`` donors and their patients, scored on every other person
    (AUC and balanced accuracy over cells). A ``k`` that would leave fewer than :data:`LEFT_TO_SCORE` healthy
    people to score (half of them, in a smaller set) is skipped. Uses the test people for training too: a what-if, not a test."""
    rng = np.random.default_rng(seed)
    people = frame.groupby("subject")["label"].first()
    healthy, sick = people.index[people == 0].to_numpy(), people.index[people == 1].to_numpy()
    left = min(LEFT_TO_SCORE, len(healthy) // 2, len(sick) // 2)
    rows = []
    for k in donors:
        if k > len(healthy) - left:
            continue
        for draw in range(draws):
            train_people = [
                *rng.choice(healthy, k, replace=False),
                *rng.choice(sick, max(1, min(len(sick) - left, 3 * k)), replace=False),
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
