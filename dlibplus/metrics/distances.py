"""Euclidean distances between encodings, computed in bounded blocks.

An *encoding* is a float vector (dlib: 128-d, not L2-normalised); distances are Euclidean, in the same units
as dlib's 0.6 threshold. Large sets are processed a block of rows at a time (at most ~4M distances, 32 MiB of
float64 scratch, per block). Distances go through the Gram matrix (``|a|^2 + |b|^2 - 2 a.b``, clipped at 0):
their absolute error is ~1e-15 for dlib-sized vectors, more (~1e-8) only for distances near 0.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ._common import _check_encodings, _check_labels

_BLOCK_ELEMENTS = 1 << 22  # entries of one distance block (4M float64 = 32 MiB)


def _row_blocks(n_rows: int, n_cols: int) -> range:
    """Start rows of blocks of at most ~``_BLOCK_ELEMENTS`` entries of an ``(n_rows, n_cols)`` matrix."""
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    return range(0, n_rows, step)


def _block_distances(a: np.ndarray, b: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(a), len(b))`` through the Gram matrix, clipped at 0; ``sq_*`` are the
    squared norms of the rows."""
    d2 = sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def cross_distances(a: Any, b: Any) -> np.ndarray:
    """(len(a), len(b)) float64 Euclidean distances between every row of ``a`` and every row of ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return _block_distances(a, b, (a * a).sum(1), (b * b).sum(1))


def paired_distances(a: Any, b: Any) -> np.ndarray:
    """Row-wise Euclidean distances ``(m,)`` float64 between two ``(m, d)`` arrays (e.g. the two sides of a
    pairs file)."""
    a = _check_encodings(a, "a")
    b = _check_encodings(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def _pair_blocks(n: int) -> Iterator[tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """The blocks of all pairs ``i < j`` of ``n`` items, in row-major (``pdist``) order.

    Yields ``(a, b, start, mask, i, j)``: rows ``a:b`` against columns ``a:n``, ``mask`` ``(b - a, n - a)``
    bool selecting the pairs ``i < j`` of that rectangle, ``start`` the position of the block's first pair in
    the full list, ``i`` and ``j`` int64 indices of its pairs. Each block holds at most ~4M entries.
    """
    a = 0
    while a < n - 1:
        b = min(n - 1, a + max(1, _BLOCK_ELEMENTS // (n - a)))
        rows = np.arange(a, b)
        cols = np.arange(a, n)
        mask = cols[None, :] > rows[:, None]
        ii, jj = np.nonzero(mask)
        start = a * (n - 1) - a * (a - 1) // 2
        yield a, b, start, mask, ii + a, jj + a
        a = b


def _iter_pair_blocks(x: np.ndarray, distances: np.ndarray | None = None
                      ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(start, i, j, d)`` for all pairs i<j of ``x`` ``(n, d)``, block by block (see :func:`_pair_blocks`).

    ``distances``: the ``(n (n - 1) / 2,)`` distances of :func:`pair_distances` of the same ``x``, already
    computed; the blocks are then slices of it (the very same values) instead of being recomputed.
    """
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x) if distances is None else None
    for a, b, start, mask, i, j in _pair_blocks(n):
        if distances is None:
            d = _block_distances(x[a:b], x[a:], sq[a:b], sq[a:])[mask]
        else:
            d = distances[start:start + i.size]
        yield start, i, j, d


def pair_distances(encodings: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distances and same-person flags of all pairs ``i < j`` of ``encodings``.

    Args:
        encodings: ``(n, d)`` float array.
        labels: ``(n,)`` person of each encoding (any comparable dtype: str, int).

    Returns:
        ``(distances, same)``: float64 ``(m,)`` Euclidean distances and bool ``(m,)``, with
        ``m = n (n - 1) / 2`` in ``scipy.spatial.distance.pdist`` order ((0,1), (0,2), ..., (1,2), ...).
        Computed in blocks of rows (at most ~4M distances at a time), so n = 5000 needs about 110 MB for the
        results and 100 MB of scratch.
    """
    x = _check_encodings(encodings)
    y = _check_labels(labels, x.shape[0])
    _, codes = np.unique(y, return_inverse=True)
    n = x.shape[0]
    m = n * (n - 1) // 2
    distances = np.empty(m, dtype=np.float64)
    same = np.empty(m, dtype=bool)
    for start, i, j, d in _iter_pair_blocks(x):
        distances[start:start + d.size] = d
        same[start:start + d.size] = codes[i] == codes[j]
    return distances, same


def nearest_index(gallery: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each probe row, the index (int64 ``(p,)``) of its closest gallery row and that distance (float64
    ``(p,)``). ``gallery`` ``(g, d)`` and ``probes`` ``(p, d)`` are checked float64 arrays, ``g >= 1``."""
    sq_g = np.einsum("ij,ij->i", gallery, gallery)
    sq_p = np.einsum("ij,ij->i", probes, probes)
    idx = np.empty(probes.shape[0], dtype=np.int64)
    dist = np.empty(probes.shape[0], dtype=np.float64)
    blocks = _row_blocks(probes.shape[0], gallery.shape[0])
    for a in blocks:
        b = min(probes.shape[0], a + blocks.step)
        d = _block_distances(probes[a:b], gallery, sq_p[a:b], sq_g)
        k = np.argmin(d, axis=1)
        idx[a:b] = k
        dist[a:b] = d[np.arange(b - a), k]
    return idx, dist
