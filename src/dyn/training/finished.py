"""Finished runs kept for reuse: a run asked for again with the same configuration, code and libraries
is restored from its kept files instead of trained again.

Snakemake deletes all outputs of a job before it reruns it. A cohort job reruns when a run is added to
its grid, so without this every finished student of the cohort would train again. Each finished run's
files are kept (hard-linked where the filesystem allows, so they take no extra space) under
`<store>/<run id>/`, with the key they were trained under written last. The key covers what decides
the result: the run's configuration fingerprint (method, layers, beta, epochs, seed, teacher checkpoint
hash, dataset, recipe, snapshots, process count), the dyn package's source, the torch, timm and numpy
versions and the device type. Where all of these are equal, training again on the CPU gives the same
bytes, and on a GPU another draw of the same nondeterministic run.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy
import timm
import torch

from ..workflow.atomic import atomic_path, write_text
from .state import fingerprint_of

log = logging.getLogger("dyn")
KEY_FILE = "key"


@functools.cache
def _source_digest() -> str:
    """A digest of the dyn package's Python sources: any change to the code gives another key."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def reuse_key(fingerprint: str, device_type: str) -> str:
    """The key a finished run is kept under: its configuration's fingerprint, the code, the libraries, the device."""
    return fingerprint_of(fingerprint, _source_digest(), torch.__version__, timm.__version__, numpy.__version__,
                          device_type)


def is_kept(store: Path, run_id: str, key: str) -> bool:
    """Whether `run_id` finished before under `key` (its files complete: the key is written last)."""
    kept = Path(store) / run_id
    return (kept / KEY_FILE).is_file() and (kept / KEY_FILE).read_text().strip() == key and (
        kept / "summary.json").is_file()


def restore(store: Path, run_id: str, out_dir: Path) -> None:
    """Write the kept files of `run_id` into its run directory, summary.json last (a summary means complete)."""
    kept = Path(store) / run_id
    names = [p.name for p in kept.iterdir() if p.is_file() and p.name != KEY_FILE]
    for name in sorted(names, key=lambda name: (name == "summary.json", name)):
        with atomic_path(Path(out_dir) / name) as tmp:
            shutil.copyfile(kept / name, tmp)  # a copy: new files, newer than the job's inputs
    log.info("%s: reused from %s (finished before with the same configuration, code and libraries; delete that "
             "folder to train it again)", run_id, kept)


def keep(store: Path, run_id: str, key: str, out_dir: Path) -> None:
    """Keep a finished run's files under `<store>/<run id>/`, its key written last."""
    kept = Path(store) / run_id
    if kept.exists():
        shutil.rmtree(kept)
    kept.mkdir(parents=True)
    for path in Path(out_dir).iterdir():
        if path.is_file() and not path.name.startswith("."):  # not a temporary file a killed writer left
            try:
                os.link(path, kept / path.name)  # the run's files are never changed in place: links are safe
            except OSError:  # another filesystem, or one without hard links
                shutil.copyfile(path, kept / path.name)
    write_text(kept / KEY_FILE, key + "\n")
