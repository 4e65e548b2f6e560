"""LFW-protocol k-fold verification accuracy.

Each fold's accuracy is measured at the threshold that classifies the *other* folds best, as in the LFW
evaluation scripts of facenet and insightface. Distances in encoding units; "same person" means
``distance <= threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..jsonutil import JSONFields
from ._common import _check_pairs, _counts, _sort_pairs, _SortedPairs

__all__ = ["KFoldResult", "best_accuracy_threshold", "kfold_verification", "stratified_folds"]


@dataclass(frozen=True)
class KFoldResult(JSONFields):
    """Per-fold accuracies and thresholds of :func:`kfold_verification`; ``std`` is the population std
    (``ddof=0``), as in the LFW evaluation scripts of facenet and insightface."""

    accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]
    mean: float
    std: float
    threshold_mean: float
    folds: int
    seed: int | None


def _best_threshold_sorted(ds: np.ndarray, ss: np.ndarray) -> tuple[float, float]:
    """:func:`best_accuracy_threshold` of pairs already sorted by distance (``ds`` float64, ``ss`` bool)."""
    uniq, tp, fp = _counts(ds, ss)
    n_diff = float(ds.size - np.count_nonzero(ss))
    correct = tp - fp  # + n_diff: right answers when accepting distances <= uniq[k]
    k = int(np.argmax(correct)) + 1 if correct.size else 0  # k: accept the k smallest distinct distances
    if k and correct[k - 1] <= 0:
        k = 0  # accepting nothing is at least as good (ties go to the stricter threshold)
    n_right = n_diff + (correct[k - 1] if k else 0.0)
    if k == 0:
        threshold = float(np.nextafter(uniq[0], -np.inf))
    elif k == uniq.size:
        threshold = float(uniq[-1])
    else:
        threshold = float((uniq[k - 1] + uniq[k]) / 2.0)
    return threshold, float(n_right / ds.size)


def best_accuracy_threshold(distances: Any, same: Any) -> tuple[float, float]:
    """``(threshold, accuracy)`` of the threshold that classifies these pairs best.

    The threshold is placed halfway between two consecutive distinct distances (below the smallest, or at the
    largest, at the ends); among equally good thresholds the smallest (strictest) wins.
    """
    d, s = _check_pairs(distances, same, need_both=False)
    if d.size == 0:
        raise ValueError("no pairs")
    order = np.argsort(d)
    return _best_threshold_sorted(d[order], s[order])


def stratified_folds(same: Any, folds: int = 10, seed: int | None = 0) -> np.ndarray:
    """Fold id ``(m,)`` of each pair: same-person and different-person pairs are shuffled (seeded) and dealt
    in turn to the folds, so each fold holds the same share of both."""
    s = np.asarray(same).astype(bool)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if s.size < folds:
        raise ValueError(f"{folds} folds need at least {folds} pairs, got {s.size}")
    rng = np.random.default_rng(seed)
    fold_ids = np.empty(s.size, dtype=np.int64)
    offset = 0
    for mask in (s, ~s):
        idx = np.nonzero(mask)[0]
        idx = idx[rng.permutation(idx.size)]
        fold_ids[idx] = (np.arange(idx.size) + offset) % folds
        offset += idx.size  # continue dealing where the last class stopped, to balance fold sizes
    return fold_ids


def kfold_verification(
    distances: Any,
    same: Any,
    folds: int = 10,
    seed: int | None = 0,
    fold_ids: Any = None,
) -> KFoldResult:
    """LFW-protocol accuracy: for each fold, pick the best-accuracy threshold on the other folds
    (:func:`best_accuracy_threshold`) and measure accuracy on the held-out fold; report mean and std.

    Args:
        distances, same: ``(m,)`` pairs.
        folds: number of folds when ``fold_ids`` is not given (pairs are then split by
            :func:`stratified_folds` with ``seed``).
        seed: seed of that split.
        fold_ids: ``(m,)`` ints, the fold of each pair (e.g. from an LFW ``pairs.txt``, see
            :func:`dlibplus.pairs_file.read_pairs`).
    """
    d, s = _check_pairs(distances, same, need_both=False)
    return _kfold(d, s, None, folds, seed, fold_ids)


def _kfold(
    d: np.ndarray, s: np.ndarray, sp: _SortedPairs | None, folds: int, seed: int | None, fold_ids: Any
) -> KFoldResult:
    """:func:`kfold_verification` of checked pairs; ``sp``: the pairs already sorted, when the caller has them."""
    if fold_ids is None:
        ids = stratified_folds(s, folds, seed)
    else:
        ids = np.asarray(fold_ids)
        if ids.shape != d.shape:
            raise ValueError(f"fold_ids must have shape {d.shape}, got {ids.shape}")
        seed = None
    fold_values = np.unique(ids)
    if fold_values.size < 2:
        raise ValueError("k-fold evaluation needs at least 2 folds")
    if sp is None:
        sp = _sort_pairs(d, s)
    ds, ss, ids_sorted = sp.d, sp.s, ids[sp.order]  # sorted once: a fold's training pairs stay sorted
    accuracies, thresholds = [], []
    for value in fold_values:
        train = ids_sorted != value
        threshold, _ = _best_threshold_sorted(ds[train], ss[train])
        test = ~train
        accuracies.append(float(np.mean((ds[test] <= threshold) == ss[test])))
        thresholds.append(threshold)
    acc = np.array(accuracies)
    return KFoldResult(
        tuple(accuracies), tuple(thresholds), float(acc.mean()), float(acc.std()),
        float(np.mean(thresholds)), int(fold_values.size), seed,
    )
