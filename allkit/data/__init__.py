"""C-NMC 2019 on disk → records → subject-wise splits → a uint8 cache → torch loaders.

Labels everywhere: ALL (malignant) = 1, HEM (normal) = 0.
"""

from allkit.data.cache import CellCache, build_cache
from allkit.data.discover import (
    CNMC,
    BadFile,
    IncompleteDataWarning,
    find_cnmc_root,
    load_cnmc,
    parse_cell_name,
    summarize,
)
from allkit.data.download import download_cnmc, safe_extract
from allkit.data.loader import CellDataset, make_loader
from allkit.data.paths import SyntheticDataWarning, resolve_data_root
from allkit.data.splits import Split, check_leakage, make_split, split_by_subject, split_cells, split_paper

__all__ = [
    "CNMC", "BadFile", "CellCache", "CellDataset", "IncompleteDataWarning", "Split", "SyntheticDataWarning",
    "build_cache", "check_leakage", "download_cnmc", "find_cnmc_root", "load_cnmc", "make_loader",
    "make_split", "parse_cell_name", "resolve_data_root", "safe_extract", "split_by_subject", "split_cells",
    "split_paper", "summarize", "open_cnmc",
]


def open_cnmc(root=None, **kwargs) -> CNMC:
    """Resolve the data root (argument > ALLKIT_DATA > repo data/ > synthetic) and load it."""
    path, _source = resolve_data_root(root)
    return load_cnmc(path, **kwargs)
