"""Verification: is a pair of faces the same person? ROC, AUC, EER, rates at a threshold, TAR at FAR.

Conventions, the same as face_recognition's:

- the *distance* between two encodings is Euclidean (see :mod:`.distances`);
- two faces are called "the same person" when ``distance <= threshold`` (inclusive; dlib's threshold is 0.6).
  A lower threshold is stricter: fewer false accepts, fewer true accepts;
- the score used for ROC curves is ``-distance``.

Rates: TAR (true accept rate) is the share of same-person pairs accepted, FAR (false accept rate) the share of
different-person pairs accepted, FRR = 1 - TAR. Pairs come as ``distances`` (float, ``(m,)``) and ``same``
(bool or 0/1, ``(m,)``); wrong shapes, NaN or a missing kind of pair raise ``ValueError``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..jsonutil import JSONFields
from ._common import (DEFAULT_FARS, DEFAULT_THRESHOLD, _check_fars, _check_pairs, _last_within,
                      _not_measurable_reason, _sort_pairs, _SortedPairs)
from .kfold import KFoldResult, _kfold

logger = logging.getLogger(__name__)

__all__ = ["Eer", "Roc", "TarAtFar", "VerificationReport", "accuracy_at_threshold", "auc", "eer",
           "rates_at_threshold", "roc_curve_distances", "tar_at_far", "threshold_at_far", "verification_report"]


class Roc(NamedTuple):
    """An ROC curve in distance units: accept a pair when ``distance <= thresholds[k]``.

    ``far`` and ``tar`` are non-decreasing; the first point is (0, 0) with threshold ``-inf`` (nothing
    accepted), mirroring scikit-learn's ``+inf`` score threshold.
    """

    far: np.ndarray  # (u + 1,) float64 in [0, 1]
    tar: np.ndarray  # (u + 1,) float64 in [0, 1]
    thresholds: np.ndarray  # (u + 1,) float64 distances, -inf first


def _roc(sp: _SortedPairs, drop_intermediate: bool = False) -> Roc:
    """The ROC of sorted pairs (see :func:`roc_curve_distances`)."""
    tps, fps, thresholds = sp.tps, sp.fps, sp.thresholds
    if drop_intermediate and tps.size > 2:
        bend = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.concatenate(([True], bend, [True])))
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    far = np.concatenate(([0.0], fps / fps[-1]))
    tar = np.concatenate(([0.0], tps / tps[-1]))
    return Roc(far, tar, np.concatenate(([-np.inf], thresholds)))


def roc_curve_distances(distances: Any, same: Any, drop_intermediate: bool = False) -> Roc:
    """ROC curve of a distance-based verifier (score ``-distance``), one point per distinct distance.

    Args:
        distances: ``(m,)`` pair distances.
        same: ``(m,)`` bool, True for same-person pairs.
        drop_intermediate: drop points that lie inside straight horizontal or vertical runs of the curve, as
            ``sklearn.metrics.roc_curve`` does by default; the curve's shape and area are unchanged.

    Returns:
        :class:`Roc` equal to ``sklearn.metrics.roc_curve(same, -distances)`` with thresholds negated.
    """
    d, s = _check_pairs(distances, same)
    return _roc(_sort_pairs(d, s), drop_intermediate)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Area under the polyline ``(x, y)``, ``x`` non-decreasing."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def auc(distances: Any, same: Any) -> float:
    """Area under the ROC curve: the chance that a same-person pair is closer than a different-person pair
    (ties count one half). 1 is perfect, 0.5 is chance."""
    roc = roc_curve_distances(distances, same)
    return _trapezoid(roc.far, roc.tar)


class Eer(NamedTuple):
    """Equal error rate (FAR = FRR) and the distance threshold where it happens."""

    rate: float
    threshold: float


def _eer(roc: Roc) -> Eer:
    """:func:`eer` of an ROC already computed."""
    gap = roc.far - (1.0 - roc.tar)  # non-decreasing from -1 to 1
    k = int(np.argmax(gap >= 0))
    if gap[k] == 0 or k == 0:
        return Eer(float(roc.far[k]), float(roc.thresholds[k]))
    alpha = -gap[k - 1] / (gap[k] - gap[k - 1])
    rate = roc.far[k - 1] + alpha * (roc.far[k] - roc.far[k - 1])
    t0, t1 = roc.thresholds[k - 1], roc.thresholds[k]
    threshold = t1 if not np.isfinite(t0) else t0 + alpha * (t1 - t0)
    return Eer(float(rate), float(threshold))


def eer(distances: Any, same: Any) -> Eer:
    """Equal error rate, where FAR equals FRR = 1 - TAR.

    The ROC is a staircase, so FAR - FRR rarely hits 0 on a point: the rate and the threshold are linearly
    interpolated between the last ROC point with FAR < FRR and the first with FAR >= FRR. Perfectly separable
    distances give ``rate == 0`` at the largest same-person distance.
    """
    return _eer(roc_curve_distances(distances, same))


def rates_at_threshold(distances: Any, same: Any, threshold: float = DEFAULT_THRESHOLD) -> tuple[float, float]:
    """``(tar, far)`` when pairs with ``distance <= threshold`` are accepted."""
    d, s = _check_pairs(distances, same)
    accept = d <= threshold
    return float(accept[s].mean()), float(accept[~s].mean())


def accuracy_at_threshold(distances: Any, same: Any, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of pairs classified right when "same person" means ``distance <= threshold`` (face_recognition's
    ``compare_faces`` rule, inclusive; 0.6 is dlib's threshold)."""
    d, s = _check_pairs(distances, same, need_both=False)
    if d.size == 0:
        raise ValueError("no pairs")
    return float(np.mean((d <= threshold) == s))


@dataclass(frozen=True)
class TarAtFar(JSONFields):
    """TAR at a target FAR, or why it cannot be measured.

    ``tar`` and ``threshold`` are ``None`` when there are fewer than ``1 / far`` different-person pairs: then
    the measured FAR can only be 0 or at least ``1 / n_different``, so the target is out of reach. The threshold
    is the largest distance threshold whose FAR does not exceed the target (accept ``distance <= threshold``);
    ``achieved_far`` is the FAR it gives on these pairs.
    """

    far: float
    tar: float | None
    threshold: float | None
    n_different: int
    achieved_far: float | None = None
    reason: str | None = None

    @property
    def measurable(self) -> bool:
        return self.tar is not None


def _tar_at_far(roc: Roc, n_diff: int, d_min: float, fars: tuple[float, ...]) -> list[TarAtFar]:
    results = []
    for f in fars:
        reason = _not_measurable_reason(f, n_diff)
        if reason:
            results.append(TarAtFar(f, None, None, n_diff, None, reason))
            continue
        k = _last_within(roc.far, f)  # >= 0: the curve starts at FAR 0 (nothing accepted)
        threshold = float(roc.thresholds[k])
        if not np.isfinite(threshold):  # nothing can be accepted: any value below every distance will do
            threshold = float(np.nextafter(d_min, -np.inf))
        results.append(TarAtFar(f, float(roc.tar[k]), threshold, n_diff, float(roc.far[k])))
    return results


def tar_at_far(distances: Any, same: Any, fars: Sequence[float] | float = DEFAULT_FARS) -> list[TarAtFar]:
    """TAR at each target FAR, with the distance threshold that achieves it.

    For each target ``f`` the threshold is the largest ROC threshold whose FAR is ``<= f`` (no interpolation:
    it is an operating point you can use). A target is marked not measurable (``tar=None`` with a ``reason``)
    when there are fewer than ``1 / f`` different-person pairs.

    Returns:
        One :class:`TarAtFar` per target, in the order given.
    """
    d, s = _check_pairs(distances, same)
    fars = _check_fars(fars)
    return _tar_at_far(roc_curve_distances(d, s), int((~s).sum()), float(d.min()), fars)


def threshold_at_far(distances: Any, same: Any, far: float) -> float:
    """The largest distance threshold whose FAR on these pairs is ``<= far``: use it as ``tolerance`` to
    recalibrate an encoder. Raises ``ValueError`` when the FAR is not measurable on this many pairs."""
    (result,) = tar_at_far(distances, same, (far,))
    if result.threshold is None:
        raise ValueError(result.reason)
    return result.threshold


# ----------------------------------------------------------------------------------------------------------
# Everything at once


def _thin_curve(far: np.ndarray, tar: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points of a staircase ROC, sampled evenly on a log FAR axis."""
    if far.size <= max_points:
        return far, tar
    positive = far[far > 0]
    grid = np.geomspace(positive.min(), 1.0, max_points - 2)
    idx = np.searchsorted(far, grid, side="right") - 1
    idx = np.unique(np.r_[0, np.nonzero(far == 0)[0][-1], idx, far.size - 1])
    return far[idx], tar[idx]


@dataclass
class VerificationReport(JSONFields):
    """The verification numbers of one encoder on one set of pairs (``to_dict()`` is JSON-ready).

    Counts are pairs; rates lie in [0, 1]; thresholds and ``eer_threshold`` are distances. ``threshold`` is
    the fixed operating point the ``*_at_threshold`` rates are read at. ``roc_far``/``roc_tar`` (float64,
    equal length, at most about ``max_curve_points``) is the ROC thinned for plotting.
    """

    name: str
    n_pairs: int
    n_same: int
    n_different: int
    auc: float
    eer: float
    eer_threshold: float
    threshold: float
    accuracy_at_threshold: float
    tar_at_threshold: float
    far_at_threshold: float
    tar_at_far: list[TarAtFar]
    kfold: KFoldResult | None
    roc_far: np.ndarray = field(repr=False)
    roc_tar: np.ndarray = field(repr=False)


def verification_report(
    distances: Any,
    same: Any,
    name: str = "",
    threshold: float = DEFAULT_THRESHOLD,
    fars: Sequence[float] = DEFAULT_FARS,
    folds: int | None = 10,
    seed: int | None = 0,
    fold_ids: Any = None,
    max_curve_points: int = 500,
) -> VerificationReport:
    """Every verification number of one encoder on ``(m,)`` pairs.

    ``threshold`` is the fixed operating point to report (0.6 for dlib; use the recalibrated threshold of a
    fine-tuned encoder). The k-fold accuracy is skipped (``kfold=None``, with a log warning) when
    ``folds=None`` or when there are fewer than ``2 * folds`` pairs; ``fold_ids`` overrides ``folds``.
    """
    d, s = _check_pairs(distances, same)
    fars = _check_fars(fars)
    sp = _sort_pairs(d, s)  # the one sort every number below shares
    roc = _roc(sp)
    rate, eer_t = _eer(roc)
    tar_t, far_t = rates_at_threshold(d, s, threshold)
    kfold = None
    if fold_ids is not None:
        kfold = _kfold(d, s, sp, 0, None, fold_ids)
    elif folds is not None:
        if d.size >= 2 * folds:
            kfold = _kfold(d, s, sp, folds, seed, None)
        else:
            logger.warning("%s: k-fold accuracy skipped, %d pairs are too few for %d folds", name, d.size, folds)
    thin = _roc(sp, drop_intermediate=True)
    far_c, tar_c = _thin_curve(thin.far, thin.tar, max_curve_points)
    n_diff = int((~s).sum())
    return VerificationReport(
        name=name, n_pairs=int(d.size), n_same=int(d.size - n_diff), n_different=n_diff,
        auc=_trapezoid(roc.far, roc.tar), eer=rate, eer_threshold=eer_t, threshold=float(threshold),
        accuracy_at_threshold=accuracy_at_threshold(d, s, threshold), tar_at_threshold=tar_t,
        far_at_threshold=far_t, tar_at_far=_tar_at_far(roc, n_diff, float(sp.d[0]), fars), kfold=kfold,
        roc_far=far_c, roc_tar=tar_c,
    )
