"""Is the improved recipe better than the paper's? Selection on validation, verdict on test, several seeds.

The protocol (notebook ``11_improved_recipe``): candidates are compared on the **validation** subjects only
(:func:`selection_rows`); the chosen recipe is then fine-tuned with several training seeds, as is the
paper's, on the same subject-wise split, and both are scored once on the **test** subjects
(:func:`comparison_rows`, :func:`summary`).
"""

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

from allkit.errors import ConfigError
from allkit.study.calibration import choose_threshold
from allkit.study.experiments import Variant, VariantRun, score_row
from allkit.study.profiles import Profile


def study_seeds(profile: Profile, n: int | None = None) -> tuple[int, ...]:
    """Training seeds per recipe: ``n``, by default two (one in the ``ci`` profile, to keep tests fast).
    Two is the least that shows seed-to-seed variation; it is what a 2-core CPU finishes for the
    book's ``sample`` run (each fine-tune takes 7-25 minutes there). Pass more on a GPU."""
    if n is None:
        n = 1 if profile.name == "ci" else 2
    return tuple(profile.seed + i for i in range(n))


def recipe_variant(recipe: str, seed: int, profile: Profile) -> Variant:
    """The :class:`allkit.study.experiments.Variant` of ``recipe`` at training ``seed`` (named as in
    :func:`allkit.study.experiments.study_variants`, so the same fine-tune is found on disk)."""
    name = recipe if seed == profile.seed else f"{recipe}-seed{seed}"
    return Variant(name, recipe=recipe, seed=None if seed == profile.seed else seed)


def predict(run: VariantRun, split: str, *, model: str = "hybrid", tta: bool | None = None) -> np.ndarray:
    """``[HEM, ALL]`` probabilities of ``run`` on ``split``: the hybrid or the CNN alone, with dihedral
    test-time augmentation if ``tta`` (default: what the run's recipe says)."""
    kind = "tta" if (run.recipe.tta if tta is None else tta) else "plain"
    if model == "hybrid":
        return run.hybrid_proba(split, kind)
    if model == "cnn":
        return run.cnn_proba(split, kind)
    raise ConfigError(f"model={model!r}; expected 'hybrid' or 'cnn'")


def threshold_for(run: VariantRun, *, model: str = "hybrid", tta: bool | None = None, rule: str | None = None) -> float:
    """The decision threshold on P(ALL) the run's recipe prescribes (``rule`` overrides it): 0.5 for
    ``"argmax"``, or the one with the best balanced accuracy on the **validation** cells for
    ``"validation"`` (:func:`allkit.study.calibration.choose_threshold`)."""
    rule = rule or run.recipe.threshold
    if rule == "argmax":
        return 0.5
    return float(choose_threshold(run.labels("val"), predict(run, "val", model=model, tta=tta)).threshold)


def selection_rows(paper: VariantRun, improved: VariantRun, *, n_boot: int = 1000, seed: int = 0) -> list[dict]:
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
    paper_runs: list[VariantRun],
    improved_runs: list[VariantRun],
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
                        f"{recipe} recipe, seed {run.seed}",
                        run.frame(split),
                        predict(run, split, model=model),
                        threshold=threshold,
                        n_boot=n_boot,
                        seed=seed,
                    ),
                    "recipe": recipe,
                    "seed": run.seed,
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
    paper_runs: list[VariantRun], improved_runs: list[VariantRun], *, split: str = "test", model: str = "hybrid"
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
