"""C-NMC 2019 on disk → records → splits by subject → a uint8 cache → batches.

Labels everywhere: ALL (malignant) = 1, HEM (normal) = 0."""

from allkit.data.cache import (
    CellCache,
    build_cache,
    cache_dir,
    check_preprocessing,
    decode_cell,
    open_cell,
    pixel_digest,
    pixel_digests,
    read_cell,
    to_rgb,
)
from allkit.data.dataset import CellDataset, make_loader
from allkit.data.records import CNMC, COLUMNS, find_cnmc_root, load_cnmc, parse_cell_name, summarize
from allkit.data.splits import (
    Split,
    check_leakage,
    drop_copies,
    linked_subjects,
    partition_subjects,
    split_by_image,
    split_by_subject,
    split_folds,
    split_paper,
    without_copies,
)

__all__ = [
    "CNMC",
    "COLUMNS",
    "CellCache",
    "CellDataset",
    "Split",
    "build_cache",
    "cache_dir",
    "check_leakage",
    "check_preprocessing",
    "drop_copies",
    "decode_cell",
    "read_cell",
    "find_cnmc_root",
    "load_cnmc",
    "linked_subjects",
    "make_loader",
    "open_cell",
    "parse_cell_name",
    "pixel_digest",
    "pixel_digests",
    "partition_subjects",
    "split_by_image",
    "split_by_subject",
    "split_folds",
    "split_paper",
    "summarize",
    "to_rgb",
    "without_copies",
]
