"""What a distillation job's files say, for `dyn status` (no torch): its progress.json and whether a process
still writes it, its log's students and its error line, and which job a run belongs to."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

STALE_S = 600          # a progress.json from another host older than this has no live writer
HEAD_BYTES = 256_000   # of a job's log: where its students are named
TAIL_BYTES = 64_000    # of a job's log: where its error is
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # a line of dyn's log (it starts with the time)
RUN_ID = re.compile(r"_e(\d+)_s(-?\d+)$")
# The log lines that name a student (after the level name): `run <id>: <student> <- <teacher>`, `<id>: reused
# from`, `resumed from`, `epoch e/E`, `stopped:` (not the job's `progress <job>: ...` lines).
_MEMBER_LINE = re.compile(r"(?:INFO|WARNING|ERROR) (?:run )?([A-Za-z0-9_.+\-]+_e\d+_s-?\d+): "
                          r"(?:\S+ <- |reused from |resumed from |epoch \d+/\d+|stopped: )")


@dataclass
class Job:
    """A distillation job (a cohort, or one run) as its files show it."""

    name: str
    progress: dict | None = None
    has_state: bool = False
    members: tuple[str, ...] = ()
    live: bool = False
    error: str | None = None         # the log's error line
    ended: str | None = None         # how the log ends otherwise (aborted)
    changed: float = 0.0             # the latest change of its progress or log


def read_json(path: Path) -> dict | None:
    """A JSON object file, or None where it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def timestamp(value) -> float | None:
    """An ISO-8601 time (UTC where it names no zone) as seconds since the epoch."""
    try:
        when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _live(progress: dict, now: float) -> bool:
    """Whether a progress.json has a writer: its pid alive on this host, or written within STALE_S elsewhere."""
    pid = progress.get("pid")
    if progress.get("host") == platform.node() and isinstance(pid, int):
        return _pid_alive(pid)
    updated = timestamp(progress.get("updated"))
    return updated is not None and now - updated < STALE_S


def _read_ends(path: Path) -> tuple[str, str]:
    """The first HEAD_BYTES and the last TAIL_BYTES of a log, as text."""
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
        tail = head[-TAIL_BYTES:]
        if file.seek(0, os.SEEK_END) > HEAD_BYTES:
            file.seek(-TAIL_BYTES, os.SEEK_END)
            tail = file.read()
    return head.decode(errors="replace"), tail.decode(errors="replace")


def error_line(lines: list[str]) -> str | None:
    """Why a job failed, from its log's last lines: its last `dyn: error: ...` line (a mistake, a diverged
    run), else the exception line of a Python traceback that ends the log (no log line after it); None
    where neither is there."""
    for line in reversed(lines):
        if line.startswith("dyn: error:"):
            return line.strip()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts or any(_LOG_LINE.match(line) for line in lines[starts[-1]:]):  # the job went on after it
        return None
    after = [line for line in lines[starts[-1] + 1:] if line.strip() and not line[:1].isspace()]
    return after[0].strip() if after else lines[starts[-1]].strip()


def _job(results: Path, name: str, now: float) -> Job:
    state, log = results / "state" / name, results / "logs" / "distill" / f"{name}.log"
    cohort = Job(name, progress=read_json(state / "progress.json"), has_state=(state / "last.pt").is_file())
    members: list[str] = []
    if cohort.progress is not None:
        members = list(cohort.progress.get("members") or {})
        cohort.live = _live(cohort.progress, now)
        cohort.changed = timestamp(cohort.progress.get("updated")) or 0.0
    if log.is_file():
        head, tail = _read_ends(log)
        members += [m for m in dict.fromkeys(_MEMBER_LINE.findall(head)) if m not in members]
        lines = [line for line in tail.splitlines() if line.strip()]
        if not cohort.live:
            cohort.error = error_line(lines)
            if cohort.error is None and lines and lines[-1].startswith("dyn: aborted"):
                cohort.ended = "aborted (Ctrl-C)"
            # No progress.json (a job of a dyn without it): a log written to lately is a live job's.
            if cohort.progress is None and cohort.error is None and cohort.ended is None:
                cohort.live = now - log.stat().st_mtime < STALE_S
        cohort.changed = max(cohort.changed, log.stat().st_mtime)
    cohort.members = tuple(members)
    return cohort


def jobs(results: Path, now: float) -> dict[str, Job]:
    names = set()
    if (results / "state").is_dir():
        # state/finished: the kept runs; state/fetch: the teachers' training (`dyn fetch`)
        names |= {d.name for d in (results / "state").iterdir() if d.is_dir() and d.name not in ("finished", "fetch")}
    if (results / "logs" / "distill").is_dir():
        names |= {p.stem for p in (results / "logs" / "distill").glob("*.log")}
    return {name: _job(results, name, now) for name in sorted(names)}


def job_of(run: str, cohorts: dict[str, Job]) -> Job | None:
    """The job of `run`: one that names it (the live one, else the latest), else one named after it
    (`distill.cohort`'s ids: the run's own, cohort_e<E>_s<S>, cohort_s<S>, each maybe split _KofN)."""
    naming = [c for c in cohorts.values() if run in c.members]
    if naming:
        return max(naming, key=lambda c: (c.live, c.changed))
    match = RUN_ID.search(run)
    if match is None:
        return cohorts.get(run)
    epochs, seed = match.groups()
    for prefix in (run, f"cohort_e{epochs}_s{seed}", f"cohort_s{seed}"):
        if prefix in cohorts:
            return cohorts[prefix]
        split = [c for name, c in cohorts.items() if re.fullmatch(re.escape(prefix) + r"_\d+of\d+", name)]
        if len(split) == 1:
            return split[0]
    return None
