"""Where tolerance 0.6 sits on the user's own photos, measured honestly, and a run's validation figures.

face_recognition's users compare distances with 0.6. For dlib on general faces 0.6 is close to the
point of best balanced accuracy: about as many same-person pairs rejected as different-person pairs let
through. A fine-tuned network has other units, so its output is scaled to put 0.6 at that point again,
now for the user's own people (:func:`operating_point`; the equal-error point is the other rule offered).

The pairs it is measured on are those a user meets when predicting: each validation photo (unseen by
the training) against every training photo and every other validation photo (:func:`probe_pairs`). The
threshold is fit on some validation photos' pairs and its accept rates read on the others' (k folds
over the validation photos, pooled), so the rates reported are those of photos the threshold was not
fit on. Balanced accuracy is always measurable; a false-accept target (``target_far``) that the pairs
cannot measure falls back to the smallest measurable rate, and says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TOLERANCE = 0.6  # face_recognition's default: what the output is calibrated to


@dataclass
class ProbePairs:
    """Pairs of (probe, gallery) and (probe, probe) photos.

    :ivar dist: (m,) float64 Euclidean distances. :ivar same: (m,) bool, same person.
    :ivar a: (m,) int, the probe of each pair. :ivar b: (m,) int, the other end: ``n_probes + j`` for
        gallery photo j, or a probe index.
    """

    dist: np.ndarray
    same: np.ndarray
    a: np.ndarray
    b: np.ndarray
    n_probes: int


def probe_pairs(gallery_emb: np.ndarray, gallery_y: np.ndarray, probe_emb: np.ndarray,
                probe_y: np.ndarray) -> ProbePairs:
    """Every probe against every gallery photo and every other probe (each probe pair once).

    :param gallery_emb: (g, d) float. :param probe_emb: (p, d) float. Labels: int or str arrays.
    """
    g = np.asarray(gallery_emb, np.float64)
    p = np.asarray(probe_emb, np.float64)
    n_p, n_g = len(p), len(g)
    from .metrics import cross_distances

    cross = cross_distances(p, g)  # through the Gram matrix: no (p, g, d) intermediate
    ia, ib = np.triu_indices(n_p, k=1)
    within = np.linalg.norm(p[ia] - p[ib], axis=1)
    a = np.concatenate([np.repeat(np.arange(n_p), n_g), ia])
    b = np.concatenate([np.tile(np.arange(n_g), n_p) + n_p, ib])
    labels = np.concatenate([np.asarray(probe_y), np.asarray(gallery_y)])
    dist = np.concatenate([cross.ravel(), within])
    return ProbePairs(dist, labels[a] == labels[b], a, b, n_p)


def _staircase(dist: np.ndarray, same: np.ndarray, weights: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pairs' distances sorted, (m,), and at each cut i = 0..m (accept the first i pairs), (m + 1,) each: the
    share of same-person pairs accepted, of different-person pairs let through, and whether the cut lies between
    two distinct distances. ``weights``: per-pair weights (bootstrap), default 1."""
    w = np.ones(len(dist)) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(dist, kind="stable")
    d, s, w = dist[order], same[order], w[order]
    n_same, n_diff = w[s].sum(), w[~s].sum()
    if n_same == 0 or n_diff == 0:
        raise ValueError("need both same-person and different-person pairs")
    tpr = np.concatenate([[0.0], np.cumsum(w * s) / n_same])
    fpr = np.concatenate([[0.0], np.cumsum(w * ~s) / n_diff])
    valid = np.concatenate([[True], np.append(d[1:] > d[:-1], True)])
    return d, tpr, fpr, valid


def _threshold_at(d: np.ndarray, i: int) -> float:
    """The distance threshold of cut ``i`` of the sorted distances ``d``: midway between the two it separates."""
    if i == 0:
        return float(d[0]) / 2
    if i == len(d):
        return float(d[-1]) * 1.05 + 1e-6
    return float((d[i - 1] + d[i]) / 2)


def balanced_threshold(dist: np.ndarray, same: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The distance threshold of best balanced accuracy (accept ``dist <= t``); ties go to the cut
    closest to equal error. ``weights``: per-pair weights (bootstrap), default 1."""
    d, tpr, fpr, valid = _staircase(dist, same, weights)
    score = np.where(valid, (tpr + 1 - fpr) / 2, -np.inf)
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return _threshold_at(d, best[np.argmin(np.abs((1 - tpr[best]) - fpr[best]))])


def equal_error_threshold(dist: np.ndarray, same: np.ndarray) -> float:
    """The distance threshold where as many same-person pairs are rejected as different-person pairs are
    let through (accept ``dist <= t``): the cut between distinct distances that brings the two shares
    closest, placed midway between them. Perfectly separated pairs give the middle of the gap."""
    d, tpr, fpr, valid = _staircase(dist, same)
    return _threshold_at(d, int(np.argmin(np.where(valid, np.abs((1 - tpr) - fpr), np.inf))))


def far_threshold(dist: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """The threshold letting through a share ``far`` of different-person pairs, and the rate used
    (the smallest measurable one, one false accept, when ``far`` is too small for these pairs)."""
    from . import metrics

    n_diff = int((~same).sum())
    used = far if n_diff * far >= 1 else 1.0 / n_diff
    return float(metrics.threshold_at_far(dist, same, used)), used


@dataclass
class OperatingPoint:
    """What tolerance 0.6 means for one network on the user's photos.

    :ivar method: ``"balanced"`` (best balanced accuracy), ``"equal_error"``, ``"far"`` (``target_far``) or ``"none"``
        (not calibrated: dlib as is).
    :ivar threshold: raw distance, fit on all the pairs, that the output scale maps to 0.6.
    :ivar scale: ``0.6 / threshold`` (1.0 when not calibrated).
    :ivar same_accepted: share of same-person pairs with distance ≤ 0.6 after scaling, cross-validated.
    :ivar different_accepted: share of different-person pairs let through at 0.6, cross-validated.
    """

    method: str
    threshold: float
    scale: float
    same_accepted: float
    different_accepted: float
    n_same_pairs: int
    n_different_pairs: int
    folds: int
    target_far: float | None = None
    far_used: float | None = None
    fold_thresholds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def balanced_accuracy(self) -> float:
        return (self.same_accepted + 1 - self.different_accepted) / 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "balanced_accuracy": self.balanced_accuracy}


def _fit(dist: np.ndarray, same: np.ndarray, target_far: float | None, rule: str) -> tuple[float, float | None]:
    if target_far is not None:
        return far_threshold(dist, same, target_far)
    if rule == "equal_error":
        return equal_error_threshold(dist, same), None
    if rule == "balanced":
        return balanced_threshold(dist, same), None
    raise ValueError(f"calibration rule must be 'balanced' or 'equal_error', not {rule!r}")


def probe_folds(n_probes: int, folds: int, seed: int) -> np.ndarray:
    """(n_probes,) int fold of each probe, seeded; ``min(folds, n_probes)`` folds of near-equal size."""
    k = max(1, min(folds, n_probes))
    return np.random.default_rng(seed).permutation(np.arange(n_probes) % k)


def operating_point(pairs: ProbePairs, *, calibrate: bool = True, target_far: float | None = None,
                    rule: str = "balanced", folds: int = 5, seed: int = 0) -> tuple[OperatingPoint, np.ndarray]:
    """Calibrate on ``pairs`` and measure the result on pairs the threshold was not fit on.

    ``rule`` (without ``target_far``): ``"balanced"`` (:func:`balanced_threshold`) or ``"equal_error"``
    (:func:`equal_error_threshold`).

    :return: the operating point, and (n_probes,) the raw threshold that applies to each probe (the one
        fit without its fold; 0.6 everywhere when ``calibrate`` is False).
    """
    dist, same = pairs.dist, pairs.same
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if not calibrate:
        accept = dist <= TOLERANCE
        point = OperatingPoint("none", TOLERANCE, 1.0, float(accept[same].mean()), float(accept[~same].mean()),
                               n_same, n_diff, 0)
        return point, np.full(pairs.n_probes, TOLERANCE)
    fold = probe_folds(pairs.n_probes, folds, seed)
    end_fold = np.concatenate([fold, np.full(max(int(pairs.b.max(initial=0)) + 1 - pairs.n_probes, 0), -1)])
    fa, fb = end_fold[pairs.a], end_fold[pairs.b]
    per_probe = np.empty(pairs.n_probes)
    accepted_same = accepted_diff = counted_same = counted_diff = 0
    thresholds = []
    notes = set()
    for k in range(fold.max() + 1):
        test = (fa == k) | (fb == k)
        fit = ~test
        if not (same[fit].any() and (~same[fit]).any()):  # too few photos to hold a fold out: fit on all
            fit = np.ones_like(test)
            notes.add("too few photos to hold folds out: some thresholds were fit on all pairs")
        t, _ = _fit(dist[fit], same[fit], target_far, rule)
        thresholds.append(t)
        per_probe[fold == k] = t
        acc = dist[test] <= t
        accepted_same += int(acc[same[test]].sum())
        accepted_diff += int(acc[~same[test]].sum())
        counted_same += int(same[test].sum())
        counted_diff += int((~same[test]).sum())
    threshold, far_used = _fit(dist, same, target_far, rule)
    if target_far is not None and far_used != target_far:
        notes.add(f"only {n_diff} different-person pairs: calibrated at FAR {far_used:.2g} instead of "
                  f"{target_far:g}")
    if threshold <= 0:
        point = OperatingPoint("none", TOLERANCE, 1.0, float(np.mean(dist[same] <= TOLERANCE)),
                               float(np.mean(dist[~same] <= TOLERANCE)), n_same, n_diff, 0,
                               note="degenerate threshold: not calibrated")
        return point, np.full(pairs.n_probes, TOLERANCE)
    point = OperatingPoint(rule if target_far is None else "far", threshold, TOLERANCE / threshold,
                           accepted_same / max(counted_same, 1), accepted_diff / max(counted_diff, 1),
                           n_same, n_diff, int(fold.max() + 1), target_far, far_used,
                           [float(t) for t in thresholds], "; ".join(sorted(notes)))
    return point, per_probe


def knn_correct(gallery_emb: np.ndarray, gallery_y: np.ndarray, probe_emb: np.ndarray, probe_y: np.ndarray,
                thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The user's path, per probe: train-knn on the gallery, predict the probe, "unknown" beyond its
    threshold. :return: ``(correct, rejected)`` (p,) bool: named rightly; right person but "unknown"."""
    from .knn import FaceKNN

    knn = FaceKNN("auto").fit(gallery_emb, np.asarray(gallery_y).astype(str))
    _, dist, people = knn.predict_with_distance(probe_emb, threshold=np.inf)
    right = people == np.asarray(probe_y).astype(str)
    within = dist <= thresholds
    return right & within, right & ~within


GROWN_GROUPS = 5  # groups of validation photos named in turn against the others (5 fits, not one per photo)


def knn_correct_grown(gallery_emb: np.ndarray, gallery_y: np.ndarray, probe_emb: np.ndarray, probe_y: np.ndarray,
                      thresholds: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_correct` with a gallery nearer the user's: the probes are dealt into :data:`GROWN_GROUPS`
    seeded groups, and each group is named against the gallery plus the probes of the other groups.

    The user's train-knn holds every photo, while a run is judged on a gallery of the photos it trained on
    (half of them when cross-fitting); dlib with train-knn's class means gains more from a larger gallery
    than a fine-tuned network does, so a small gallery overrates fine-tuning (BENCHMARKS.md)."""
    group = probe_folds(len(probe_y), GROWN_GROUPS, seed)
    probe_y = np.asarray(probe_y)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(probe_y),))
    correct, rejected = np.zeros(len(probe_y), bool), np.zeros(len(probe_y), bool)
    for g in np.unique(group):
        named, others = group == g, group != g
        correct[named], rejected[named] = knn_correct(
            np.concatenate([gallery_emb, probe_emb[others]]), np.concatenate([np.asarray(gallery_y), probe_y[others]]),
            probe_emb[named], probe_y[named], thresholds[named])
    return correct, rejected


# --- validation figures of a run -------------------------------------------------------------------------

def validation_metrics(train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray, val_y: np.ndarray,
                       far: float) -> dict[str, Any]:
    """1-NN identification accuracy of validation faces against the training gallery, and verification
    over the validation pairs (AUC, TAR at ``far`` and 1e-2 where measurable)."""
    from . import metrics

    nearest, _ = metrics.nearest_identity(train_emb, train_y, val_emb)
    acc = float(np.mean(nearest == val_y))
    dist, same = metrics.pair_distances(val_emb, val_y)
    out: dict[str, Any] = {"identification_1nn": acc, "n_val": int(len(val_y))}
    if same.any() and (~same).any():
        out["auc"] = metrics.auc(dist, same)
        for r in metrics.tar_at_far(dist, same, sorted({far, 1e-2})):
            out[f"tar@far={r.far:g}"] = r.tar
    return out


def head_open_set_threshold(head, val_emb: np.ndarray, val_y: np.ndarray, far: float) -> dict[str, Any]:
    """Cosine threshold below which ``predict --classifier head`` says "unknown".

    A stranger is named when their best cosine over all trained people passes the threshold, so each
    validation face stands in for a stranger through its best cosine among the *other* people; the
    threshold lets through a fraction ``far`` of those (with fewer than ``1 / far`` faces: none of them).
    """
    import torch

    with torch.no_grad():
        cos = head.predict(torch.from_numpy(val_emb).float().to(next(head.parameters()).device)).cpu().numpy()
    rows = np.arange(len(val_y))
    others = cos.copy()
    others[rows, val_y] = -np.inf
    impostor = np.sort(others.max(axis=1))[::-1]  # best wrong-person cosine of each face, highest first
    k = int(np.floor(far * len(impostor)))
    # accept cos >= threshold: just above the (k+1)-th highest impostor, so that k of them pass
    threshold = float(np.nextafter(impostor[k], np.inf)) if len(impostor) else 0.0
    genuine = cos[rows, val_y]
    return {"cosine_threshold": threshold, "far": far, "n_validation_faces": int(len(val_y)),
            "validation_accept_rate": float(np.mean(genuine >= threshold)),
            "validation_false_alarm_rate": float(np.mean(impostor >= threshold))}
