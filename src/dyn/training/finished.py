"""Finished runs kept for reuse: a run asked for again with the same configuration, training code and
libraries is restored from its kept files instead of trained again.

Snakemake deletes all outputs of a job before it reruns it. A cohort job reruns when a run is added to
its grid, so without this every finished student of the cohort would train again. Each finished run's
files are kept (hard-linked where the filesystem allows, so they take no extra space) under
`<store>/<run id>/`, with the key they were trained under written last (`key`) and its parts beside it
(`key.json`, which `dyn status` reads to say why a run would train again). The key covers what decides
the result: the run's configuration fingerprint (method, layers, beta, epochs, seed, teacher checkpoint
hash, dataset, recipe, snapshots, process count), the training code (`TRAINING_CODE`: the modules a
student's bytes depend on, not the whole package, so that a fix to a figure, the analysis, the CLI or
`dyn status` does not retrain days of GPU work), the torch, timm and numpy versions and the device
type. Where all of these are equal, training again on the CPU gives the same bytes, and on a GPU another
draw of the same nondeterministic run.

This module imports no torch: `dyn status` reads the key's parts through it.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

from ..atomic import atomic_path, write_text

log = logging.getLogger("dyn")
KEY_FILE = "key"
KEY_PARTS_FILE = "key.json"
PACKAGE = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "timm", "numpy")

# The training code: the modules (relative to the dyn package) whose change can change a student's
# bytes. Everything else (report, analysis-only modules, phases, nulls, capture, the CLI, status, the
# workflow's config and GPU slots; fetch too: a teacher's bytes are in the fingerprint, its sha256) keeps
# the key. tests/test_train.py checks that every dyn module the training imports is here or in
# NOT_TRAINING_CODE.
TRAINING_CODE = {
    "training/distill.py": "the cohort's setup: teacher, students, translators, what a run directory holds",
    "training/loop.py": "the epoch: steps, non-finite checks, resume",
    "training/precision.py": "autocast and the float16 gradient scaler",
    "training/evaluation.py": "validation top-1/top-5 and loss (which epoch is best)",
    "training/task.py": "the distillation task: which maps meet which, with what loss",
    "training/losses.py": "the feature losses",
    "training/methods.py": "the method registry: what each method aligns, its loss, translator and options",
    "training/translators.py": "the pca translator's estimate from training images",
    "training/recipe.py": "optimiser, scheduler, recipe defaults",
    "training/batches.py": "the batches: order, sharding, repeated augmentation",
    "training/rng.py": "each student's and the data's random streams",
    "training/distributed.py": "DDP: devices, gradient and metric all-reduce",
    "training/state.py": "the resume state a continued run starts from",
    "training/evolution.py": "the entropy snapshots in evolution.nc",
    "models.py": "the architectures (tiny ones defined here), checkpoint reading, feature maps",
    "factories.py": "a user's package.module:function models, built and loaded",
    "hooks.py": "layers picked by module name: which modules, their outputs as maps",
    "data.py": "datasets, splits, transforms, the snapshot images",
    "timm_datasets.py": "timm's datasets by name (folder, hfds/, wds/, tfds/): splits, labels, class maps",
    "grid/layers.py": "layer specs -> aligned block pairs",
    "grid/runs.py": "run specs: method, layers, beta, epochs, seed, the method's options",
    "analysis/metrics.py": "the snapshots' entropy and magnitude",
    "analysis/controls.py": "imported by metrics (channel-order controls)",
}
# Imported on the training path, but cannot change what a student learns.
NOT_TRAINING_CODE = {
    "__init__.py": "the version string, recorded in summary.json",
    "errors.py": "error types",
    "files.py": "error messages of unreadable files",
    "atomic.py": "how files are written, not what",
    "devices.py": "which device: the key has the device type of its own",
    "grid/__init__.py": "the grid package's docstring",
    "training/finished.py": "this key",
    "training/watch.py": "what a running job shows: progress lines, progress.json, live run files, TensorBoard",
    "analysis/phases.py": "reads an `auto` spec's bottleneck: the pairs it gives are in the fingerprint",
}


def training_code_digest(package: Path | None = None) -> str:
    """A digest of the training code (`TRAINING_CODE` under `package`, the installed dyn by default): a
    change to any of these files gives another key, a change anywhere else does not. Read afresh each call
    (`dyn status --watch`)."""
    digest = hashlib.sha256()
    for name in sorted(TRAINING_CODE):
        path = Path(package or PACKAGE) / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>") + b"\0")
    return digest.hexdigest()


_VERSION_LINE = re.compile(r"""^(?:__version__|version)\s*(?::\s*str)?\s*=\s*['"]([^'"]+)['"]""", re.MULTILINE)


def _version(name: str) -> str | None:
    """`name.__version__` without importing it: its version.py's (torch's holds the build, `2.5.1+cu124`,
    which its distribution's metadata lacks), else its metadata's."""
    with contextlib.suppress(ImportError, ValueError, OSError, TypeError, IndexError, AttributeError):
        folder = importlib.util.find_spec(name).submodule_search_locations[0]
        found = _VERSION_LINE.search((Path(folder) / "version.py").read_text())
        if found:
            return found.group(1)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return getattr(sys.modules.get(name), "__version__", None)


def library_versions() -> dict[str, str | None]:
    """The installed torch, timm and numpy versions (their `__version__`), read without importing them."""
    return {name: _version(name) for name in LIBRARIES}


class Key(str):
    """A reuse key that carries its parts (`parts`), written beside it as key.json."""

    parts: dict


def reuse_key(fingerprint: str, device_type: str) -> str:
    """The key a finished run is kept under: its configuration's fingerprint, the training code, the
    libraries, the device type."""
    from .state import fingerprint_of

    parts = {"fingerprint": fingerprint, "training_code": training_code_digest(), **library_versions(),
             "device": device_type}
    key = Key(fingerprint_of(*parts.values()))
    key.parts = parts
    return key


def is_kept(store: Path, run_id: str, key: str) -> bool:
    """Whether `run_id` finished before under `key` (its files complete: the key is written last)."""
    kept = Path(store) / run_id
    return (kept / KEY_FILE).is_file() and (kept / KEY_FILE).read_text().strip() == key and (
        kept / "summary.json").is_file()


def restore(store: Path, run_id: str, out_dir: Path) -> None:
    """Write the kept files of `run_id` into its run directory, summary.json last (a summary means complete)."""
    kept = Path(store) / run_id
    names = [p.name for p in kept.iterdir() if p.is_file() and p.name not in (KEY_FILE, KEY_PARTS_FILE)]
    for name in sorted(names, key=lambda name: (name == "summary.json", name)):
        with atomic_path(Path(out_dir) / name) as tmp:
            shutil.copyfile(kept / name, tmp)  # a copy: new files, newer than the job's inputs
    log.info("%s: reused from %s (finished before with the same configuration, training code and libraries; "
             "delete that folder to train it again)", run_id, kept)


def keep(store: Path, run_id: str, key: str, out_dir: Path) -> None:
    """Keep a finished run's files under `<store>/<run id>/`, the key's parts (key.json) beside them and
    its key written last."""
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
    parts = getattr(key, "parts", None)  # a key from reuse_key carries them
    write_text(kept / KEY_PARTS_FILE, json.dumps({"key": str(key), **(parts or {})}, indent=1) + "\n")
    write_text(kept / KEY_FILE, key + "\n")
