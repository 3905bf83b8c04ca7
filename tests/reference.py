"""Plain, obviously-correct loop implementations of the paper's formulas, to test the fast code against."""
import math

import numpy as np


def positions(a: np.ndarray, channel_axis: int = 1):
    """Every position's channel vector, one at a time."""
    moved = np.moveaxis(np.asarray(a), channel_axis, -1)
    for index in np.ndindex(*moved.shape[:-1]):
        yield moved[index]


def spectrum(a, channel_axis=1):
    """S[k] = mean over positions of |(1/C) sum_c A[c] exp(-2 pi i k c / C)|, by the definition."""
    vectors = list(positions(a, channel_axis))
    c = len(vectors[0])
    out = np.zeros(c)
    for v in vectors:
        for k in range(c):
            total = sum(complex(v[j]) * complex(math.cos(-2 * math.pi * k * j / c), math.sin(-2 * math.pi * k * j / c))
                        for j in range(c))
            out[k] += abs(total / c)
    return out / len(vectors)


def entropy(a, bins=100, channel_axis=1, value_range=None):
    """Mean over positions of -sum p log2 p of numpy.histogram(v, bins, range=value_range), p = counts / their sum
    (`value_range` None: each vector's own min..max)."""
    values = []
    for v in positions(a, channel_axis):
        counts, _ = np.histogram(v, bins=bins, range=value_range)
        e = 0.0
        for count in counts:
            if count > 0:
                p = count / counts.sum()
                e -= p * math.log2(p)
        values.append(e)
    return sum(values) / len(values)


def magnitude(a):
    flat = np.asarray(a, dtype=np.float64).ravel()
    return sum(abs(x) for x in flat) / len(flat)
