"""Images/second of one training epoch's data pipeline: the authors' style versus allkit's warm cache.

(a) authors' style: torchvision ImageFolder + PIL transforms every epoch (decode PNG/BMP, centre crop
    448, resize 224, flips, rotation, ToTensor), DataLoader(batch 40, shuffle, num_workers=0);
(b) allkit: cells decoded once into the uint8 memory-mapped cache (timed separately, a one-off cost),
    then batched reads + per-sample flips/rotation on the batch + float conversion/normalisation, with
    allkit's malloc tuning (as its trainer applies it).

Both produce the same thing: a shuffled batch of 40 augmented float tensors per step.

    ALLKIT_DATA=../shared/data python benchmarks/loader.py [--n-authors 600] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from allkit.constants import BATCH_SIZE, CROP_SIZE, FLIP_PROBABILITY, IMAGE_SIZE, ROTATION_DEGREES
from allkit.data import CellDataset, build_cache, load_cnmc, make_loader
from allkit.perf import tune_malloc
from allkit.study.workspace import data_root
from allkit.transforms import BatchAugment, to_model_input


def authors_style(fold_dir: str, n_images: int) -> float:
    transform = T.Compose(
        [
            T.CenterCrop(CROP_SIZE),
            T.Resize(IMAGE_SIZE),
            T.RandomHorizontalFlip(FLIP_PROBABILITY),
            T.RandomVerticalFlip(FLIP_PROBABILITY),
            T.RandomRotation(ROTATION_DEGREES),
            T.ToTensor(),
        ]
    )
    dataset = datasets.ImageFolder(fold_dir, transform=transform)
    subset = Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n_images])
    loader = DataLoader(subset, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
    start = time.perf_counter()
    seen = 0
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def allkit_style(cache, epochs: int) -> float:
    # allkit's trainer and inference keep big buffers instead of returning them to the OS after every
    # batch (allkit.perf.tune_malloc); process-wide, so it runs after the authors' style was timed.
    tune_malloc()
    dataset = CellDataset(cache)
    augment = BatchAugment()
    rates = []
    for epoch in range(epochs):
        loader = make_loader(dataset, batch_size=BATCH_SIZE, shuffle=True, seed=epoch)
        start = time.perf_counter()
        seen = 0
        for images, _ in loader:
            batch = to_model_input(augment(images), normalize=True)
            seen += len(batch)
        rates.append(seen / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="C-NMC root (default: ALLKIT_DATA)")
    parser.add_argument("--n-authors", type=int, default=600, help="images timed for the authors' style")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed for allkit (best is reported)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    root, source = data_root(args.data)
    data = load_cnmc(root)
    train = data.frame[data.frame["fold"].str.startswith("fold_")]
    fold_dir = str(sorted({p.rsplit("/", 2)[0] for p in train["path"]})[0])
    fold_frame = train[train["path"].str.startswith(fold_dir + "/")]
    print(
        f"data: {data.root} ({source}{', SYNTHETIC' if data.synthetic else ''}); timing {fold_dir}: "
        f"{len(fold_frame)} cells; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    start = time.perf_counter()
    cache = build_cache(fold_frame, progress=False)
    print(f"cache: {time.perf_counter() - start:.1f} s to build or open ({cache.path})")

    a = authors_style(fold_dir, min(args.n_authors, len(fold_frame)))
    print(f"(a) authors' style (ImageFolder + PIL transforms, num_workers=0): {a:8.1f} img/s")
    b = allkit_style(cache, args.epochs)
    print(f"(b) allkit, warm cache (batched reads + batch augmentation):    {b:8.1f} img/s")
    print(f"ratio (b)/(a): {b / a:.1f}x   (target >= 10x)")


if __name__ == "__main__":
    main()
