"""C-NMC 2019 on disk → records → splits by subject → a uint8 cache → batches.

Labels everywhere: ALL (malignant) = 1, HEM (normal) = 0."""

from allkit.data.cache import CellCache, build_cache, cache_dir, decode_cell, read_cell, to_rgb
from allkit.data.dataset import CellDataset, make_loader
from allkit.data.records import CNMC, COLUMNS, find_cnmc_root, load_cnmc, parse_cell_name, summarize
from allkit.data.splits import (
    Split,
    check_leakage,
    partition_subjects,
    split_by_image,
    split_by_subject,
    split_paper,
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
    "decode_cell",
    "read_cell",
    "find_cnmc_root",
    "load_cnmc",
    "make_loader",
    "parse_cell_name",
    "partition_subjects",
    "split_by_image",
    "split_by_subject",
    "split_paper",
    "summarize",
    "to_rgb",
]
