"""The whole data path on a tree of the release's size and layout (small images): 10,661 training cells of 73
people in three folds, the preliminary test set of 1,867 with its CSV, the final test set of 2,586."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from allkit.cli.main import main
from allkit.constants import EXPECTED_COUNTS
from allkit.data import load_cnmc, pixel_digests, split_folds, split_paper

pytestmark = pytest.mark.slow

# (fold, class) -> (cells, people), as in the release (the README of ../shared/data; fold 2 by difference)
RELEASE = {
    ("fold_0", "all"): (2397, 19),
    ("fold_0", "hem"): (1130, 9),
    ("fold_1", "all"): (2418, 11),
    ("fold_1", "hem"): (1163, 3),
    ("fold_2", "all"): (2457, 17),
    ("fold_2", "hem"): (1096, 14),
}
PRELIM = {"all": (1219, 9), "hem": (648, 8)}  # 1,867 cells of other people


def cell(index: int) -> Image.Image:
    """A 64x64 image whose pixels are its index: every cell of the tree is a different picture."""
    pixels = np.full((64, 64, 3), 128, np.uint8)
    pixels[0, :8] = np.frombuffer(index.to_bytes(24, "little"), np.uint8).reshape(8, 3)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    cnmc, index, subject = root / "C-NMC_Leukemia", 0, 0
    for (fold, cls), (cells, people) in RELEASE.items():
        folder = cnmc / "training_data" / fold / cls
        folder.mkdir(parents=True)
        for i in range(cells):
            person = subject + i % people
            name = f"UID_{'H' if cls == 'hem' else ''}{person}_{i}_1_{cls}.bmp"
            cell(index).save(folder / name)
            index += 1
        subject += people
    prelim = cnmc / "validation_data" / "C-NMC_test_prelim_phase_data"
    prelim.mkdir(parents=True)
    rows, n = ["Patient_ID,new_names,labels"], 0
    for cls, (cells, people) in PRELIM.items():
        for i in range(cells):
            n += 1
            person = subject + i % people
            cell(index).save(prelim / f"{n}.bmp")
            rows.append(f"UID_{'H' if cls == 'hem' else ''}{person}_{i}_1_{cls}.bmp,{n}.bmp,{int(cls == 'all')}")
            index += 1
        subject += people
    (prelim.parent / "C-NMC_test_prelim_phase_data_labels.csv").write_text("\n".join(rows) + "\n")
    final = cnmc / "testing_data" / "C-NMC_test_final_phase_data"
    final.mkdir(parents=True)
    for i in range(1, EXPECTED_COUNTS["final"] + 1):
        cell(index).save(final / f"{i}.bmp")
        index += 1
    return root


def test_data_check_counts_the_release_exactly(release, capsys):
    code = main(["data", "check", str(release), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["usable"] and report["layout"] == "full"
    assert report["images"] == {"ALL": EXPECTED_COUNTS["training_ALL"], "HEM": EXPECTED_COUNTS["training_HEM"]}
    assert sum(report["subjects"].values()) == 73
    assert sum(report["prelim"]["images"].values()) == EXPECTED_COUNTS["prelim"]
    assert report["unlabelled"] == EXPECTED_COUNTS["final"] and report["decoded"]
    assert report["bad_files"] == [] and report["copies"] == [] and report["uncounted"] == []
    assert not [n for n in report["notes"] if "release has" in n or "partial" in n]  # counts as the release's


def test_the_protocols_on_the_full_tree(release):
    frame = load_cnmc(release).frame
    digests = pixel_digests(frame["path"], progress=False)
    folds = split_folds(frame, seed=42, digests=digests)
    assert len(folds.test) == EXPECTED_COUNTS["fold_2"] and "prelim" not in set(folds.frame["fold"])
    assert len(folds.train) + len(folds.val) == EXPECTED_COUNTS["fold_0"] + EXPECTED_COUNTS["fold_1"]
    paper = split_paper(frame, seed=42)
    assert len(paper.train) == EXPECTED_COUNTS["training"]
    assert len(paper.val) + len(paper.test) == EXPECTED_COUNTS["prelim"]


def test_extract_then_check_a_zip_of_the_release(release, tmp_path, capsys):
    archive = tmp_path / "leukemia-classification.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(release.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(release))
    dest = tmp_path / "data"
    assert main(["data", "extract", str(archive), "--dest", str(dest)]) == 0
    assert f"allkit data check {dest}" in capsys.readouterr().out
    assert main(["data", "check", str(dest), "--json", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(report["images"].values()) == EXPECTED_COUNTS["training"] and report["uncounted"] == []
