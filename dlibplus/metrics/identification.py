"""Identification: who is this face? Closed-set accuracy, confusion, per-person errors, open-set DIR/FAR.

A *gallery* holds enrolled encodings with their people's labels; *probes* are queried against it by
1-nearest neighbour (:func:`nearest_identity`, Euclidean distance over all gallery images). Labels may be of
any comparable dtype (str, int). Closed set: every probe's person is enrolled. Open set: some probes are
strangers, and a match is accepted only within a distance threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..jsonutil import JSONFields
from ._common import DEFAULT_THRESHOLD, _check_encodings, _check_labels, _last_within, _shortfall
from .distances import nearest_index

__all__ = ["DirAtFar", "IdentificationReport", "OpenSetResult", "PersonRow", "confusion_matrix", "dir_at_far",
           "identification_accuracy", "identification_report", "nearest_identity", "open_set_dir_far",
           "open_set_from_nearest", "per_person_report"]


def identification_accuracy(true: Any, pred: Any) -> float:
    """Share of probes whose predicted identity equals the true one (``sklearn.metrics.accuracy_score``)."""
    t = np.asarray(true)
    p = np.asarray(pred)
    if t.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(f"true and pred must be non-empty 1-d of equal length, got {t.shape} and {p.shape}")
    return float(np.mean(t == p))


def _codes(values: np.ndarray, classes: np.ndarray, name: str) -> np.ndarray:
    order = np.argsort(classes, kind="mergesort")
    sorted_classes = classes[order]
    pos = np.searchsorted(sorted_classes, values)
    pos = np.clip(pos, 0, sorted_classes.size - 1)
    found = sorted_classes[pos] == values
    if not np.all(found):
        missing = sorted({str(v) for v in values[~found]})
        raise ValueError(f"{name} holds labels missing from classes: {missing[:10]}")
    return order[pos]


def _classes(true: np.ndarray, pred: np.ndarray, classes: Any) -> np.ndarray:
    if classes is None:
        return np.unique(np.concatenate([true, pred]))
    c = np.asarray(classes)
    if c.ndim != 1 or np.unique(c).size != c.size:
        raise ValueError("classes must be a 1-d list of distinct labels")
    return c


def confusion_matrix(true: Any, pred: Any, classes: Any = None) -> np.ndarray:
    """``(k, k)`` int64 counts, rows = true identity, columns = predicted identity, in ``classes`` order
    (default: sorted labels seen). Same as ``sklearn.metrics.confusion_matrix(true, pred, labels=classes)``,
    except that a label outside ``classes`` raises ``ValueError`` instead of being dropped."""
    t = np.asarray(true)
    p = np.asarray(pred)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"true and pred must be 1-d of equal length, got {t.shape} and {p.shape}")
    c = _classes(t, p, classes)
    k = c.size
    ti = _codes(t, c, "true")
    pi = _codes(p, c, "pred")
    return np.bincount(ti * k + pi, minlength=k * k).reshape(k, k).astype(np.int64)


@dataclass(frozen=True)
class PersonRow:
    """One person of :func:`per_person_report`: ``confused_with`` lists ``(predicted name, count)`` of the
    wrong predictions, most frequent first."""

    name: str
    n: int
    correct: int
    accuracy: float
    confused_with: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict:
        return {
            "name": self.name, "n": self.n, "correct": self.correct, "accuracy": self.accuracy,
            "confused_with": [{"name": name, "count": count} for name, count in self.confused_with],
        }


def per_person_report(true: Any, pred: Any, classes: Any = None) -> list[PersonRow]:
    """Accuracy of each person that has probes, worst first (then by name), with whom they are taken for.

    ``classes`` (default: the labels seen) may include labels such as ``"unknown"`` that only appear as
    predictions.
    """
    t = np.asarray(true)
    p = np.asarray(pred)
    c = _classes(t, p, classes)
    matrix = confusion_matrix(t, p, c)
    rows = []
    for k in range(c.size):
        n = int(matrix[k].sum())
        if n == 0:
            continue
        wrong = [(str(c[j]), int(matrix[k, j])) for j in np.nonzero(matrix[k])[0] if j != k]
        wrong.sort(key=lambda item: (-item[1], item[0]))
        correct = int(matrix[k, k])
        rows.append(PersonRow(str(c[k]), n, correct, correct / n, tuple(wrong)))
    rows.sort(key=lambda r: (r.accuracy, r.name))
    return rows


@dataclass(frozen=True)
class IdentificationReport:
    """Closed-set identification summary; the full confusion matrix is left to :func:`confusion_matrix`."""

    accuracy: float
    n_probes: int
    n_people: int
    per_person: tuple[PersonRow, ...]

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy, "n_probes": self.n_probes, "n_people": self.n_people,
            "per_person": [row.to_dict() for row in self.per_person],
        }


def identification_report(true: Any, pred: Any, classes: Any = None) -> IdentificationReport:
    """Accuracy and :func:`per_person_report` of closed-set predictions."""
    rows = per_person_report(true, pred, classes)
    return IdentificationReport(identification_accuracy(true, pred), len(np.asarray(true)), len(rows), tuple(rows))


def nearest_identity(
    gallery_enc: np.ndarray, gallery_labels: Any, probe_enc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1-nearest-neighbour identification: ``(labels (p,), distances (p,) float64)`` of each probe's closest
    gallery encoding (over all gallery images, not per-person means).

    Args:
        gallery_enc: ``(g, d)`` enrolled encodings, ``g >= 1``; gallery_labels ``(g,)`` any dtype.
        probe_enc: ``(p, d)`` query encodings.
    """
    g = _check_encodings(gallery_enc, "gallery_enc")
    q = _check_encodings(probe_enc, "probe_enc")
    gl = _check_labels(gallery_labels, g.shape[0], "gallery_labels")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty")
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"gallery and probes differ in dimension: {g.shape[1]} vs {q.shape[1]}")
    idx, dist = nearest_index(g, q)
    return gl[idx], dist


# ----------------------------------------------------------------------------------------------------------
# Open set


@dataclass(frozen=True)
class OpenSetResult(JSONFields):
    """Open-set identification at thresholds ``t``.

    - ``dir``: detection-and-identification rate, known probes whose nearest gallery encoding has the right
      identity *and* lies at distance ``<= t``;
    - ``far``: false-alarm rate, unknown probes whose nearest gallery encoding lies at distance ``<= t``;
    - ``rank1``: closed-set accuracy of the known probes (``dir`` as ``t`` grows without bound).

    ``thresholds``, ``dir`` and ``far`` are float64 ``(t,)``; ``curve_thresholds``, ``curve_dir`` and
    ``curve_far`` (float64 ``(u,)``, thresholds increasing) trace both rates at every distinct nearest distance
    of a hit or a stranger. A rate is NaN when there is no probe of its kind.
    """

    thresholds: np.ndarray
    dir: np.ndarray
    far: np.ndarray
    rank1: float
    n_known: int
    n_unknown: int
    curve_thresholds: np.ndarray
    curve_dir: np.ndarray
    curve_far: np.ndarray


def open_set_dir_far(
    gallery_enc: np.ndarray,
    gallery_labels: Any,
    probe_enc: np.ndarray,
    probe_labels: Any,
    known_mask: Any = None,
    thresholds: Sequence[float] | float = (DEFAULT_THRESHOLD,),
) -> OpenSetResult:
    """Detection-and-identification rate vs false-alarm rate of 1-NN identification with a reject threshold.

    Args:
        gallery_enc: ``(g, d)`` enrolled encodings; gallery_labels ``(g,)``.
        probe_enc: ``(p, d)`` query encodings; probe_labels ``(p,)`` (ignored for unknown probes).
        known_mask: ``(p,)`` bool, True for probes of people enrolled in the gallery; default: probe label is
            among the gallery labels.
        thresholds: distance thresholds to report (accept the match when ``distance <= t``).
    """
    g = _check_encodings(gallery_enc, "gallery_enc")
    q = _check_encodings(probe_enc, "probe_enc")
    gl = _check_labels(gallery_labels, g.shape[0], "gallery_labels")
    pl = _check_labels(probe_labels, q.shape[0], "probe_labels")
    if known_mask is None:
        known = np.isin(pl, gl)
    else:
        known = _check_labels(known_mask, q.shape[0], "known_mask").astype(bool)
    pred, dist = nearest_identity(g, gl, q)
    return open_set_from_nearest(pred, dist, pl, known, thresholds)


def open_set_from_nearest(
    nearest_labels: Any,
    nearest_distances: Any,
    probe_labels: Any,
    known_mask: Any,
    thresholds: Sequence[float] | float = (DEFAULT_THRESHOLD,),
) -> OpenSetResult:
    """:func:`open_set_dir_far` from each probe's nearest gallery encoding, already found (e.g. by
    :func:`nearest_identity`, whose closed-set answer for the known probes is then reused, not searched again).

    Args:
        nearest_labels: ``(p,)`` label of each probe's nearest gallery encoding.
        nearest_distances: ``(p,)`` float distance to it.
        probe_labels: ``(p,)`` true labels (ignored for unknown probes).
        known_mask: ``(p,)`` bool, True for probes of people enrolled in the gallery.
        thresholds: distance thresholds to report.
    """
    dist = np.asarray(nearest_distances, dtype=np.float64)
    pl = _check_labels(probe_labels, dist.shape[0], "probe_labels")
    pred = _check_labels(nearest_labels, dist.shape[0], "nearest_labels")
    known = _check_labels(known_mask, dist.shape[0], "known_mask").astype(bool)
    hit = known & (pred == pl)
    n_known, n_unknown = int(known.sum()), int((~known).sum())
    hit_d = np.sort(dist[hit])
    alarm_d = np.sort(dist[~known])

    def rates(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dir_ = np.searchsorted(hit_d, t, side="right") / n_known if n_known else np.full(t.shape, np.nan)
        far = np.searchsorted(alarm_d, t, side="right") / n_unknown if n_unknown else np.full(t.shape, np.nan)
        return np.asarray(dir_, dtype=np.float64), np.asarray(far, dtype=np.float64)

    ts = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    dir_at, far_at = rates(ts)
    curve_t = np.unique(np.r_[hit_d, alarm_d])
    curve_dir, curve_far = rates(curve_t)
    rank1 = float(hit.sum() / n_known) if n_known else float("nan")
    return OpenSetResult(ts, dir_at, far_at, rank1, n_known, n_unknown, curve_t, curve_dir, curve_far)


@dataclass(frozen=True)
class DirAtFar(JSONFields):
    """The open set's detection-and-identification rate at a target false-alarm rate, or why it cannot be
    measured.

    ``threshold`` is the largest distance threshold whose false-alarm rate stays ``<= far`` and ``dir`` the rate
    there; ``achieved_far`` is the false-alarm rate it gives. When even the smallest nearest distance is a false
    alarm, nothing can be accepted: ``dir`` and ``achieved_far`` are 0, ``threshold`` is ``None``. With fewer than
    ``1 / far`` unknown probes the target is out of reach: ``dir``, ``threshold`` and ``achieved_far`` are
    ``None`` and ``reason`` says why.
    """

    far: float
    dir: float | None
    threshold: float | None
    achieved_far: float | None
    reason: str | None = None


def dir_at_far(result: OpenSetResult, fars: Sequence[float]) -> list[DirAtFar]:
    """DIR at each target false-alarm rate, read off ``result``'s curve by the same operating-point search as
    :func:`~dlibplus.metrics.tar_at_far` (largest threshold within the budget, no interpolation)."""
    out = []
    for f in fars:
        need = _shortfall(f, result.n_unknown)
        if need is not None:
            out.append(DirAtFar(f, None, None, None, f"false-alarm rate {f:g} needs at least {need} unknown "
                                                     f"probes, only {result.n_unknown}"))
            continue
        k = _last_within(result.curve_far, f)
        if k < 0:  # even the smallest distance is a false alarm: accept nothing
            out.append(DirAtFar(f, 0.0, None, 0.0))
            continue
        out.append(DirAtFar(f, float(result.curve_dir[k]), float(result.curve_thresholds[k]),
                            float(result.curve_far[k])))
    return out
