"""Table 1 and its summary over seeds, on summaries whose statistics are worked out by hand."""
import csv
import json
import math

import pytest

from dyn.report import tables


def _summary(method, layers, beta, epochs, seed, top1, best):
    run = f"{method}_{layers}_b{beta:g}_e{epochs}_s{seed}"
    return {"run": run, "method": method, "layers": layers, "beta": beta, "epochs": epochs, "seed": seed,
            "top1": top1, "top5": 99.0, "best_top1": best, "teacher": "cait_s24_224",
            "student": "deit_tiny_patch16_224"}


SUMMARIES = [
    _summary("softkd", "none", 0.0, 300, 0, 76.0, 76.5),
    _summary("softkd", "none", 0.0, 300, 1, 77.0, 77.0),
    _summary("softkd", "none", 0.0, 300, 2, 78.0, 78.0),
    _summary("spectral", "Last1", 0.2, 300, 0, 75.0, 76.0),  # deltas -1, -1, +1: mean -1/3
    _summary("spectral", "Last1", 0.2, 300, 1, 76.0, 77.0),
    _summary("spectral", "Last1", 0.2, 300, 2, 79.0, 79.0),
    _summary("spectral", "First1", 0.2, 300, 0, 77.0, 77.5),  # one seed: no interval
]


def test_per_run_deltas_are_paired_by_seed():
    rows = {r["run"]: r for r in tables.table1_rows(SUMMARIES)}
    assert rows["spectral_Last1_b0.2_e300_s1"]["delta_top1"] == pytest.approx(-1.0)
    assert rows["spectral_Last1_b0.2_e300_s1"]["best_delta_top1"] == pytest.approx(0.0)
    assert rows["spectral_First1_b0.2_e300_s0"]["best_delta_top1"] == pytest.approx(1.0)


def test_summary_interval_by_hand():
    summary = {(r["method"], r["layers"]): r for r in tables.summary_rows(tables.table1_rows(SUMMARIES))}
    last1 = summary[("spectral", "Last1")]
    # deltas -1, -1, +1: mean -1/3, sd sqrt(4/3), half-width t(0.975, 2) * sd / sqrt(3) = 4.302653 * 0.666667
    assert last1["n_seeds"] == 3 and last1["top1_mean"] == pytest.approx(76.666667)
    assert last1["top1_sd"] == pytest.approx(math.sqrt(((75 - 230 / 3) ** 2 + (76 - 230 / 3) ** 2
                                                        + (79 - 230 / 3) ** 2) / 2))
    assert last1["delta_mean"] == pytest.approx(-1 / 3)
    half = 4.302653 * math.sqrt(4 / 3) / math.sqrt(3)
    assert (last1["delta_ci_low"], last1["delta_ci_high"]) == pytest.approx((-1 / 3 - half, -1 / 3 + half), abs=1e-5)
    assert last1["best_delta_mean"] == pytest.approx((-0.5 + 0 + 1) / 3)
    first1 = summary[("spectral", "First1")]
    assert first1["n_seeds"] == 1 and first1["delta_mean"] == pytest.approx(1.0)
    assert math.isnan(first1["delta_ci_low"]) and math.isnan(first1["top1_sd"])
    softkd = summary[("softkd", "none")]
    assert softkd["delta_mean"] == 0 and softkd["delta_ci_low"] == softkd["delta_ci_high"] == 0


def test_files_and_the_papers_values_beside_the_summary(tmp_path):
    paths = []
    for i, s in enumerate(SUMMARIES):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(s))
    tables.write_table1(paths, tmp_path / "table1.csv")
    rows = list(csv.DictReader((tmp_path / "table1.csv").open()))
    assert list(rows[0]) == list(tables.COLUMNS) and len(rows) == 7
    summary = list(csv.DictReader((tmp_path / "table1_summary.csv").open()))
    assert list(summary[0]) == list(tables.SUMMARY_COLUMNS) and len(summary) == 3
    assert [r["delta_ci_low"] for r in summary if r["layers"] == "First1"] == ["nan"]
    md = (tmp_path / "table1.md").read_text()
    assert "| spectral | Last1 | 0.2 | 300 | 3 | 76.67 ± 2.08 | -0.33 (-3.20 to +2.54) | 77.33 | 76.83 |" in md
    assert "| softkd | none | 0 | 300 | 3 |" in md and "76.99 |" in md


def test_papers_top1_holds_last1_at_beta_0_1_from_the_text():
    assert tables.PAPER_TOP1[("spectral", "Last1", 0.1, 300)] == 76.48
    md = tables.markdown(tables.summary_rows(tables.table1_rows([_summary("spectral", "Last1", 0.1, 300, 0, 76.0,
                                                                          76.2)])), *tables.PAPER.values())
    assert "| 76.48 |" in md


def test_paper_top1_at_epoch_is_the_authors_final_epoch_where_the_setup_is_theirs(tmp_path):
    # The authors' logs (dyn/paper/logs.csv): SoftKD.txt ends at 76.946..., SpectralKD_Last_1.txt at 76.790...
    rows = {r["run"]: r for r in tables.table1_rows(SUMMARIES)}
    assert rows["softkd_none_b0_e300_s1"]["paper_top1_at_epoch"] == pytest.approx(76.94600279174804)
    assert rows["spectral_Last1_b0.2_e300_s0"]["paper_top1_at_epoch"] == pytest.approx(76.79000257324219)
    assert rows["spectral_First1_b0.2_e300_s0"]["paper_top1_at_epoch"] == pytest.approx(77.00200234985351)
    others = [_summary("spectral", "Last1", 0.1, 300, 0, 76.0, 76.2),  # the paper's text only: no log
              _summary("softkd", "none", 0.0, 30, 0, 50.0, 50.0),  # not the paper's epochs
              {**_summary("softkd", "none", 0.0, 300, 0, 70.0, 70.0), "teacher": "resnet50"},
              {**_summary("softkd", "none", 0.0, 300, 0, 70.0, 70.0), "student": "deit_small_patch16_224"}]
    assert [r["paper_top1_at_epoch"] for r in tables.table1_rows(others)] == [None] * 4
    paths = []
    for i, s in enumerate(SUMMARIES + others[:1]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(s))
    tables.write_table1(paths, tmp_path / "table1.csv")
    written = {r["run"]: r["paper_top1_at_epoch"] for r in csv.DictReader((tmp_path / "table1.csv").open())}
    assert written["softkd_none_b0_e300_s2"] == "76.9460" and written["spectral_Last1_b0.1_e300_s0"] == ""


def test_a_phase_specific_run_is_compared_with_its_control_paired_by_seed(tmp_path):
    # auto2 against First2 (as many pairs from the first blocks): deltas +1, +2, +3, mean 2, sd 1,
    # half-width t(0.975, 2) / sqrt(3) = 2.484138; plain `auto` with 2 pairs gets the same control.
    extra = []
    for seed, (auto, first) in enumerate([(78.0, 77.0), (79.0, 77.0), (80.0, 77.0)]):
        extra += [dict(_summary("spectral", "auto2", 0.2, 300, seed, auto, auto), pairs=[[0, 0], [3, 6]]),
                  dict(_summary("spectral", "auto", 0.2, 300, seed, auto, auto), pairs=[[0, 0], [3, 6]]),
                  _summary("spectral", "First2", 0.2, 300, seed, first, first)]
    summary = {r["layers"]: r for r in tables.summary_rows(tables.table1_rows(SUMMARIES + extra))}
    for layers in ("auto2", "auto"):
        row = summary[layers]
        assert row["control"] == "First2" and row["control_delta_mean"] == pytest.approx(2.0)
        assert (row["control_ci_low"], row["control_ci_high"]) == pytest.approx((2 - 2.484138, 2 + 2.484138))
    assert "control" not in summary["First2"] and "control" not in summary["Last1"]
    assert tables.control_layers("Last1", 1) is None and tables.control_layers("auto", 0) is None
    out = tmp_path / "table1.csv"
    tables.write_table1(_write(tmp_path, SUMMARIES + extra), out)
    assert "against its control First2 (as many pairs from the first blocks): +2.00 (-0.48 to +4.48)" in \
        out.with_suffix(".md").read_text()


def _write(tmp_path, summaries):
    paths = []
    for i, summary in enumerate(summaries):
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps(summary))
        paths.append(path)
    return paths
