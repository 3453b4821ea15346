"""The floor a fine-tune must beat: frozen ImageNet features + logistic regression, no fine-tuning.

The profile's own split and cells (``sample``: folds 0-1 for training, at most 80 cells a person, fold 2 as the
test part, the release's copies of training pictures dropped from it), the offline ImageNet EfficientNet-Lite0
(or ``--backbone``), its pooled features, a standardised logistic regression fitted on the training cells,
scored on the test part with person-bootstrap intervals beside the majority baseline. Printed, not asserted.

    ALLKIT_DATA=../shared/data python benchmarks/probe.py                 # sample profile
    ALLKIT_DATA=../shared/data python benchmarks/probe.py --profile ci    # a smaller, faster look
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from allkit.device import select_device  # noqa: E402
from allkit.hybrid import extract_features  # noqa: E402
from allkit.perf import speed_up  # noqa: E402
from allkit.study.config import get_config  # noqa: E402
from allkit.study.prepare import prepare  # noqa: E402
from allkit.study.score import score  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="sample")
    parser.add_argument("--data", help="C-NMC root (default: ALLKIT_DATA, data/, synthetic)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="offline", help="offline (Lite0's packaged ImageNet weights) or imagenet")
    args = parser.parse_args()
    speed_up()
    started = time.perf_counter()
    config = replace(get_config(args.profile), backbone=args.backbone, weights=args.weights, fallback_backbone=None)
    prepared, model = prepare(config, args.data, progress=True)
    model.eval()
    kwargs = {"normalize": prepared.normalize, "device": select_device("auto"), "progress": True}
    parts = ("train", "val", "test")
    features = {part: extract_features(model, prepared.datasets[part], prepared.backbone, **kwargs) for part in parts}
    # Fitted on training and validation together (all of folds 0-1 that the profile keeps): nothing is chosen here
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    probe.fit(
        np.concatenate([features["train"], features["val"]]),
        np.concatenate([prepared.datasets[part].labels.numpy() for part in ("train", "val")]),
    )
    test = prepared.datasets["test"]
    result = score(test.frame, probe.predict_proba(features["test"]), n_boot=1000, seed=0)
    ci = result["ci"]
    card = prepared.card()
    print(
        f"linear probe on frozen {prepared.backbone} ({prepared.weights} weights), {card['profile']} profile, "
        f"split {card['split']}: trained on {card['counts']['train']['cells'] + card['counts']['val']['cells']} cells "
        f"of {card['counts']['train']['subjects'] + card['counts']['val']['subjects']} people, tested on {len(test)} cells of "
        f"{test.frame['subject'].nunique()} people (copies dropped: {card['dropped_copies'] or 'none'})"
    )
    print(
        f"  AUC {result['roc_auc']:.3f} [{ci['roc_auc']['low']:.3f}, {ci['roc_auc']['high']:.3f}], balanced accuracy "
        f"{result['balanced_accuracy']:.3f} [{ci['balanced_accuracy']['low']:.3f}, "
        f"{ci['balanced_accuracy']['high']:.3f}], accuracy {result['accuracy']:.3f} (majority baseline "
        f"{result['majority_baseline']:.3f}); person-bootstrap 95% intervals"
    )
    print(f"  {time.perf_counter() - started:.0f} s on {card['device']}")


if __name__ == "__main__":
    main()
