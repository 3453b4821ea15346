"""The run store: each fine-tune is trained once, kept in one folder format, and every later number (the CNN
alone, the hybrid, other test-time views, thresholds, metrics, the saved model, figures) is computed from it.

::

    RUNS/<preset>/<recipe>-<key>/  (or the --out of `allkit reproduce` and `allkit train`)
        config.json   the configuration, run card, split (its people, a hash of its cells), training history;
                      written last: a folder without it is not a run
        cnn.pt        the fine-tuned CNN (state_dict)
        outputs/      per part (train, val, test): its cells (<part>.frame.json) and per view the pooled features
                      and logits side by side (<part>.<view>.npy; plain, d4-1 ... d4-7, random), each computed once
        metrics.json  the CNN's and the hybrid's scores on the test part, with the settings they were computed with
        model/        the hybrid, saved (HybridClassifier.load): what `allkit evaluate` and `allkit export` read
        *.png         the figures (`allkit reproduce`)

``key`` hashes every setting the fine-tune depends on and the fingerprint of the cells (:meth:`Config.key`):
a changed setting is a new run, a finished one is never trained again, wherever the data folder lies. Settings
that only change predictions (test-time views, threshold, XGBoost) are applied to the stored outputs.
"""

import functools
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax

from allkit.data import load_cnmc
from allkit.errors import AllkitError, ConfigError
from allkit.files import atomic_file, read_json, save_torch, write_json
from allkit.hybrid import HybridClassifier
from allkit.models import build_model
from allkit.study.calibration import choose_threshold
from allkit.study.config import NOT_TRAINING, Config, from_dict, get_config
from allkit.study.finetune import finetune
from allkit.study.folders import claim_folder, run_inputs
from allkit.study.prepare import RunData, choose_backbone, data_fingerprint, prepare, split_record
from allkit.study.score import score
from allkit.study.views import features_and_logits
from allkit.study.workspace import data_root, runs_dir, test_data_root

CONFIG_FILE, CNN_FILE, METRICS_FILE = "config.json", "cnn.pt", "metrics.json"


# ---------------------------------------------------------------------------------------------- a run
VIEWS = {"plain": ["plain"], "random": ["random"], "tta": ["plain"] + [f"d4-{i}" for i in range(1, 8)]}


@dataclass
class Run:
    """A finished fine-tune in its folder, and everything computed from it (each output once, on disk).
    ``config`` may differ from the one it was trained with in the settings that only change predictions."""

    dir: Path
    config: Config
    meta: dict
    data: RunData | None = None
    model: torch.nn.Module | None = None
    # Where its cells are now (default: where they were when it was trained): a store moved with its data, or
    # opened on another machine, finds them by the fingerprint, not by the path
    where: tuple | None = None
    _hybrids: dict = field(default_factory=dict, repr=False)
    _thresholds: dict = field(default_factory=dict, repr=False)

    @property
    def card(self) -> dict:
        return self.meta["run_card"]

    @property
    def history(self) -> list[dict]:
        return self.meta["history"]

    @property
    def backbone(self) -> str:
        return self.card["backbone"]

    @property
    def n_outputs(self) -> int:
        return 1000 if self.config.head == "imagenet" else 2

    def load(self, progress: bool = False) -> "Run":
        """The run's data (same configuration and cells: the same split, checked) and its fine-tuned CNN."""
        if self.data is None or self.model is None:
            rebuilt = replace(self.config, backbone=self.backbone, weights=None, fallback_backbone=None)
            root, test_root = self.where or (self.card["data"], self.card.get("test_data"))
            data, _ = prepare(rebuilt, root, test_data=test_root or False, progress=progress)
            now, trained = split_record(data), self.meta["split"]
            if now["sha256"] != trained["sha256"]:
                moved = {
                    part: sorted(set(now["subjects"].get(part, [])) ^ set(people))
                    for part, people in trained["subjects"].items()
                }
                raise AllkitError(
                    f"the data under {self.card['data']} changed since the CNN in {self.dir} was trained: the same "
                    f"split now gives other cells (people that changed parts: "
                    f"{', '.join(f'{k}: {v}' for k, v in moved.items() if v) or 'none'}); a hybrid fitted on it "
                    "could validate or test on cells the CNN was trained on. Train the CNN again"
                )
            data.weights, data.weights_note = self.card["weights"], self.card["weights_note"]
            self.data = data
            self.model = build_model(self.backbone, self.dir / CNN_FILE, num_classes=self.n_outputs).eval()
        return self

    def frame(self, part: str) -> pd.DataFrame:
        """The cells of ``part`` (``path``, ``subject``, ``label``), in the order of every output."""
        path = self.dir / "outputs" / f"{part}.frame.json"
        if path.is_file():
            return pd.read_json(path, orient="records", dtype={"subject": str})
        self.load()
        frame = self.data.datasets[part].frame[["path", "subject", "label"]].copy()
        frame["path"] = frame["path"].astype(str)
        with atomic_file(path, "w") as handle:
            handle.write(frame.to_json(orient="records"))
        return frame

    def labels(self, part: str) -> np.ndarray:
        return self.frame(part)["label"].to_numpy()

    def outputs(self, part: str, view: str = "plain", *, progress: bool = False) -> np.ndarray:
        """``[features | logits]`` of ``part``'s cells: ``view`` is ``"plain"``, ``"random"`` (the authors'
        random test-time augmentation, seeded) or ``"d4-<i>"`` (view i of :func:`allkit.transforms.dihedral`)."""
        path = self.dir / "outputs" / f"{part}.{view}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        if view in ("plain", "random"):
            dihedral = 0
        elif view.startswith("d4-") and view[3:].isdigit() and 0 <= int(view[3:]) < 8:
            dihedral = int(view[3:])
        else:
            raise ConfigError(f"view {view!r}; expected 'plain', 'random' or 'd4-0' ... 'd4-7'")
        self.load()
        out = features_and_logits(
            self.model,
            self.backbone,
            self.data.datasets[part],
            view=dihedral,
            random_seed=self.config.training_seed if view == "random" else None,
            normalize=self.data.normalize,
            batch_size=self.config.batch_size,
            device=self.data.device,
            progress=progress,
        )
        with atomic_file(path, "wb") as handle:
            np.save(handle, out, allow_pickle=False)
        return out

    def features(self, part: str, view: str = "plain", *, progress: bool = False) -> np.ndarray:
        """The pooled features (the head's input) of :meth:`outputs`."""
        return self.outputs(part, view, progress=progress)[:, : -self.n_outputs]

    def logits(self, part: str, view: str = "plain", *, progress: bool = False) -> np.ndarray:
        """The head's outputs (2, or 1000 with the kept ImageNet head) of :meth:`outputs`."""
        return self.outputs(part, view, progress=progress)[:, -self.n_outputs :]

    def _views(self, kind: str | None) -> list[str]:
        kind = kind or ("tta" if self.config.tta else "plain")
        if kind not in VIEWS:
            raise ConfigError(f"kind {kind!r}; expected one of {', '.join(VIEWS)}")
        return VIEWS[kind]

    def cnn_proba(self, part: str, kind: str | None = None, *, progress: bool = False) -> np.ndarray:
        """The CNN alone: ``[HEM, ALL]`` probabilities (softmax of the HEM and ALL outputs; with the kept ImageNet
        head, of its outputs 0 and 1), averaged over the views of ``kind`` (default: the configuration's)."""
        probas = [
            softmax(self.logits(part, v, progress=progress)[:, :2].astype(np.float64), axis=1)
            for v in self._views(kind)
        ]
        return np.mean(probas, axis=0).astype(np.float32)

    def hybrid(self, source: str = "features", xgb_params: dict | None = None) -> HybridClassifier:
        """XGBoost (the configuration's eta and rounds) fitted on the training cells' plain ``source``
        (``"features"`` or ``"logits"``), its error and AUC recorded per round on training and validation."""
        key = (source, repr(sorted((xgb_params or {}).items())))
        if key not in self._hybrids:
            self.load()
            pick = self.features if source == "features" else self.logits
            evals = [
                (name, (pick(part), self.labels(part))) for name, part in (("train", "train"), ("validation", "val"))
            ]
            hybrid = HybridClassifier(
                backbone=self.backbone,
                cnn=self.model,
                feature_source=source,
                normalize=self.data.normalize,
                eta=self.config.xgb_eta,
                n_estimators=self.config.xgb_estimators,
                seed=self.config.training_seed,
                xgb_params=xgb_params,
                tta=self.config.tta,
                device="cpu",
            )
            hybrid.fit(pick("train"), self.labels("train"), eval_set=evals[: 2 if "val" in self.meta["parts"] else 1])
            cache = self.data.datasets["train"].cache
            hybrid.preprocessing_ = {"size": cache.size, "crop_ratio": round(cache.crop_ratio, 6)}
            hybrid.provenance_ = {
                "fit_subjects": sorted(self.frame("train")["subject"].astype(str).unique()),
                "split": self.meta["split"],  # saved with the model: `allkit evaluate` warns about people it saw
            }
            if self.config.threshold == "validation" and "val" in self.meta["parts"]:
                p_val = np.mean([hybrid.predict_proba(pick("val", v)) for v in self._views(None)], axis=0)[:, 1]
                hybrid.set_params(threshold=float(choose_threshold(self.labels("val"), p_val).threshold))
            self._hybrids[key] = hybrid
        return self._hybrids[key]

    def hybrid_proba(self, part: str, kind: str | None = None, *, source="features", xgb_params=None) -> np.ndarray:
        """The hybrid's ``[HEM, ALL]`` probabilities, averaged over the views of ``kind``."""
        hybrid = self.hybrid(source, xgb_params)
        pick = self.features if source == "features" else self.logits
        return np.mean([hybrid.predict_proba(pick(part, v)) for v in self._views(kind)], axis=0).astype(np.float32)

    def proba(self, part: str, model: str = "hybrid", kind: str | None = None) -> np.ndarray:
        if model not in ("hybrid", "cnn"):
            raise ConfigError(f"model={model!r}; expected 'hybrid' or 'cnn'")
        return self.hybrid_proba(part, kind) if model == "hybrid" else self.cnn_proba(part, kind)

    def threshold(self, model: str = "hybrid", kind: str | None = None, rule: str | None = None) -> float:
        """The cut on P(ALL) the configuration prescribes (``rule`` overrides it): 0.5 for ``"argmax"``, or the one
        with the best balanced accuracy on the **validation** cells for ``"validation"`` (chosen once)."""
        rule = rule or self.config.threshold
        if rule == "argmax" or "val" not in self.meta["parts"]:
            return 0.5
        views = tuple(self._views(kind))
        if model == "hybrid" and self.config.threshold == "validation" and views == tuple(self._views(None)):
            return float(self.hybrid().threshold)  # the one saved with the hybrid
        if (model, views) not in self._thresholds:
            p_val = self.proba("val", model, kind)[:, 1]
            self._thresholds[model, views] = float(choose_threshold(self.labels("val"), p_val).threshold)
        return self._thresholds[model, views]

    def score(self, part: str = "test", model: str = "hybrid", kind: str | None = None, **kwargs) -> dict:
        """:func:`allkit.study.score.score` of ``model`` on ``part`` at the configuration's threshold."""
        kwargs.setdefault("threshold", self.threshold(model, kind))
        kwargs.setdefault("n_boot", self.config.n_boot)
        kwargs.setdefault("seed", self.config.seed)
        return score(self.frame(part), self.proba(part, model, kind), **kwargs)

    @property
    def metrics(self) -> dict:
        """The CNN's and the hybrid's scores on the test part with the run card (``metrics.json``, recomputed when
        the configuration's prediction settings differ from the ones it holds)."""
        path = self.dir / METRICS_FILE
        if path.is_file():
            saved = read_json(path, AllkitError, f"; delete it and it is computed again from {self.dir}")
            if saved.get("config") == self.config.to_dict():
                return saved
        hybrid = self.hybrid()
        metrics = {
            "config": self.config.to_dict(),
            "run_card": self.card,
            "notes": self.meta["notes"],
            "history": self.history,
            "cnn": self.score("test", "cnn"),
            "hybrid": self.score("test", "hybrid"),
            "thresholds": {"cnn": self.threshold("cnn"), "hybrid": float(hybrid.threshold)},
            "xgb_evals": hybrid.evals_result_,
            "seconds": self.meta["seconds"],
        }
        write_json(path, metrics, default=_json_default)
        return metrics

    def save_hybrid(self, folder=None) -> Path:
        """The hybrid saved where :meth:`HybridClassifier.load` reads it (default: ``model/`` in the run)."""
        return self.hybrid().save(self.dir / "model" if folder is None else folder)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, Path, torch.device)):
        return value.tolist() if isinstance(value, np.ndarray) else str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def open_run(folder, config: Config | None = None) -> Run:
    """The run in ``folder`` (``config``: its configuration with other prediction settings, if any)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / CNN_FILE).is_file():
        raise AllkitError(
            f"{folder} is not a finished run (expected {CONFIG_FILE} and {CNN_FILE}); run `allkit train` or "
            "`allkit reproduce` to make one"
        )
    meta = read_json(folder / CONFIG_FILE, AllkitError, f"; delete {folder} and run it again")
    try:
        trained = from_dict(meta["config"])
    except (KeyError, TypeError, AllkitError) as err:
        raise AllkitError(f"{folder / CONFIG_FILE} has a missing or invalid value ({err}); run it again") from None
    if config is not None and config.key(meta["key_data"]) != trained.key(meta["key_data"]):
        raise AllkitError(f"{folder} holds a fine-tune of other settings than the configuration asked for")
    return Run(folder, trained if config is None else replace(trained, **_prediction(config)), meta)


def _prediction(config: Config) -> dict:
    """The settings of ``config`` that change only what is reported (applied to a stored fine-tune)."""
    return {name: getattr(config, name) for name in NOT_TRAINING}


def train_into(staging: Path, config: Config, data=None, *, note=None, device="auto", test_data=None, progress=True):
    """Fine-tune ``config`` into ``staging`` and store the plain outputs of every part: a finished run folder.
    ``note``: how its backbone was chosen (:func:`allkit.study.prepare.choose_backbone`), for the run card."""
    started = time.perf_counter()
    data, model = prepare(config, data, device=device, progress=progress, test_data=test_data)
    data.weights_note = note or data.weights_note
    if "test" not in data.datasets:
        raise AllkitError("the split has no test cells; there is nothing to evaluate on")
    trainer = finetune(data, model, checkpoint_dir=staging / "checkpoints", progress=progress)
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / CNN_FILE)
    meta = {
        "config": config.to_dict(),
        "key_data": data.fingerprint,
        "run_card": data.card(),
        "notes": data.notes,
        "split": split_record(data),
        "parts": sorted(data.datasets),
        "history": trainer.history_,
        "best_epoch": trainer.best_epoch_,
        "trainer": trainer.get_params(),  # what the fine-tune actually ran with
        "seconds": {"finetune": time.perf_counter() - started},
    }
    run = Run(staging, data.config, meta, data, model.eval())
    for part in data.datasets:  # what every analysis needs, while the model is loaded
        run.frame(part)
        run.outputs(part, "plain", progress=progress)
    meta["seconds"]["total"] = time.perf_counter() - started
    write_json(staging / CONFIG_FILE, meta, default=_json_default)  # last: the folder is now a run
    return run


def run(
    config: Config | str | None = None,
    data=None,
    *,
    out=None,
    overwrite: bool = False,
    runs=None,
    device="auto",
    test_data=None,
    progress: bool = True,
    then=None,
) -> Run:
    """The fine-tune of ``config`` (a :class:`Config` or a preset's name) on ``data``: opened from the store
    (``RUNS/<preset>/<recipe>-<key>``, ``runs`` default :func:`allkit.study.workspace.runs_dir`) when it is
    there, else trained into it. With ``out``, the run is written there instead (see :func:`claim_folder`),
    copied from the store when the store holds it. ``then(run)`` is called on a new run before its folder is
    moved into place: what it adds appears all at once with the fine-tune, or not at all."""
    asked = config if isinstance(config, Config) else get_config(config)
    root, _ = data_root(data)
    internal = asked.test == "internal" or asked.split == "image"  # the by-image split measures leakage inside
    test_root = None if internal else test_data_root(test_data)
    store = Path(runs or runs_dir())

    @functools.cache  # read once, and only after the backbone is chosen (a fallback is said first)
    def cells_fingerprint() -> str:
        return data_fingerprint(load_cnmc(root), test_root)

    def stored_as(config: Config) -> Path:
        key = config.key(cells_fingerprint())
        done = sorted((store / config.name).glob(f"*-{key}"))  # the same fine-tune under another recipe's name
        return next((f for f in done if (f / CONFIG_FILE).is_file()), store / config.name / f"{config.recipe}-{key}")

    if out is None:
        config, _, note = choose_backbone(asked)  # the key is over what is trained: a fallback is one run
        target = stored_as(config)
        if (target / CONFIG_FILE).is_file():
            opened = open_run(target, config)
            opened.where = (root, test_root)
            return opened
    else:
        target = Path(out)
    with claim_folder(target, overwrite=overwrite, inputs=run_inputs(root, test_root)) as staging:  # before any work
        if out is not None:
            config, _, note = choose_backbone(asked)
        stored = stored_as(config)
        if out is not None and (stored / CONFIG_FILE).is_file():
            shutil.copytree(stored, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model", "*.png"))
            trained = open_run(staging, config)
            trained.where = (root, test_root)
        else:
            trained = train_into(
                staging, config, root, note=note, device=device, test_data=test_root or False, progress=progress
            )
        if then is not None:
            then(trained)
    return Run(target.expanduser().absolute(), config, trained.meta, trained.data, trained.model, (root, test_root))


def _complete(done: Run, figures: bool) -> None:
    """Add to a run what ``allkit reproduce`` leaves beside the fine-tune: scores, the saved hybrid, figures."""
    path = done.dir / METRICS_FILE
    held = read_json(path, AllkitError).get("config") if path.is_file() else None
    metrics = done.metrics  # read, or computed now
    if held != done.config.to_dict() or not (done.dir / "model" / "manifest.json").is_file():
        done.save_hybrid()
    if figures and "figures" not in metrics:
        from allkit.study.plots import save_run_figures  # matplotlib only when figures are made

        saved = save_run_figures(done)
        metrics = {**metrics, "figures": {name: p.name for name, p in saved.items()}}
        write_json(path, metrics, default=_json_default)


def reproduce(config=None, data=None, *, out=None, overwrite=False, figures=True, **kwargs) -> Run:
    """The whole method: the fine-tune (:func:`run`), then the CNN alone and the hybrid on the test cells with
    intervals (``metrics.json``), the saved hybrid (``model/``) and the figures, all in the run's folder. A new
    run's folder appears with all of them or not at all; a finished run is opened, and what it lacks is added."""
    done = run(config, data, out=out, overwrite=overwrite, then=lambda new: _complete(new, figures), **kwargs)
    _complete(done, figures)
    return done
