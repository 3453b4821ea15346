"""Images per second on a GPU: a plain PyTorch loop vs allkit on the same device, in one run, and the end-to-end
time of the paper's protocol on the data present, extrapolated to the full C-NMC training and test sets.

*plain*: what a typical fine-tuning notebook does: a ``DataLoader`` with 2 worker processes reading one cell at a
time, per-image torchvision augmentation on the CPU, float32 on the GPU, ``loss.item()`` every step; features
extracted in float32 at the training batch size (40). *allkit*: ``allkit.train.Trainer`` and
``allkit.inference.predict`` with their defaults (batches read from the uint8 cache in one go, augmentation on the
device, channels-last, bf16/fp16 autocast, no per-step host sync; extraction at batch 256). EfficientNet-B0 with
random weights: speed does not depend on the weights' values, and nothing is downloaded.

    ALLKIT_DATA=/path/to/data python benchmarks/gpu.py                     # on the lent GPU
    ALLKIT_DATA=/path/to/data python benchmarks/gpu.py --end-to-end       # + reproduce --profile paper
    python benchmarks/gpu.py --device cpu --n-images 80 --train-images 80  # a smoke test anywhere

Targets (ratios in one run): allkit >= 1.5x the plain loop for training and >= 3x for extraction; the full
paper protocol under 3 minutes on an H100 (under 6 on a T4).
"""

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from allkit.constants import (
    BATCH_SIZE,
    EXPECTED_COUNTS,
    FLIP_PROBABILITY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ROTATION_DEGREES,
)
from allkit.data import CellDataset, build_cache, load_cnmc
from allkit.device import select_device
from allkit.inference import predict
from allkit.models import PooledFeatures, build_model
from allkit.perf import speed_up
from allkit.study.config import get_config
from allkit.study.store import reproduce
from allkit.study.workspace import data_root
from allkit.train import Trainer

FULL_CELLS = EXPECTED_COUNTS["training"] + EXPECTED_COUNTS["prelim"]  # 10,661 + 1,867


class OneByOne(Dataset):
    """The cache read the plain way: one cell per ``__getitem__``, augmented by torchvision on the CPU."""

    def __init__(self, cells: CellDataset, augment: bool):
        self.cells = cells
        self.augment = (
            v2.Compose(
                [
                    v2.RandomHorizontalFlip(FLIP_PROBABILITY),
                    v2.RandomVerticalFlip(FLIP_PROBABILITY),
                    v2.RandomRotation(ROTATION_DEGREES),
                ]
            )
            if augment
            else None
        )

    def __len__(self):
        return len(self.cells)

    def __getitem__(self, index):
        image, label = self.cells[index]
        return (self.augment(image) if self.augment else image), label


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_input(images, device):
    x = images.to(device).float().div_(255)
    return (x - torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD, device=device
    ).view(1, 3, 1, 1)


def plain_extract(model, cells, device) -> float:
    loader = DataLoader(OneByOne(cells, False), batch_size=BATCH_SIZE, num_workers=2)
    features = PooledFeatures(model, "efficientnet_b0").to(device).eval()
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for images, _ in loader:
            features(plain_input(images, device)).cpu()
    _sync(device)
    return len(cells) / (time.perf_counter() - start)


def plain_train(model, cells, device) -> float:
    loader = DataLoader(OneByOne(cells, True), batch_size=BATCH_SIZE, shuffle=True, num_workers=2)
    model.to(device).train()
    optimizer, loss_fn = torch.optim.Adamax(model.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()
    _sync(device)
    start, total = time.perf_counter(), 0.0
    for images, labels in loader:
        loss = loss_fn(model(plain_input(images, device)), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()  # what most loops log every step
    _sync(device)
    return len(cells) / (time.perf_counter() - start)


def allkit_extract(model, cells, device) -> float:
    features = PooledFeatures(model, "efficientnet_b0")
    predict(features, cells, device=device)  # warm-up: cuDNN picks its kernels, autocast caches casts
    _sync(device)
    start = time.perf_counter()
    predict(features, cells, device=device)
    _sync(device)
    return len(cells) / (time.perf_counter() - start)


def allkit_train(model, cells, device) -> float:
    Trainer(epochs=1, max_batches=2, device=device, progress=False).fit(model, cells)  # warm-up
    record = Trainer(epochs=1, device=device, progress=False).fit(model, cells).history_[0]
    return record["images_per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="C-NMC root (default: ALLKIT_DATA, ./data, synthetic)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-images", type=int, default=2048, help="cells per extraction pass")
    parser.add_argument("--train-images", type=int, default=1200, help="cells per training pass")
    parser.add_argument("--end-to-end", action="store_true", help="also time reproduce --profile paper on the data")
    args = parser.parse_args()
    speed_up()
    device = select_device(args.device)
    root, source = data_root(args.data)
    frame = load_cnmc(root).frame
    n = min(len(frame), max(args.n_images, args.train_images))
    sample = frame.sample(n=n, random_state=0).reset_index(drop=True)
    cache = build_cache(sample, progress=False)
    extract_cells = CellDataset(cache, sample.head(args.n_images))
    train_cells = CellDataset(cache, sample.head(args.train_images))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}); torch {torch.__version__}; data {source}: {root} ({len(frame)} cells)")
    rows = {}
    for label, extract, train in (("plain", plain_extract, plain_train), ("allkit", allkit_extract, allkit_train)):
        torch.manual_seed(0)
        rows[label] = (
            extract(build_model("efficientnet_b0"), extract_cells, device),
            train(build_model("efficientnet_b0"), train_cells, device),
        )
        print(f"{label:>7}: extraction {rows[label][0]:8.1f} img/s   training {rows[label][1]:8.1f} img/s")
    (pe, pt), (ae, at) = rows["plain"], rows["allkit"]
    print(f"  ratio: extraction {ae / pe:.2f}x (target >= 3x), training {at / pt:.2f}x (target >= 1.5x)")
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            config = replace(get_config("paper"), weights=None)  # random weights: nothing downloaded, same work
            run = reproduce(config, root, out=Path(tmp) / "run", runs=tmp, device=str(device), progress=False)
            seconds, metrics = time.perf_counter() - start, run.metrics
        cells = sum(part["cells"] for part in run.card["counts"].values())
        full = seconds * FULL_CELLS / cells
        print(
            f"reproduce --profile paper on {cells} cells ({run.card['split']} split): {seconds:.0f} s; at that rate "
            f"the full protocol ({FULL_CELLS:,} cells) takes about {full / 60:.1f} min (target: < 3 on an H100, "
            f"< 6 on a T4). Seconds: {metrics['seconds']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
