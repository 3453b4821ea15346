"""Is the improved recipe better than the paper's? Selection on validation, verdict on test, several seeds.

The protocol (notebook ``11_improved_recipe``): candidates are compared on the **validation** subjects only
(:func:`selection_rows`); the chosen recipe is then fine-tuned with several training seeds, as is the
paper's, on the same subject-wise split, and both are scored once on the **test** subjects
(:func:`comparison_rows`, :func:`summary`).
"""

from dataclasses import replace

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

from allkit.errors import ConfigError
from allkit.study.config import Config
from allkit.study.score import score_row
from allkit.study.store import Run


def study_seeds(config: Config, n: int | None = None) -> tuple[int, ...]:
    """Training seeds per recipe: ``n``, by default two (one in the ``ci`` preset, to keep tests fast).
    Two is the least that shows seed-to-seed variation; it is what a 2-core CPU finishes for the
    book's ``sample`` run (each fine-tune takes 7-25 minutes there). Pass more on a GPU."""
    if n is None:
        n = 1 if config.name == "ci" else 2
    return tuple(config.seed + i for i in range(n))


def recipe_config(config: Config, recipe: str, seed: int) -> Config:
    """``config`` with ``recipe`` fine-tuned at training ``seed`` (the split stays the configuration's)."""
    return replace(config.with_recipe(recipe), train_seed=None if seed == config.seed else seed)


def study_configs(config: Config) -> list[Config]:
    """Every fine-tune notebooks 09-11 use: the paper's and the improved recipe at :func:`study_seeds`, and one
    setting changed at a time from the paper's (the authors' kept ImageNet head, no normalisation, a test part
    inside the data, the leaky by-image split, class weights)."""
    paper = config.with_recipe("paper")
    configs = [
        paper,
        config.with_recipe("improved"),
        replace(paper, head="imagenet"),
        replace(paper, normalize=False),
        replace(paper, test="internal"),
        replace(paper, split="image"),
        replace(paper, class_weight="balanced"),
    ]
    for seed in study_seeds(config)[1:]:
        configs += [recipe_config(config, "paper", seed), recipe_config(config, "improved", seed)]
    return configs


def predict(run: Run, split: str, *, model: str = "hybrid", tta: bool | None = None) -> np.ndarray:
    """``[HEM, ALL]`` probabilities of ``run`` on ``split``: the hybrid or the CNN alone, with dihedral
    test-time augmentation if ``tta`` (default: what the run's configuration says)."""
    kind = "tta" if (run.config.tta if tta is None else tta) else "plain"
    if model not in ("hybrid", "cnn"):
        raise ConfigError(f"model={model!r}; expected 'hybrid' or 'cnn'")
    return run.proba(split, model, kind)


def threshold_for(run: Run, *, model: str = "hybrid", tta: bool | None = None, rule: str | None = None) -> float:
    """The decision threshold on P(ALL) the run's configuration prescribes (``rule`` overrides it): 0.5 for
    ``"argmax"``, or the one with the best balanced accuracy on the **validation** cells for ``"validation"``."""
    kind = "tta" if (run.config.tta if tta is None else tta) else "plain"
    return run.threshold(model, kind, rule)


def selection_rows(paper: Run, improved: Run, *, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Validation scores of every combination: fine-tune (paper / improved) x model (CNN / hybrid) x
    test-time views (one / eight). Only the validation subjects are used."""
    rows = []
    for fine_tune, run in (("paper", paper), ("improved", improved)):
        frame = run.frame("val")
        for model in ("cnn", "hybrid"):
            for tta in (False, True):
                name = (
                    f"{fine_tune} fine-tune, {'hybrid' if model == 'hybrid' else 'CNN alone'}, "
                    f"{'8 dihedral views' if tta else 'one view'}"
                )
                rows.append(
                    {
                        **score_row(name, frame, predict(run, "val", model=model, tta=tta), n_boot=n_boot, seed=seed),
                        "fine_tune": fine_tune,
                        "model": model,
                        "tta": tta,
                    }
                )
    return rows


def best_on_validation(rows: list[dict], model: str = "hybrid") -> dict:
    """The improved fine-tune's row with the highest validation accuracy for ``model`` (ties: one view,
    the cheaper)."""
    candidates = [r for r in rows if r["fine_tune"] == "improved" and r["model"] == model]
    return max(candidates, key=lambda r: (r["accuracy"], not r["tta"]))


def comparison_rows(
    paper_runs: list[Run],
    improved_runs: list[Run],
    *,
    split: str = "test",
    model: str = "hybrid",
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Per training seed, each recipe as it is defined (the improved one with its test-time views)."""
    rows = []
    for recipe, runs in (("paper", paper_runs), ("improved", improved_runs)):
        for run in runs:
            threshold = threshold_for(run, model=model)
            rows.append(
                {
                    **score_row(
                        f"{recipe} recipe, seed {run.config.training_seed}",
                        run.frame(split),
                        predict(run, split, model=model),
                        threshold=threshold,
                        n_boot=n_boot,
                        seed=seed,
                    ),
                    "recipe": recipe,
                    "seed": run.config.training_seed,
                    "threshold": threshold,
                }
            )
    return rows


ABLATION = (  # (name, fine-tune, test-time views, threshold rule)
    ("paper recipe", "paper", False, "argmax"),
    ("paper recipe + threshold from validation", "paper", False, "validation"),
    ("improved fine-tune + 8 views, threshold 0.5", "improved", True, "argmax"),
    ("improved recipe (fine-tune + 8 views + threshold from validation)", "improved", True, "validation"),
)


def ablation(
    paper_runs: list[Run], improved_runs: list[Run], *, split: str = "test", model: str = "hybrid"
) -> pd.DataFrame:
    """Where a gain comes from: mean accuracy and ROC AUC over seeds on ``split`` of the paper recipe, the
    paper recipe with the validation threshold, the improved fine-tune and views at 0.5, and the whole
    improved recipe."""
    runs = {"paper": paper_runs, "improved": improved_runs}
    rows = []
    for name, fine_tune, tta, rule in ABLATION:
        accuracy, auc = [], []
        for run in runs[fine_tune]:
            proba = predict(run, split, model=model, tta=tta)[:, 1]
            threshold = threshold_for(run, model=model, tta=tta, rule=rule)
            y = run.labels(split)
            accuracy.append(accuracy_score(y, (proba > threshold).astype(int)))
            auc.append(roc_auc_score(y, proba) if len(set(y)) == 2 else float("nan"))
        rows.append(
            {
                "configuration": name,
                "seeds": len(accuracy),
                "accuracy (mean over seeds)": np.mean(accuracy),
                "ROC AUC (mean over seeds)": np.mean(auc),
            }
        )
    table = pd.DataFrame(rows).set_index("configuration")
    base = table.iloc[0]["accuracy (mean over seeds)"]
    table["accuracy gain (points)"] = 100 * (table["accuracy (mean over seeds)"] - base)
    return table


def summary(rows: list[dict]) -> pd.DataFrame:
    """Mean and range over seeds per recipe, and the improved recipe's gain in accuracy points."""
    frame = pd.DataFrame(rows)
    out = frame.groupby("recipe").agg(
        seeds=("seed", "count"),
        accuracy_mean=("accuracy", "mean"),
        accuracy_min=("accuracy", "min"),
        accuracy_max=("accuracy", "max"),
        weighted_f1_mean=("weighted_f1", "mean"),
        roc_auc_mean=("roc_auc", "mean"),
    )
    return out.reindex(["paper", "improved"])


def gain_points(rows: list[dict]) -> float:
    """Improved minus paper, mean accuracy over seeds, in percentage points."""
    table = summary(rows)
    return float(100 * (table.loc["improved", "accuracy_mean"] - table.loc["paper", "accuracy_mean"]))
