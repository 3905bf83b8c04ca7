"""Table 1: one row per distillation run, and one row per grid point over seeds with a paired interval.

`table1.csv`: each run's final and best top-1, their change against SoftKD at the same epochs and
seed, and, where the run's setup is one the authors published a log of, their top-1 at the run's final
epoch (`paper_top1_at_epoch`; `dyn.paper`). `table1_summary.csv`: per (method, layers, beta, epochs),
the mean and sd over seeds and the mean change against SoftKD, paired by seed, with a 95% Student-t
interval over the paired differences (NaN with one seed). `table1.md` renders the summary, beside the
paper's value where the setup is the paper's.
"""
from __future__ import annotations

import csv
import io
import math
import re
import statistics
from pathlib import Path

from ..files import read_json
from ..paper import paper_curve, setup_of
from ..atomic import write_text
from ..training.methods import METHODS

COLUMNS = ("run", "method", "layers", "beta", "epochs", "seed", "top1", "top5", "best_top1", "delta_top1",
           "best_delta_top1", "paper_top1_at_epoch")
SUMMARY_COLUMNS = ("method", "layers", "beta", "epochs", "n_seeds", "top1_mean", "top1_sd", "delta_mean",
                   "delta_ci_low", "delta_ci_high", "best_top1_mean", "best_delta_mean", "control",
                   "control_delta_mean", "control_ci_low", "control_ci_high")
# The paper's Table 1 (CaiT-S24 -> DeiT-Tiny, ImageNet-1k): the best epoch's top-1 of each run, as in
# the authors' published logs (github.com/thy960112/Distillation-Dynamics, Distillation_Logs), which
# match the paper's printed values; Last8 and Last1 at beta 0.1 from the paper's text (no log published).
PAPER = {"teacher": "cait_s24_224", "student": "deit_tiny_patch16_224"}
PAPER_TOP1 = {
    ("softkd", "none", 0.0, 300): 76.99, ("softkd", "none", 0.0, 500): 78.07,
    ("spectral", "First1", 0.2, 300): 77.00, ("spectral", "First1+Last1", 0.2, 300): 77.08,
    ("spectral", "Last1", 0.2, 300): 76.83, ("spectral", "Last8", 0.2, 300): 76.69,
    ("spectral", "Last1", 0.2, 500): 77.59, ("spectral", "Last1", 0.1, 300): 76.48,
    ("projector", "First1", 0.2, 300): 76.87, ("projector", "Last1", 0.2, 300): 76.72,
    ("projector", "First1+Last1", 0.2, 300): 76.80,
}


def _order(row: dict) -> tuple:
    return row["epochs"], list(METHODS).index(row["method"]), row["layers"], row["beta"], row.get("seed", 0)


def table1_rows(summaries: list[dict]) -> list[dict]:
    """One row per run, with `delta_top1` and `best_delta_top1` against SoftKD at the same epochs and
    seed (or, where that seed has no SoftKD run, SoftKD's mean over seeds at those epochs)."""
    rows = [{key: summary[key] for key in COLUMNS if key in summary} for summary in summaries]
    for row, summary in zip(rows, summaries):
        row["paper_top1_at_epoch"] = paper_top1_at_epoch(summary)
        row["n_pairs"] = len(summary.get("pairs") or [])  # an `auto` run's control aligns as many
    for row in rows:
        for value, delta in (("top1", "delta_top1"), ("best_top1", "best_delta_top1")):
            reference = _softkd_reference(rows, row["epochs"], row["seed"], value)
            row[delta] = None if reference is None else row[value] - reference
    return sorted(rows, key=_order)


def paper_top1_at_epoch(summary: dict) -> float | None:
    """The authors' top-1 (%) at the run's final epoch where the run's setup (teacher and student archs,
    method, layers, beta, epochs) is one they published a log of, else None. Their log counts epochs
    from 0, ours from 1: our epoch E is their epoch E - 1."""
    curve = paper_curve(**setup_of(summary))
    final = int(summary["epochs"])
    return next((row["test_acc1"] for row in curve or [] if row["epoch"] == final - 1), None)


def _softkd_reference(rows: list[dict], epochs: int, seed: int, value: str) -> float | None:
    softkd = [r for r in rows if r["method"] == "softkd" and r["epochs"] == epochs]
    exact = [r[value] for r in softkd if r["seed"] == seed]
    if exact:
        return exact[0]
    return statistics.fmean(r[value] for r in softkd) if softkd else None


def paired_delta(runs: list[dict], reference: dict[int, dict], value: str = "top1") -> tuple[float, float, float]:
    """(mean, 95% Student-t interval) over seeds of a run's `value` minus the reference run's of the same
    seed; NaN where no seed pairs (the interval also with one)."""
    from scipy import stats

    deltas = [r[value] - reference[r["seed"]][value] for r in runs if r["seed"] in reference]
    if not deltas:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(deltas)
    if len(deltas) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(deltas) - 1) * statistics.stdev(deltas) / math.sqrt(len(deltas))
    return mean, mean - half, mean + half


def control_layers(layers: str, n_pairs: int) -> str | None:
    """The control of a phase-specific run: `autoK` (or `auto` with K pairs) against `FirstK`, as many
    aligned pairs from the first blocks, so that the phase and the number of pairs can be told apart."""
    match = re.fullmatch(r"auto([1-9][0-9]*)?", layers)
    if match is None or not (match.group(1) or n_pairs):
        return None
    return f"First{match.group(1) or n_pairs}"


def summary_rows(rows: list[dict]) -> list[dict]:
    """One row per grid point (method, layers, beta, epochs) over its seeds; the deltas are paired by seed
    with SoftKD at the same epochs, the interval a 95% Student-t interval of their mean. A phase-specific
    (`auto`) row is also compared, paired by seed, with its control (`control_layers`) where the grid has it."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["layers"], row["beta"], row["epochs"]), []).append(row)
    out = []
    for (method, layers, beta, epochs), runs in groups.items():
        softkd = {r["seed"]: r for r in rows if r["method"] == "softkd" and r["epochs"] == epochs}
        delta, low, high = paired_delta(runs, softkd)
        top1 = [r["top1"] for r in runs]
        row = {"method": method, "layers": layers, "beta": beta, "epochs": epochs, "n_seeds": len(runs),
               "top1_mean": statistics.fmean(top1), "top1_sd": statistics.stdev(top1) if len(top1) > 1 else math.nan,
               "delta_mean": delta, "delta_ci_low": low, "delta_ci_high": high,
               "best_top1_mean": statistics.fmean(r["best_top1"] for r in runs),
               "best_delta_mean": paired_delta(runs, softkd, "best_top1")[0]}
        control = control_layers(layers, max(r.get("n_pairs", 0) for r in runs))
        controls = {r["seed"]: r for r in groups.get((method, control, beta, epochs), [])}
        if controls:
            row["control"] = control
            row["control_delta_mean"], row["control_ci_low"], row["control_ci_high"] = paired_delta(runs, controls)
        out.append(row)
    return sorted(out, key=_order)


def _csv(rows: list[dict], columns: tuple) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(key, row.get(key)) for key in columns})
    return buffer.getvalue()


def _cell(key: str, value) -> str:
    """Accuracies to 4 decimals, NaN as `nan`, nothing for a missing value; the grid's own values as given."""
    if value is None:
        return ""
    if isinstance(value, float) and key != "beta":
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown(summary: list[dict], teacher: str | None, student: str | None) -> str:
    """The summary as a Markdown table for people, with the paper's value beside each row where the
    teacher, student and epochs are the paper's."""
    paper = teacher == PAPER["teacher"] and student == PAPER["student"]
    head = ["method", "layers", "beta", "epochs", "seeds", "top-1 (mean ± sd)", "Δ vs SoftKD, paired (95% CI)",
            "best top-1 (mean)"] + (["paper (best epoch)"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in summary:
        ci = "" if math.isnan(r["delta_ci_low"]) else f" ({r['delta_ci_low']:+.2f} to {r['delta_ci_high']:+.2f})"
        sd = "" if math.isnan(r["top1_sd"]) else f" ± {r['top1_sd']:.2f}"
        cells = [r["method"], r["layers"], f"{r['beta']:g}", str(r["epochs"]), str(r["n_seeds"]),
                 f"{r['top1_mean']:.2f}{sd}", f"{r['delta_mean']:+.2f}{ci}", f"{r['best_top1_mean']:.2f}"]
        if paper:
            value = PAPER_TOP1.get((r["method"], r["layers"], float(r["beta"]), r["epochs"]))
            cells.append("-" if value is None else f"{value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Δ: top-1 minus SoftKD's at the same epochs, paired by seed; the interval is a 95% Student-t interval "
            "of the mean over seeds (none with one seed). An interval that contains 0 does not separate the run "
            "from SoftKD.")
    controls = [f"- {r['method']} {r['layers']} b{r['beta']:g}, {r['epochs']} epochs, against its control "
                f"{r['control']} (as many pairs from the first blocks): {_signed(r, 'control')}"
                for r in summary if r.get("control")]
    if controls:
        note += "\n\nPhase-specific runs against their controls, paired by seed:\n\n" + "\n".join(controls)
    return f"Teacher {teacher}, student {student}.\n\n" + "\n".join(lines) + "\n\n" + note + "\n"


def _signed(row: dict, prefix: str) -> str:
    mean, low, high = (row[f"{prefix}_{k}"] for k in ("delta_mean", "ci_low", "ci_high"))
    return f"{mean:+.2f}" + ("" if math.isnan(low) else f" ({low:+.2f} to {high:+.2f})")


def write_table1(summary_paths: list[str | Path], out: str | Path) -> list[dict]:
    """`dyn report table`: `out` (table1.csv), and beside it table1_summary.csv and table1.md."""
    summaries = [read_json(p, "run summary", ("run", "method", "layers", "beta", "epochs", "seed", "top1", "top5",
                                               "best_top1")) for p in summary_paths]
    rows = table1_rows(summaries)
    summary = summary_rows(rows)
    out = Path(out)
    write_text(out, _csv(rows, COLUMNS))
    write_text(out.with_name(f"{out.stem}_summary.csv"), _csv(summary, SUMMARY_COLUMNS))
    teacher, student = (summaries[0].get(k) if summaries else None for k in ("teacher", "student"))
    write_text(out.with_suffix(".md"), markdown(summary, teacher, student))
    return rows
