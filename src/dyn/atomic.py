"""Atomic writes: write under a temporary name in the target's folder, rename when complete.

A reader (or Snakemake after a crash) never sees a half-written file under the target's name. The
file gets the permissions a plain `open()` would give it under the user's umask (mkstemp alone makes
it 0600, unreadable to colleagues on a shared cluster). They are set on the finished file just before
the rename, whoever wrote it: some writers replace the temporary file with one of their own (safetensors
0.8 writes its own temporary file, mode 0600, and renames it over the path it is given).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer killed with -9
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mode = 0o666 & ~_umask()
    os.fchmod(fd, mode)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # the writer may have replaced the file (a new inode, mode 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
