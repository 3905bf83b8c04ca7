"""The authors' published numbers shipped in dyn/paper: the files, their agreement with the paper's
Table 1, and the loaders' answers for paper and non-paper setups."""
import csv
import sys
from collections import defaultdict
from importlib import resources

import numpy as np
import pytest

from dyn import paper
from dyn.report import tables

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

LOG_COLUMNS = ["log", "teacher", "student", "method", "layers", "beta", "epochs", "epoch", "train_lr", "train_loss",
               "test_acc1", "test_acc5"]
ENTROPY_COLUMNS = ["table", "teacher", "student", "method", "layers", "beta", "epochs", "checkpoint", "epoch", "block",
                   "entropy"]


def _csv(name):
    with resources.files("dyn.paper").joinpath(name).open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_logs_file_one_row_per_epoch_of_each_log():
    columns, rows = _csv("logs.csv")
    assert columns == LOG_COLUMNS
    by_log = defaultdict(list)
    for row in rows:
        by_log[row["log"]].append(row)
    assert len(by_log) == 11
    for name, log in by_log.items():
        epochs = int(log[0]["epochs"])
        assert epochs == (500 if "500_epochs" in name else 300), name
        assert [int(r["epoch"]) for r in log] == list(range(epochs)), name  # 0-based, every epoch once
        assert {r["teacher"] for r in log} == {"vit_base_patch16_224.mae" if "MAE" in name else "cait_s24_224"}
        assert {r["student"] for r in log} == {"deit_tiny_patch16_224"}
    # Values are the JSON text of SoftKD.txt's first line, unrounded.
    first = by_log["SoftKD.txt"][0]
    assert (first["train_lr"], first["train_loss"], first["test_acc1"], first["test_acc5"]) == (
        "1.000000000000014e-06", "5.7782032051086425", "0.2680000112581253", "1.010000034198761")


def test_best_top1_of_each_log_is_the_papers_table1_value():
    published = {key: value for key, value in tables.PAPER_TOP1.items() if paper.paper_log(*key)}
    assert sorted(published.values()) == sorted([76.99, 78.07, 77.00, 77.08, 76.83, 77.59, 76.87, 76.72, 76.80])
    for key, value in published.items():
        curve = paper.paper_curve(*key)
        assert len(curve) == key[3] and [r["epoch"] for r in curve] == list(range(key[3]))
        assert round(max(r["test_acc1"] for r in curve), 2) == pytest.approx(value), key


def test_entropy_file_and_loader():
    columns, rows = _csv("entropy.csv")
    assert columns == ENTROPY_COLUMNS
    assert len(rows) == 4 * 11 * 12  # four tables, checkpoints after 30..300 epochs and the best, 12 blocks
    assert rows[0]["entropy"] == "2.4673946862766547" and rows[0]["checkpoint"] == "epoch_30"
    assert {r["epoch"] for r in rows if r["checkpoint"] == "best"} == {""}
    softkd = paper.paper_entropy("softkd", "none", 0.0, 300)
    assert list(softkd) == list(range(30, 301, 30)) and all(v.shape == (12,) for v in softkd.values())
    assert softkd[30][0] == 2.4673946862766547
    last1 = paper.paper_entropy("spectral", "Last1", 0.2, 300, best=True)
    assert "best" in last1 and np.isfinite(last1["best"]).all()
    # The same pairs in another order, and timm's default pretrained tag on the teacher, are the same setup.
    assert paper.paper_entropy("spectral", "Last1+First1", 0.2, 300, teacher="cait_s24_224.fb_dist_in1k") is not None


@pytest.mark.parametrize("setup", [
    dict(method="spectral", layers="Last1", beta=0.1, epochs=300),  # in the paper's text, no log
    dict(method="spectral", layers="Last8", beta=0.2, epochs=300),
    dict(method="softkd", layers="none", beta=0.0, epochs=20),
    dict(method="softkd", layers="none", beta=0.0, epochs=300, teacher="cait_digits"),
    dict(method="softkd", layers="none", beta=0.0, epochs=300, student="deit_small_patch16_224"),
    dict(method="spectral", layers="Last1", beta=0.2, epochs=300, teacher="vit_base_patch16_224"),  # not MAE
    dict(method="lowpass", layers="Last1", beta=0.2, epochs=300),
    dict(method="projector_trained", layers="Last1", beta=0.2, epochs=300),
])
def test_loaders_return_none_for_a_setup_the_authors_published_nothing_of(setup):
    assert paper.paper_curve(**setup) is None and paper.paper_log(**setup) is None
    assert paper.paper_entropy(**setup) is None


def test_loaders_for_published_setups():
    assert paper.paper_log("softkd", epochs=500) == "SoftKD_500_epochs.txt"
    assert paper.paper_log("spectral", "Last1", 0.2, 300, teacher="vit_base_patch16_224.mae") == \
        "SpectralKD_Last_1_MAE.txt"
    assert paper.paper_curve("projector", "First1+Last1", 0.2, 300)[0]["log"] == "ProjectorKD_First_1_Last_1.txt"
    assert paper.paper_entropy("projector", "First1", 0.2, 300) is None  # a log, but no entropy table
    summary = {"method": "softkd", "layers": "none", "beta": 0, "epochs": 300, "teacher": "cait_s24_224",
               "student": "deit_tiny_patch16_224", "seed": 3}
    assert paper.paper_log(**paper.setup_of(summary)) == "SoftKD.txt"


def test_files_ship_with_the_package(repo):
    source = resources.files("dyn.paper").joinpath("SOURCE.md").read_text()
    assert "5086c560c7816a72914be3358862b6087a47dc6e" in source and "github.com/thy960112/Distillation-Dynamics" in source
    if tomllib is not None:
        config = tomllib.loads((repo / "pyproject.toml").read_text())
        assert "*.csv" in config["tool"]["setuptools"]["package-data"]["dyn.paper"]
