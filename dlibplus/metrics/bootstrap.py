"""Confidence intervals by bootstrap over people: is encoder A really better than encoder B?

Photos of one person are correlated (same face, often the same day), so resampling photos would overstate
the evidence: people are drawn with replacement instead, all their photos coming along. Intervals are
percentile intervals of ``n_boot`` seeded replicates; differences are ``A - B`` of "higher is better" rates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..jsonutil import JSONFields
from ._common import _check_encodings, _check_fars, _check_labels, _not_measurable_reason, _REL_TOL
from .distances import _iter_pair_blocks

__all__ = ["BootstrapResult", "WeightedTar", "bootstrap_identification_diff", "bootstrap_over_people",
           "bootstrap_tar_at_far_diff", "bootstrap_tar_diff"]


@dataclass(frozen=True)
class BootstrapResult(JSONFields):
    """Percentile confidence interval of a statistic (usually a difference A - B) under resampling of people.

    ``fraction_positive`` is the share of valid replicates with a statistic > 0 (A better, for a difference
    of "higher is better" metrics). Replicates where the statistic is undefined (NaN) are left out of the
    interval and counted in ``n_boot - n_valid``.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    std: float
    fraction_positive: float
    n_boot: int
    n_valid: int
    n_people: int
    seed: int | None


def bootstrap_over_people(
    statistic: Callable[[np.ndarray], float],
    n_people: int,
    n_boot: int = 1000,
    seed: int | None = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Cluster bootstrap: draw ``n_people`` people with replacement, ``n_boot`` times (seeded).

    ``statistic(counts)`` receives how many times each person was drawn, an int array ``(n_people,)``, and
    returns the statistic of the resampled data set, in which a person drawn twice counts as two distinct
    people with the same photos. ``statistic(np.ones(n_people))`` is the estimate on the data as it is. See
    :func:`bootstrap_identification_diff`, :func:`bootstrap_tar_diff` and :func:`bootstrap_tar_at_far_diff`
    for ready-made statistics.
    """
    if n_people < 1:
        raise ValueError("need at least one person")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    estimate = float(statistic(np.ones(n_people, dtype=np.int64)))
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n_people, size=n_people), minlength=n_people)
        values[b] = statistic(counts)
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        nan = float("nan")
        return BootstrapResult(estimate, nan, nan, confidence, nan, nan, n_boot, 0, n_people, seed)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
    return BootstrapResult(
        estimate, float(low), float(high), confidence, float(valid.std(ddof=1)) if valid.size > 1 else 0.0,
        float(np.mean(valid > 0)), n_boot, int(valid.size), n_people, seed,
    )


def bootstrap_identification_diff(
    true: Any,
    pred_a: Any,
    pred_b: Any,
    n_boot: int = 1000,
    seed: int | None = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Confidence interval of ``accuracy(A) - accuracy(B)`` for two encoders' predictions on the same probes,
    resampling the probes' people (all the probes of a drawn person come along)."""
    t = np.asarray(true)
    a = np.asarray(pred_a)
    b = np.asarray(pred_b)
    if t.ndim != 1 or a.shape != t.shape or b.shape != t.shape or t.size == 0:
        raise ValueError("true, pred_a and pred_b must be non-empty 1-d arrays of equal length")
    _, codes = np.unique(t, return_inverse=True)
    n_people = int(codes.max()) + 1
    per_person_n = np.bincount(codes, minlength=n_people).astype(np.float64)
    per_person_diff = np.bincount(codes, weights=(a == t).astype(float) - (b == t).astype(float), minlength=n_people)

    def statistic(counts: np.ndarray) -> float:
        return float(counts @ per_person_diff / (counts @ per_person_n))

    return bootstrap_over_people(statistic, n_people, n_boot, seed, confidence)


class WeightedTar:
    """TAR at one FAR under person weights, without recomputing pairs for each replicate (build it once per
    encoder and reuse it in every comparison, see :func:`bootstrap_tar_diff`).

    Resampling people and rebuilding all pairs i<j of the resampled set (copies of one person are distinct
    people, and pairs between two copies of a person are left out) gives each original pair a weight: ``w_p``
    for a same-person pair of person p, ``w_p * w_q`` for a different-person pair of p and q. Only the same
    pairs and the ``keep`` smallest different pairs are stored: the FAR threshold lies among them unless a
    replicate weights them down extremely (then the replicate is NaN).
    """

    head_factor = 2.0  # first pass over the head: head_factor * far * (pairs kept) + head_slack pairs
    head_slack = 1024

    def __init__(self, x: np.ndarray, codes: np.ndarray, n_people: int, far: float, keep: int | None = None,
                 distances: np.ndarray | None = None):
        """
        Args:
            x: ``(n, d)`` float64 encodings.
            codes: ``(n,)`` int person index of each encoding, in ``[0, n_people)``.
            far: the target FAR, in (0, 1].
            keep: how many of the smallest different-person pairs to store (default: enough for any sane
                replicate, at least 200,000).
            distances: the ``(n (n - 1) / 2,)`` float64 distances of ``pair_distances(x, ...)``, when the caller
                has them: used as they are instead of being computed again.
        """
        self.far = far
        self.n_people = n_people
        self.sizes = np.bincount(codes, minlength=n_people).astype(np.float64)
        n = self.n_images = x.shape[0]
        if distances is not None and np.shape(distances) != (n * (n - 1) // 2,):
            raise ValueError(f"distances must have shape ({n * (n - 1) // 2},), got {np.shape(distances)}")
        m_diff = int(n * (n - 1) // 2 - np.sum(self.sizes * (self.sizes - 1) / 2))
        if keep is None:
            keep = max(200_000, int(math.ceil(50 * far * m_diff)))
        self.complete = keep >= m_diff
        same_d, same_p = [], []
        diff_d = np.empty(0)
        diff_i = np.empty(0, dtype=np.int32)
        diff_j = np.empty(0, dtype=np.int32)
        for _, i, j, d in _iter_pair_blocks(x, distances):
            ci, cj = codes[i], codes[j]
            s = ci == cj
            same_d.append(d[s])
            same_p.append(ci[s].astype(np.int32))
            diff_d = np.concatenate((diff_d, d[~s]))
            diff_i = np.concatenate((diff_i, ci[~s].astype(np.int32)))
            diff_j = np.concatenate((diff_j, cj[~s].astype(np.int32)))
            if diff_d.size > 2 * keep:
                part = np.argpartition(diff_d, keep - 1)[:keep]
                diff_d, diff_i, diff_j = diff_d[part], diff_i[part], diff_j[part]
        if diff_d.size > keep:
            part = np.argpartition(diff_d, keep - 1)[:keep]
            diff_d, diff_i, diff_j = diff_d[part], diff_i[part], diff_j[part]
        order = np.argsort(diff_d)
        self.diff_d, self.diff_i, self.diff_j = diff_d[order], diff_i[order], diff_j[order]
        sd = np.concatenate(same_d) if same_d else np.empty(0)
        sp = np.concatenate(same_p) if same_p else np.empty(0, dtype=np.int32)
        order = np.argsort(sd)
        self.same_d, self.same_p = sd[order], sp[order]

    @classmethod
    def from_labels(cls, encodings: Any, labels: Any, far: float, distances: np.ndarray | None = None) -> "WeightedTar":
        """The statistic of ``(n, d)`` encodings of people ``labels`` ``(n,)`` at target ``far``; ``distances``
        as in the constructor (e.g. the first array :func:`~dlibplus.metrics.pair_distances` returned)."""
        x = _check_encodings(encodings)
        y = _check_labels(labels, x.shape[0])
        (far,) = _check_fars(far)
        _, codes = np.unique(y, return_inverse=True)
        n_people = int(codes.max()) + 1 if codes.size else 0
        return cls(x, codes, n_people, far, distances=distances)

    def check_measurable(self) -> None:
        """Raise ``ValueError`` when TAR at this FAR cannot be measured on the data as they are."""
        if not np.isfinite(self(np.ones(self.n_people))):
            n_diff = (self.n_images * (self.n_images - 1)) // 2 - int(self.same_d.size)
            reason = _not_measurable_reason(self.far, n_diff) or "no same-person pairs"
            raise ValueError(f"TAR@FAR={self.far:g} cannot be measured on these images: {reason}")

    def __call__(self, w: np.ndarray) -> float:
        """TAR of the resampled data set where person ``p`` is drawn ``w[p]`` times (``w``: ``(n_people,)``);
        NaN when not measurable there."""
        w = np.asarray(w, dtype=np.float64)
        ws = w * self.sizes
        w_diff = (ws.sum() ** 2 - np.sum(ws ** 2)) / 2.0
        w_same = float(np.sum(w * self.sizes * (self.sizes - 1) / 2.0))
        if w_same <= 0 or _not_measurable_reason(self.far, w_diff):
            return float("nan")
        budget = self.far * w_diff * (1.0 + _REL_TOL)
        size = self.diff_d.size
        # the budget usually breaks near position far * size: sum a head first, the rest only if needed
        head = min(size, int(math.ceil(self.head_factor * self.far * size)) + self.head_slack)
        cum = np.cumsum(w[self.diff_i[:head]] * w[self.diff_j[:head]])
        k = int(np.searchsorted(cum, budget, side="right"))  # first pair that breaks the budget
        if k >= head and head < size:
            tail = cum[-1] + np.cumsum(w[self.diff_i[head:]] * w[self.diff_j[head:]])
            k = head + int(np.searchsorted(tail, budget, side="right"))
        if k >= size:
            if not self.complete:
                return float("nan")
            return 1.0
        cut = self.diff_d[k]  # accept distances < cut
        n_accept = int(np.searchsorted(self.same_d, cut, side="left"))
        return float(np.sum(w[self.same_p[:n_accept]]) / w_same)


def bootstrap_tar_diff(
    tar_a: WeightedTar,
    tar_b: WeightedTar,
    n_boot: int = 1000,
    seed: int | None = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Confidence interval of ``TAR@FAR(A) - TAR@FAR(B)`` from two :class:`WeightedTar` of the same images
    and people at the same FAR (e.g. built once per encoder with :meth:`WeightedTar.from_labels`), resampling
    people. Raises ``ValueError`` when the TAR is not measurable on the data as they are."""
    if tar_a.far != tar_b.far or not np.array_equal(tar_a.sizes, tar_b.sizes) or tar_a.n_images != tar_b.n_images:
        raise ValueError("both statistics must be of the same images, people and FAR")
    tar_a.check_measurable()
    tar_b.check_measurable()
    return bootstrap_over_people(lambda w: tar_a(w) - tar_b(w), tar_a.n_people, n_boot, seed, confidence)


def bootstrap_tar_at_far_diff(
    encodings_a: np.ndarray,
    encodings_b: np.ndarray,
    labels: Any,
    far: float = 1e-3,
    n_boot: int = 1000,
    seed: int | None = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Confidence interval of ``TAR@FAR(A) - TAR@FAR(B)`` over all pairs ``i < j`` of the same images encoded
    by two encoders (``(n, d)`` each, people ``labels`` ``(n,)``), resampling people.

    Each replicate equals recomputing :func:`~dlibplus.metrics.tar_at_far` on the pairs of the resampled people
    (copies of one person count as different people; pairs between two copies are not formed), but costs only
    one pass over the same-person pairs and the smallest different-person pairs. Replicates whose FAR is not
    measurable are NaN. Raises ``ValueError`` when it is not measurable on the data as they are. To compare
    several encoders with one baseline, build each :class:`WeightedTar` once and use :func:`bootstrap_tar_diff`.
    """
    xa = _check_encodings(encodings_a, "encodings_a")
    xb = _check_encodings(encodings_b, "encodings_b")
    if xa.shape[0] != xb.shape[0]:
        raise ValueError("both encoders must encode the same images")
    _check_labels(labels, xa.shape[0])
    return bootstrap_tar_diff(WeightedTar.from_labels(xa, labels, far), WeightedTar.from_labels(xb, labels, far),
                              n_boot, seed, confidence)
