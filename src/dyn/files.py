"""Reading the files the workflow writes: one line, naming the file, when one is missing, damaged
or of another kind, instead of a traceback from deep in a library."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .errors import UserError

# what each kind of file is called in messages, and what writes it
WRITERS = {"capture file": "dyn capture", "entropy file": "dyn metrics entropy",
           "magnitude file": "dyn metrics magnitude", "spectrum file": "dyn metrics spectrum",
           "phases file": "dyn metrics phases", "evolution file": "dyn distill", "run summary": "dyn distill"}


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name where it has none)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def unreadable(path: str | os.PathLike, what: str, error: BaseException) -> UserError:
    """The one-line error for a file that exists but cannot be read as `what`."""
    return UserError(f"cannot read {what} {path}: {first_line(error)} (empty, truncated or not a file "
                     f"{WRITERS.get(what, 'dyn')} writes?)")


def _existing(path: str | os.PathLike, what: str) -> Path:
    if not Path(path).is_file():
        raise UserError(f"{what} not found: {path}")
    return Path(path)


def load_netcdf(path: str | os.PathLike, what: str, variables: Sequence[str] = (),
                dims: Sequence[str] | None = None):
    """A (small) NetCDF file loaded whole with xarray, holding `variables` (over `dims` if given)."""
    import xarray as xr

    path = _existing(path, what)
    try:
        ds = xr.load_dataset(path)
    except Exception as error:  # the backends' many ways of saying the bytes are not NetCDF
        raise unreadable(path, what, error) from None
    for name in variables:
        if name not in ds or (dims is not None and tuple(ds[name].dims) != tuple(dims)):
            over = f" over ({', '.join(dims)})" if dims is not None else ""
            raise UserError(f"{path} has no variable '{name}'{over}: not a {what} ({WRITERS.get(what, 'dyn')} "
                            "writes them)")
    return ds


def read_json(path: str | os.PathLike, what: str, keys: Sequence[str] = ()) -> dict:
    """A JSON object holding `keys`."""
    path = _existing(path, what)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise unreadable(path, what, error) from None
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise UserError(f"{what} {path} lacks {', '.join(missing)}: not a {what} ({WRITERS.get(what, 'dyn')} "
                        "writes them)")
    return data


def weights_kind(weights: str) -> str:
    """What a `weights` value names: 'train', 'hub', 'url' or 'path'."""
    if weights in ("train", "hub"):
        return weights
    if weights.startswith(("http://", "https://")):
        return "url"
    return "path"
