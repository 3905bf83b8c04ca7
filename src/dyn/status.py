"""`dyn status`: every distillation run a results directory knows, in one table, without importing torch.

Read from the files a run leaves (docs/reliability.md, "Watching a run"):
- `runs/<run>/summary.json`: a finished run (top-1, best, images/s); `runs/<run>/log.csv`: the epochs
  done so far of one that is not (written after every epoch);
- `state/<cohort>/progress.json`: a running job's progress (host, pid, when, epoch, step, images/s,
  ETAs, each member's epochs and top-1), beside its resume state `last.pt` (not read: it is torch's);
- `logs/distill/<cohort>.log`: a job's log, whose last error line says why it failed, and whose first
  lines name its students;
- `state/finished/<run>/key.json`: the parts of a kept run's reuse key, compared with this install's
  training code and library versions to say whether a rerun would restore the run or train it again.

A run is finished where its summary.json is; running where its job's progress.json has a live writer
(its pid alive on this host, or written within `status_jobs.STALE_S` on another); failed where its job's log ends
in an error (or its member stopped on a non-finite loss); stopped where a state or progress is left
without a live writer; waiting where only its (empty) run directory is known.
"""
from __future__ import annotations

import csv
import datetime
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .status_jobs import RUN_ID, Job, job_of, jobs, read_json, timestamp
from .training.finished import KEY_FILE, KEY_PARTS_FILE, LIBRARIES, library_versions, training_code_digest

STATES = ("finished", "running", "stopped", "failed", "waiting")
CLEAR = "\033[H\033[2J"


@dataclass
class RunStatus:
    """One row of the table."""

    run: str
    cohort: str = "-"
    state: str = "waiting"
    done: int | None = None          # epochs done
    epochs: int | None = None
    top1: float | None = None        # last epoch's
    best_top1: float | None = None
    best_epoch: int | None = None
    images_per_s: float | None = None
    eta_s: float | None = None       # until the job writes the run's files
    rerun: str = ""                  # a finished run: restores or trains (when its job runs again)
    note: str = ""                   # why; a failed job's error line; a stopped job's last sign of life


def _read_rows(path: Path) -> list[dict]:
    """log.csv's rows, numbers as floats (empty: no rows)."""
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, csv.Error):
        return []
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def rerun_verdict(kept: Path, code: str | None = None, versions: dict | None = None) -> tuple[str, str]:
    """Whether a finished run's job, run again, restores it from its kept copy `kept` or trains it, and why:
    its key.json against this install's training code and libraries. Its configuration cannot be known
    here (it is the workflow config's): a match of the rest restores it if that is unchanged too."""
    code = training_code_digest() if code is None else code
    versions = library_versions() if versions is None else versions
    if not (kept / KEY_FILE).is_file() or not (kept / "summary.json").is_file():
        return "trains", "no kept copy in state/finished/"
    parts = read_json(kept / KEY_PARTS_FILE)
    if parts is None:
        return "trains", "kept under an older key (no key.json)"
    if parts.get("key") != (kept / KEY_FILE).read_text().strip():
        return "trains", "key.json is not its key's"
    if "training_code" not in parts:
        return "trains", "its key's parts were not recorded"
    changed = ["the training code changed"] if parts.get("training_code") != code else []
    changed += [f"{lib} {parts.get(lib)} -> {versions.get(lib)}" for lib in LIBRARIES
                if parts.get(lib) != versions.get(lib)]
    if changed:
        return "trains", "; ".join(changed)
    return "restores", f"if its configuration is unchanged (and on {parts.get('device', '?')})"


def _finished(row: RunStatus, summary: dict, kept: Path, code: str, versions: dict) -> None:
    row.state = "finished"
    row.epochs = summary.get("epochs")
    row.done = row.epochs
    row.top1, row.best_top1 = summary.get("top1"), summary.get("best_top1")
    row.best_epoch, row.images_per_s = summary.get("best_epoch"), summary.get("images_per_second")
    row.rerun, row.note = rerun_verdict(kept, code, versions)


def _unfinished(row: RunStatus, run_dir: Path, cohort: Job | None, now: float) -> None:
    """A run without a summary: its epochs from its job's progress.json, else its live log.csv."""
    rows = _read_rows(run_dir / "log.csv")
    match = RUN_ID.search(row.run)
    row.epochs = int(match.group(1)) if match else None
    if rows:
        best = max(rows, key=lambda r: r.get("top1") if isinstance(r.get("top1"), float) else -1.0)
        row.done, row.top1 = int(rows[-1].get("epoch", len(rows))), rows[-1].get("top1")
        row.best_top1, row.best_epoch = best.get("top1"), int(best.get("epoch", 0)) or None
        row.images_per_s = rows[-1].get("images_per_s")
    progress = cohort.progress if cohort is not None else None
    member = ((progress or {}).get("members") or {}).get(row.run)
    if member:
        row.done, row.epochs = member.get("done", row.done), member.get("epochs", row.epochs)
        row.top1 = member.get("last_top1", row.top1)
        row.best_top1, row.best_epoch = member.get("best_top1", row.best_top1), member.get("best_epoch", row.best_epoch)
        row.images_per_s = progress.get("images_per_s", row.images_per_s)
    if cohort is None:
        row.state = "stopped" if rows else "waiting"
        row.note = "no job state or log" if rows else ""
        return
    if cohort.live:
        row.state = "running"
        if member and member.get("stopped"):
            row.state, row.note = "failed", f"stopped: {member['stopped']}"
        elif progress is not None and progress.get("eta_job_s") is not None:
            age = max(0.0, now - (timestamp(progress.get("updated")) or now))
            row.eta_s = max(0.0, float(progress["eta_job_s"]) - age)
        elif rows and row.done is not None and row.epochs is not None:  # no progress.json: from the epochs' times
            row.eta_s = (row.epochs - row.done) * float(rows[-1].get("seconds") or 0.0)
        if row.state == "running" and row.done is not None and row.done == row.epochs:
            row.note = "trained: written when its job ends"
    elif cohort.error is not None:
        row.state, row.note = "failed", cohort.error
    elif cohort.has_state or progress is not None or rows or cohort.ended:
        row.state = "stopped"
        if member and member.get("stopped"):
            row.note = f"stopped: {member['stopped']}"
        elif cohort.ended:
            row.note = cohort.ended
        elif progress is not None:
            updated = timestamp(progress.get("updated"))
            ago = f"{_duration(now - updated)} ago" if updated is not None else "at an unknown time"
            row.note = f"no live writer: last update {ago} on {progress.get('host', '?')}"
        else:
            row.note = "no live writer"


def status(results: str | Path = "results", now: float | None = None) -> list[RunStatus]:
    """Every run `results` knows, sorted by cohort then run id (numbers by value); UserError where
    `results` is not a folder."""
    results = Path(results)
    if not results.is_dir():
        raise UserError(f"results directory '{results}' does not exist: give the folder the workflow writes "
                        f"(runs/, state/, logs/ in it)")
    now = time.time() if now is None else now
    cohorts = jobs(results, now)
    runs_dir = results / "runs"
    runs = {d.name for d in runs_dir.iterdir() if d.is_dir()} if runs_dir.is_dir() else set()
    runs |= {m for c in cohorts.values() for m in c.members}
    code, versions = training_code_digest(), library_versions()
    rows = []
    for run in runs:
        cohort = job_of(run, cohorts)
        row = RunStatus(run, cohort.name if cohort is not None else "-")
        summary = read_json(runs_dir / run / "summary.json")
        if summary is not None:
            _finished(row, summary, results / "state" / "finished" / run, code, versions)
        else:
            _unfinished(row, runs_dir / run, cohort, now)
        rows.append(row)
    named = {row.cohort for row in rows}
    for cohort in cohorts.values():  # a job that failed before naming any student
        if cohort.name not in named and cohort.error is not None:
            rows.append(RunStatus("-", cohort.name, "failed", note=cohort.error))
    return sorted(rows, key=lambda row: (_natural(row.cohort), _natural(row.run)))


def _natural(name: str) -> list:
    """A sort key that puts e2 before e10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _cells(row: RunStatus) -> list[str]:
    def number(value, digits=2):
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    epoch = f"{row.done if row.done is not None else '-'}/{row.epochs if row.epochs is not None else '?'}"
    best = number(row.best_top1) + (f" @{row.best_epoch}" if row.best_epoch and row.best_top1 is not None else "")
    return [row.run, row.cohort, epoch, number(row.top1), best, number(row.images_per_s, 0), row.state,
            _duration(row.eta_s) if row.state == "running" else "-", row.rerun or "-", row.note]


HEADER = ["run", "cohort", "epoch", "top1", "best", "img/s", "state", "eta", "rerun", "note"]
_RIGHT = {2, 3, 4, 5, 7}


def table(rows: list[RunStatus]) -> str:
    """The rows as aligned plain text, and a line of totals."""
    cells = [HEADER] + [_cells(row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADER) - 1)]
    lines = ["  ".join([*(c.rjust(w) if i in _RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))),
                        r[-1]]).rstrip() for r in cells]
    counts = {state: sum(row.state == state for row in rows) for state in STATES}
    runs = sum(row.run != "-" for row in rows)
    total = f"{runs} run{'s' if runs != 1 else ''}: " + ", ".join(
        f"{counts[state]} {state}" for state in STATES if state != "waiting" or counts[state])
    return "\n".join(lines + [total])


def watch(results: str | Path, every: float | None = None, count: int | None = None, out=None) -> None:
    """Print the table of `results`; with `every`, clear the screen and print it again every `every`
    seconds (`count` times, or until interrupted)."""
    out = out or sys.stdout
    shown = 0
    while True:
        text = table(status(results))
        if every is None:
            out.write(text + "\n")
            return
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        out.write(f"{CLEAR}{text}\n{stamp}, every {every:g} s (Ctrl-C to stop)\n")
        out.flush()
        shown += 1
        if count is not None and shown >= count:
            return
        time.sleep(every)
