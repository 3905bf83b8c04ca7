"""After a failed Snakemake run: the one-line errors of the jobs that failed on a user's mistake.

A `dyn` command that meets a mistake it can name ends its log with one line `dyn: error: ...`. The
Snakefile's `onerror` handler repeats those lines last, so that `snakemake` ends as `dyn` does.
"""
from __future__ import annotations

import re
from pathlib import Path

_LOG_LINE = re.compile(r"^\s+log: (.+?) \(check log file\(s\) for error details\)\s*$")


def failed_job_logs(snakemake_log: str | Path) -> list[Path]:
    """The log files of the jobs a Snakemake log reports as failed, in order."""
    logs: list[Path] = []
    for line in Path(snakemake_log).read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match:
            logs += [Path(part.strip()) for part in match.group(1).split(",") if part.strip()]
    return list(dict.fromkeys(logs))


def user_errors(snakemake_log: str | Path) -> list[str]:
    """`dyn: error: <message> (<job log>)` for each failed job whose log ends with a dyn error line."""
    found = []
    for job_log in failed_job_logs(snakemake_log):
        try:
            lines = [line for line in job_log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            continue
        if lines and lines[-1].startswith("dyn: error: "):
            found.append(f"{lines[-1]} ({job_log})")
    return found
