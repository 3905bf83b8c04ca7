"""Table 1: one row per distillation run, with the top-1 change against SoftKD at the same schedule."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..workflow.atomic import write_text
from ..workflow.runs import METHODS

COLUMNS = ("run", "method", "layers", "beta", "epochs", "seed", "top1", "top5", "best_top1", "delta_top1")


def _softkd_reference(rows: list[dict], epochs: int, seed: int) -> float | None:
    """SoftKD's top-1 at the same epochs and seed, else its mean over seeds at those epochs."""
    same = [r["top1"] for r in rows if r["method"] == "softkd" and r["epochs"] == epochs]
    exact = [r["top1"] for r in rows if r["method"] == "softkd" and r["epochs"] == epochs and r["seed"] == seed]
    if exact:
        return exact[0]
    return sum(same) / len(same) if same else None


def table1_rows(summaries: list[dict]) -> list[dict]:
    rows = [{key: summary[key] for key in COLUMNS if key in summary} for summary in summaries]
    for row in rows:
        reference = _softkd_reference(rows, row["epochs"], row["seed"])
        row["delta_top1"] = None if reference is None else row["top1"] - reference
    order = {method: i for i, method in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["epochs"], order[r["method"]], r["layers"], r["beta"], r["seed"]))


def write_table1(summary_paths: list[str | Path], out: str | Path) -> list[dict]:
    rows = table1_rows([json.loads(Path(p).read_text()) for p in summary_paths])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k in ("top1", "top5", "best_top1", "delta_top1")
                             else ("" if v is None else v)) for k, v in row.items()})
    write_text(out, buffer.getvalue())
    return rows
