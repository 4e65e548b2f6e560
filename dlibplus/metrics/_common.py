"""What every metric family shares: the default operating point, input checks, FAR measurability, and
pairs sorted once by distance (the basis of ROC, EER, TAR@FAR and the k-fold thresholds)."""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.6  # dlib's distance threshold (face_recognition's ``tolerance``)
DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)  # target false accept rates reported by default
_REL_TOL = 1e-9  # slack when comparing a count against far * n


# ----------------------------------------------------------------------------------------------------------
# Input checks


def _check_encodings(encodings: Any, name: str = "encodings") -> np.ndarray:
    """``encodings`` as a finite float64 ``(n, d)`` array, else ``ValueError``."""
    x = np.asarray(encodings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """``labels`` as a ``(n,)`` array of any dtype, else ``ValueError``."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    return y


def _check_pairs(distances: Any, same: Any, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(distances float64 (m,), same bool (m,))``; ``need_both``: at least one pair of each kind."""
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(same)
    if d.ndim != 1 or s.shape != d.shape:
        raise ValueError(f"distances and same must be 1-d of equal length, got {d.shape} and {s.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("distances contain NaN or infinite values")
    if s.dtype != np.bool_:
        if s.size and not np.all((s == 0) | (s == 1)):
            raise ValueError("same must be boolean (or 0/1)")
        s = s.astype(bool)
    if need_both:
        n_same = int(s.sum())
        if n_same == 0 or n_same == s.size:
            raise ValueError(
                f"need both same-person and different-person pairs, got {n_same} same and "
                f"{s.size - n_same} different"
            )
    return d, s


def _check_fars(fars: Sequence[float] | float) -> tuple[float, ...]:
    """Target FARs as a tuple of floats in (0, 1], else ``ValueError``."""
    values = (fars,) if np.isscalar(fars) else tuple(fars)
    for f in values:
        if not (0.0 < float(f) <= 1.0):
            raise ValueError(f"a target FAR must lie in (0, 1], got {f}")
    return tuple(float(f) for f in values)


# ----------------------------------------------------------------------------------------------------------
# Operating points at a target false accept (or false alarm) rate


def _shortfall(far: float, n_negatives: float) -> int | None:
    """How many negatives (different-person pairs, unknown probes) the target rate ``far`` needs when
    ``n_negatives`` are too few to measure it (a measured rate is then 0 or at least ``1 / n_negatives``);
    ``None`` when there are enough."""
    if n_negatives * far < 1.0 - _REL_TOL:
        return math.ceil(1.0 / far - _REL_TOL)
    return None


def _not_measurable_reason(far: float, n_different: float) -> str | None:
    """Why TAR at ``far`` cannot be measured on ``n_different`` different-person pairs; ``None`` if it can."""
    need = _shortfall(far, n_different)
    if need is not None:
        return f"FAR {far:g} needs at least {need} different-person pairs, only {int(n_different)} available"
    return None


def _last_within(far_curve: np.ndarray, far: float) -> int:
    """Index of the last point of a non-decreasing ``(u,)`` FAR curve with ``far_curve[k] <= far`` (relative
    slack 1e-9); -1 when even the first point exceeds it. The operating point of largest threshold within
    the budget: shared by TAR at FAR and the open set's DIR at a false-alarm rate."""
    return int(np.searchsorted(far_curve, far * (1.0 + _REL_TOL), side="right")) - 1


# ----------------------------------------------------------------------------------------------------------
# Pairs sorted by distance


class _SortedPairs(NamedTuple):
    """Pairs sorted by distance, with cumulative counts at the end of each run of tied distances."""

    d: np.ndarray  # (m,) sorted distances
    s: np.ndarray  # (m,) same flags in that order
    order: np.ndarray  # (m,) the permutation applied
    thresholds: np.ndarray  # (u,) distinct distances
    tps: np.ndarray  # (u,) same pairs with distance <= thresholds[k]
    fps: np.ndarray  # (u,) different pairs with distance <= thresholds[k]


def _counts(ds: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values ``(u,)`` and cumulative same/different counts ``(u,)`` (float64) of already sorted
    pairs."""
    if ds.size == 0:
        empty = np.empty(0, dtype=np.float64)
        return empty, empty, empty
    tps = np.cumsum(ss, dtype=np.float64)
    ends = np.flatnonzero(ds[1:] != ds[:-1])
    if ends.size == ds.size - 1:  # all distances distinct, the usual case with real encodings
        return ds, tps, np.arange(1.0, ds.size + 1) - tps
    ends = np.append(ends, ds.size - 1)
    tps = tps[ends]
    return ds[ends], tps, (ends + 1.0) - tps


def _sort_pairs(d: np.ndarray, s: np.ndarray) -> _SortedPairs:
    """Sort checked ``(m,)`` pairs once; every ROC-based number reuses the result."""
    order = np.argsort(d)  # ties may come in any order: counts are taken at the end of each run
    ds, ss = d[order], s[order]
    return _SortedPairs(ds, ss, order, *_counts(ds, ss))
