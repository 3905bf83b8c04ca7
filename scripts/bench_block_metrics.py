"""Per-block metric cost, the numba implementation against the numpy one it replaced.

    PYTHONPATH=src python scripts/bench_block_metrics.py                 # block_sums and each metric
    PYTHONPATH=src python scripts/bench_block_metrics.py --spectrum      # the FFT variants considered
    PYTHONPATH=src python scripts/bench_block_metrics.py --compile-time  # first call in a fresh process

Blocks are random (16, 384, 14, 14) float32, a CaiT-S24 capture's block shape (96 of them: one
24-layer x 64-sample file). Times are medians of --repeats passes over all blocks, each pass
through a thread pool as stream_metrics runs them; ns/value = wall time / values in the blocks.
The old implementation is copied below from commit 078ab65 (src/dyn/metrics.py), comments dropped.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dyn import metrics

BLOCK_SHAPE = (16, 384, 14, 14)
SETS = {"all three": metrics.METRICS, "spectrum": ("spectrum",), "entropy": ("entropy",),
        "magnitude": ("magnitude",)}


# -- the implementation before numba (078ab65:src/dyn/metrics.py), code unchanged ---------------
# Its input conversion and channels-last copy are still metrics._as_numpy / channel_vectors.
def old_spectrum_sum(vectors: np.ndarray) -> tuple[np.ndarray, int]:
    c = vectors.shape[-1]
    half = np.abs(np.fft.rfft(vectors, axis=-1)).sum(axis=0, dtype=np.float64) / c
    full = np.concatenate([half, half[1:c - c // 2][::-1]])
    return full, vectors.shape[0]


def old_histogram_counts(vectors: np.ndarray, bins: int) -> np.ndarray:
    dt = vectors.dtype
    rows, c = vectors.shape
    low = vectors.min(axis=1)
    high = vectors.max(axis=1)
    constant = low == high
    low = np.where(constant, low - dt.type(0.5), low)
    high = np.where(constant, high + dt.type(0.5), high)
    delta = (high - low).astype(dt)

    position = vectors - low[:, None]
    position /= delta[:, None]
    position *= dt.type(bins)
    inside = (position > 0) & (position < bins)
    whole = np.floor(position)
    scale = np.maximum(np.abs(low), np.abs(high)) / delta * bins + bins
    half_width = (dt.type(0.5) - 8 * np.finfo(dt).eps * scale).astype(dt)
    position -= whole
    position -= dt.type(0.5)
    near = np.abs(position, out=position) > half_width[:, None]
    near &= inside
    np.minimum(whole, bins - 1, out=whole)
    suspect_rows = np.flatnonzero(near.any(axis=1))
    if suspect_rows.size:
        r, k = np.nonzero(near[suspect_rows])
        r = suspect_rows[r]
        index = whole[r, k].astype(np.intp)
        whole[r, k] = old_exact_index(vectors[r, k], index, low[r], high[r], delta[r], bins, dt)
    if rows * bins < 2**24 and dt.itemsize == 4:
        whole += (np.arange(rows, dtype=dt) * dt.type(bins))[:, None]
        flat = whole.astype(np.intp)
    else:
        flat = whole.astype(np.intp) + (np.arange(rows) * bins)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * bins).reshape(rows, bins)


def old_exact_index(v, index, low, high, delta, bins, dt):
    step = (delta / dt.type(bins)).astype(dt)

    def edge(k):
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(step == 0, k.astype(dt) / dt.type(bins) * delta, k.astype(dt) * step) + low
        return np.where(k == bins, high, value.astype(dt))

    index = index.copy()
    index -= v < edge(index)
    index += (v >= edge(index + 1)) & (index != bins - 1)
    return index


def old_entropy_sum(vectors: np.ndarray, bins: int = 100) -> tuple[float, int]:
    counts = old_histogram_counts(vectors, bins)
    p = np.arange(vectors.shape[1] + 1, dtype=np.float64) / vectors.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(p > 0, -p * np.log2(p), 0.0)
    return float(term[counts].sum()), vectors.shape[0]


def old_magnitude_sum(a) -> tuple[float, int]:
    a = metrics._as_numpy(a)
    return float(np.abs(a).sum(dtype=np.float64)), a.size


def old_block_sums(block, names=metrics.METRICS, bins: int = 100) -> dict[str, tuple]:
    block = metrics._as_numpy(block)
    sums = {}
    if "spectrum" in names or "entropy" in names:
        vectors = metrics.channel_vectors(block)
        if "spectrum" in names:
            sums["spectrum"] = old_spectrum_sum(vectors)
        if "entropy" in names:
            sums["entropy"] = old_entropy_sum(vectors, bins)
    if "magnitude" in names:
        sums["magnitude"] = old_magnitude_sum(block)
    return sums


# -- timing ------------------------------------------------------------------------------------------
def random_blocks(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(BLOCK_SHAPE, dtype=np.float32) for _ in range(n)]


def pass_seconds(summarise, blocks, names, threads: int, repeats: int) -> float:
    """Median wall time of summarising every block, `threads` blocks at a time."""
    times = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda b: summarise(b, names), blocks[:threads]))  # warm up (numba: load the cache)
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda b: summarise(b, names), blocks))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_agreement(blocks) -> None:
    """The new sums equal the old ones: entropy and magnitude to float64 rounding, the spectrum to
    float32 FFT rounding (our FFT, channel_fft.py, against numpy's)."""
    for block in blocks:
        old, new = old_block_sums(block), metrics.block_sums(block)
        np.testing.assert_allclose(new["spectrum"][0], old["spectrum"][0], rtol=1e-5)
        assert abs(new["entropy"][0] / old["entropy"][0] - 1) < 1e-12
        assert abs(new["magnitude"][0] / old["magnitude"][0] - 1) < 1e-12
        assert all(new[name][1] == old[name][1] for name in metrics.METRICS)


def bench_block_sums(blocks, repeats: int, thread_counts) -> None:
    values = sum(b.size for b in blocks)
    print(f"{len(blocks)} blocks of {BLOCK_SHAPE} float32 = {values / 1e6:.0f} M values; "
          f"median of {repeats}; ns per value (wall)")
    print(f"{'metric':<12} {'threads':>7} {'old':>8} {'new':>8} {'speed-up':>9}")
    for label, names in SETS.items():
        for threads in thread_counts:
            old = pass_seconds(old_block_sums, blocks, names, threads, repeats)
            new = pass_seconds(metrics.block_sums, blocks, names, threads, repeats)
            print(f"{label:<12} {threads:>7} {old / values * 1e9:8.2f} {new / values * 1e9:8.2f} "
                  f"{old / new:8.1f}x", flush=True)


# -- the spectrum variants ---------------------------------------------------------------------------
def spectrum_variants() -> dict:
    """|rfft| summed over positions of a (samples, C, H, W) block, several ways (all but the
    mirror, which is the same for all)."""
    import scipy.fft
    import torch

    from dyn import channel_fft

    def abs_sum(f, axes):
        return np.abs(f).sum(axis=axes, dtype=np.float64)

    def positions_last(block):
        return block.reshape(block.shape[0], block.shape[1], -1)

    return {
        "numpy rfft, channels-last rows (old)":
            lambda b: abs_sum(np.fft.rfft(metrics.channel_vectors(b), axis=-1), 0),
        "numpy rfft along axis 1":
            lambda b: abs_sum(np.fft.rfft(positions_last(b), axis=1), (0, 2)),
        "scipy rfft, channels-last rows":
            lambda b: abs_sum(scipy.fft.rfft(metrics.channel_vectors(b), axis=-1), 0),
        "scipy rfft along axis 1 (the fallback)":
            lambda b: abs_sum(scipy.fft.rfft(positions_last(b), axis=1), (0, 2)),
        "scipy rfft along axis 1, workers=2":
            lambda b: abs_sum(scipy.fft.rfft(positions_last(b), axis=1, workers=2), (0, 2)),
        "torch.fft.rfft along dim 1 (1 torch thread)":
            lambda b: torch.fft.rfft(torch.from_numpy(positions_last(b)), dim=1).abs()
            .sum(dim=(0, 2), dtype=torch.float64).numpy(),
        "channel_fft: numba, vectorised across positions (new)":
            lambda b: channel_fft.abs_sums(positions_last(b)),
    }


def bench_spectrum(blocks, repeats: int) -> None:
    import torch

    torch.set_num_threads(1)
    values = sum(b.size for b in blocks)
    reference = None
    print(f"spectrum variants, 1 thread, {len(blocks)} blocks, ns per value (FFT + |.| + sum)")
    for label, variant in spectrum_variants().items():
        result = variant(blocks[0])
        reference = result if reference is None else reference
        np.testing.assert_allclose(result, reference, rtol=1e-5)
        seconds = pass_seconds(lambda b, names: variant(b), blocks, (), 1, repeats)
        print(f"  {label:<45} {seconds / values * 1e9:6.2f}", flush=True)


# -- compile time ------------------------------------------------------------------------------------
FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
from dyn import metrics
mark = time.perf_counter()
print(f"import {mark - start:.2f} s", end="")
for dtype in (np.float32, np.float64):
    metrics.block_sums(np.random.default_rng(0).standard_normal((2, 384, 14, 14)).astype(dtype))
    print(f", first {np.dtype(dtype).name} block_sums {time.perf_counter() - mark:.2f} s", end="")
    mark = time.perf_counter()
"""


def bench_compile_time() -> None:
    """A fresh process's import and first block_sums calls, numba's on-disk cache cold then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for state in ("cold cache", "warm cache", "warm cache"):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True,
                                 check=True).stdout.strip()
            print(f"{state}: process {time.perf_counter() - start:.2f} s ({out})", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--spectrum", action="store_true", help="time the FFT variants instead")
    parser.add_argument("--compile-time", action="store_true", help="time a fresh process's first calls instead")
    args = parser.parse_args(argv)
    if args.compile_time:
        return bench_compile_time()
    blocks = random_blocks(args.blocks)
    if args.spectrum:
        return bench_spectrum(blocks, args.repeats)
    check_agreement(blocks[:2])
    bench_block_sums(blocks, args.repeats, args.threads)


if __name__ == "__main__":
    main()
