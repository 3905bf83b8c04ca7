"""numba kernels, compiled once and cached on disk, shared by the metric and chunk code."""
from __future__ import annotations

import warnings

import numpy as np

from numba import njit, types
from numba.extending import overload


def kernel(function):
    """numba.njit without the GIL (callers run kernels in threads) and with numpy's error model (a
    float division by zero gives inf rather than a Python-style check per value, which blocks SIMD).

    Cached on disk (next to the module, or in the user's cache dir where that is read-only, or in
    NUMBA_CACHE_DIR) so that each process need not compile.
    """
    options = dict(nogil=True, error_model="numpy")
    try:
        return njit(cache=True, **options)(function)
    except RuntimeError:  # numba found no writable cache dir: compile in every process instead
        warnings.warn(f"numba finds no writable cache dir for {function.__module__}, so each process compiles "
                      "its kernels (seconds): set NUMBA_CACHE_DIR to a writable directory", RuntimeWarning)
        return njit(**options)(function)


def as_float_of(value, like):
    """value in the float type of `like`, for kernels that must stay in float32 on float32 input (in
    numba a float literal is float64, and float32 * int is float64; numpy 2 keeps float32)."""
    return type(like)(value)


@overload(as_float_of)
def _as_float_of_numba(value, like):
    if like == types.float32:
        return lambda value, like: np.float32(value)
    return lambda value, like: np.float64(value)
