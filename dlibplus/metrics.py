"""Face verification and identification metrics, as pure functions on numpy arrays.

Conventions, the same as face_recognition's:

- an *encoding* is a float vector (dlib: 128-d, not L2-normalised); the *distance* between two encodings is
  Euclidean;
- two faces are called "the same person" when ``distance <= threshold`` (inclusive; dlib's threshold is 0.6).
  A lower threshold is stricter: fewer false accepts, fewer true accepts;
- the score used for ROC curves is ``-distance``.

Rates: TAR (true accept rate) is the share of same-person pairs accepted, FAR (false accept rate) the share of
different-person pairs accepted, FRR = 1 - TAR. Every function here returns numbers or small result objects;
nothing is printed and nothing is plotted (see :mod:`dlibplus.plots`). Only numpy is imported.

Errors in the arrays passed (wrong shapes, NaN, no same-person pair at all) raise ``ValueError``; a
malformed pairs file raises :class:`PairsFileError`, which names the file and line.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .errors import DlibplusError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.6
DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)
_BLOCK_ELEMENTS = 1 << 22  # entries of one distance block (4M float64 = 32 MiB)
_REL_TOL = 1e-9  # slack when comparing a count against far * n


class PairsFileError(DlibplusError):
    """A pairs file (LFW ``pairs.txt`` or CSV) that is missing or malformed."""

    def __init__(self, path: os.PathLike | str, reason: str, line: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"bad pairs file {where}: {reason}")


# ----------------------------------------------------------------------------------------------------------
# JSON helper


class JSONFields:
    """Mixin for result dataclasses: ``to_dict()`` gives every field, JSON-ready (see ``_jsonable``)."""

    def to_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(obj: Any) -> Any:
    """Plain Python types for ``json.dumps(..., allow_nan=False)``: NaN and +-inf become ``None``."""
    if hasattr(obj, "to_dict") and dataclasses.is_dataclass(obj):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (str, type(None))):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


# ----------------------------------------------------------------------------------------------------------
# Input checks


def _check_encodings(encodings: np.ndarray, name: str = "encodings") -> np.ndarray:
    x = np.asarray(encodings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    return y


def _check_pairs(distances: Any, same: Any, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
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


# ----------------------------------------------------------------------------------------------------------
# Distances


def _row_blocks(n_rows: int, n_cols: int) -> range:
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    return range(0, n_rows, step)


def _block_distances(a: np.ndarray, b: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(a), len(b))`` through the Gram matrix, clipped at 0."""
    d2 = sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def paired_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distances ``(m,)`` between two ``(m, d)`` arrays (e.g. the two sides of a pairs file)."""
    a = _check_encodings(a, "a")
    b = _check_encodings(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def _iter_pair_blocks(x: np.ndarray):
    """Yield ``(start, i, j, d)`` for all pairs i<j of ``x``, in row-major (``pdist``) order, block by block.

    ``start`` is the position of the block's first pair in the full list, ``i`` and ``j`` int64 indices. Each
    block holds at most ~4M distances, sized to the rows left.
    """
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    a = 0
    while a < n - 1:
        b = min(n - 1, a + max(1, _BLOCK_ELEMENTS // (n - a)))
        d = _block_distances(x[a:b], x[a:], sq[a:b], sq[a:])
        rows = np.arange(a, b)
        cols = np.arange(a, n)
        mask = cols[None, :] > rows[:, None]
        ii, jj = np.nonzero(mask)
        start = a * (n - 1) - a * (a - 1) // 2
        yield start, ii + a, jj + a, d[mask]
        a = b


def pair_distances(encodings: np.ndarray, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distances and same-person flags of all pairs ``i < j`` of ``encodings``.

    Args:
        encodings: ``(n, d)`` float array.
        labels: ``(n,)`` person of each encoding (any comparable dtype: str, int).

    Returns:
        ``(distances, same)``: float64 ``(m,)`` Euclidean distances and bool ``(m,)``, with
        ``m = n (n - 1) / 2`` in ``scipy.spatial.distance.pdist`` order ((0,1), (0,2), ..., (1,2), ...).
        Computed in blocks of rows (at most ~4M distances at a time), so n = 5000 needs about 110 MB for the
        results and 100 MB of scratch. Distances go through the Gram matrix; their absolute error is ~1e-15
        for dlib-sized vectors, more (~1e-8) only for distances near 0.
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


# ----------------------------------------------------------------------------------------------------------
# ROC and its summaries


class Roc(NamedTuple):
    """An ROC curve in distance units: accept a pair when ``distance <= thresholds[k]``.

    ``far`` and ``tar`` are non-decreasing; the first point is (0, 0) with threshold ``-inf`` (nothing
    accepted), mirroring scikit-learn's ``+inf`` score threshold.
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray


class _SortedPairs(NamedTuple):
    """Pairs sorted by distance, with cumulative counts at the end of each run of tied distances."""

    d: np.ndarray  # (m,) sorted distances
    s: np.ndarray  # (m,) same flags in that order
    order: np.ndarray  # (m,) the permutation applied
    thresholds: np.ndarray  # (u,) distinct distances
    tps: np.ndarray  # (u,) same pairs with distance <= thresholds[k]
    fps: np.ndarray  # (u,) different pairs with distance <= thresholds[k]


def _counts(ds: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values and cumulative same/different counts of already sorted pairs."""
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
    order = np.argsort(d)  # ties may come in any order: counts are taken at the end of each run
    ds, ss = d[order], s[order]
    return _SortedPairs(ds, ss, order, *_counts(ds, ss))


def _roc(sp: _SortedPairs, drop_intermediate: bool = False) -> Roc:
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


def _check_fars(fars: Sequence[float] | float) -> tuple[float, ...]:
    values = (fars,) if np.isscalar(fars) else tuple(fars)
    for f in values:
        if not (0.0 < float(f) <= 1.0):
            raise ValueError(f"a target FAR must lie in (0, 1], got {f}")
    return tuple(float(f) for f in values)


def _not_measurable_reason(far: float, n_different: float) -> str | None:
    if n_different * far < 1.0 - _REL_TOL:
        need = math.ceil(1.0 / far - _REL_TOL)
        return f"FAR {far:g} needs at least {need} different-person pairs, only {int(n_different)} available"
    return None


def _tar_at_far(roc: Roc, n_diff: int, d_min: float, fars: tuple[float, ...]) -> list[TarAtFar]:
    results = []
    for f in fars:
        reason = _not_measurable_reason(f, n_diff)
        if reason:
            results.append(TarAtFar(f, None, None, n_diff, None, reason))
            continue
        k = int(np.searchsorted(roc.far, f * (1.0 + _REL_TOL), side="right")) - 1
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
# LFW-style k-fold accuracy


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
        fold_ids: ``(m,)`` ints, the fold of each pair (e.g. from an LFW ``pairs.txt``, see :func:`read_pairs`).
    """
    d, s = _check_pairs(distances, same, need_both=False)
    return _kfold(d, s, None, folds, seed, fold_ids)


def _kfold(
    d: np.ndarray, s: np.ndarray, sp: _SortedPairs | None, folds: int, seed: int | None, fold_ids: Any
) -> KFoldResult:
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


# ----------------------------------------------------------------------------------------------------------
# Pairs files


@dataclass(frozen=True)
class PairList:
    """Image pairs to verify. ``folds`` is ``None`` when the file defines no folds (CSV)."""

    path1: tuple[Path, ...]
    path2: tuple[Path, ...]
    same: np.ndarray
    folds: np.ndarray | None

    def __len__(self) -> int:
        return len(self.path1)


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _lfw_image(root: Path, name: str, number: str, path: Path, line: int) -> Path:
    try:
        k = int(number)
    except ValueError:
        raise PairsFileError(path, f"image number {number!r} is not an integer", line) from None
    return root / name / f"{name}_{k:04d}.jpg"


def _read_lfw_pairs(path: Path, lines: list[str], root: Path) -> PairList:
    rows = [(k + 1, ln.split()) for k, ln in enumerate(lines) if ln.strip()]
    if not rows:
        raise PairsFileError(path, "the file is empty")
    head_line, header = rows[0]
    try:
        numbers = [int(v) for v in header]
    except ValueError:
        got = " ".join(header)
        raise PairsFileError(path, f"expected a header 'folds pairs_per_fold', got {got!r}", head_line) from None
    if len(numbers) == 2:
        n_folds, per_class = numbers
    elif len(numbers) == 1:
        n_folds, per_class = 1, numbers[0]
    else:
        raise PairsFileError(path, "the header must hold one or two integers", head_line)
    body = rows[1:]
    if len(body) != 2 * n_folds * per_class:
        raise PairsFileError(
            path, f"header announces {n_folds} x 2 x {per_class} = {2 * n_folds * per_class} pairs, found {len(body)}"
        )
    p1, p2, same = [], [], []
    for line, parts in body:
        if len(parts) == 3:
            name, i, j = parts
            p1.append(_lfw_image(root, name, i, path, line))
            p2.append(_lfw_image(root, name, j, path, line))
            same.append(True)
        elif len(parts) == 4:
            name1, i, name2, j = parts
            p1.append(_lfw_image(root, name1, i, path, line))
            p2.append(_lfw_image(root, name2, j, path, line))
            same.append(False)
        else:
            raise PairsFileError(path, f"expected 'name i j' or 'name1 i name2 j', got {len(parts)} fields", line)
    folds = np.arange(len(body)) // (2 * per_class) if per_class else np.zeros(0, dtype=np.int64)
    return PairList(tuple(p1), tuple(p2), np.array(same, dtype=bool), folds)


def _parse_same(value: str) -> bool | None:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return None


def _read_csv_pairs(path: Path, lines: list[str], root: Path) -> PairList:
    p1, p2, same = [], [], []
    header_seen = False
    for k, row in enumerate(csv.reader(lines)):
        line = k + 1
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 3:
            raise PairsFileError(path, f"expected 'path1,path2,same', got {len(row)} fields", line)
        flag = _parse_same(row[2])
        if flag is None:
            if not same and not header_seen:
                header_seen = True
                continue  # a header row such as "path1,path2,same"
            raise PairsFileError(path, f"'same' must be 1/0, true/false or yes/no, got {row[2]!r}", line)
        p1.append(root / row[0].strip())
        p2.append(root / row[1].strip())
        same.append(flag)
    if not same:
        raise PairsFileError(path, "no pairs found")
    return PairList(tuple(p1), tuple(p2), np.array(same, dtype=bool), None)


def read_pairs(path: os.PathLike | str, images_root: os.PathLike | str | None = None) -> PairList:
    """Read a list of image pairs.

    Two formats:

    - LFW ``pairs.txt``: a header ``"<folds> <pairs per class per fold>"`` (e.g. ``10 300``; a single number
      means one fold), then per fold the same-person lines ``name i j`` followed by the different-person lines
      ``name1 i name2 j``. Images resolve to ``<images_root>/<name>/<name>_<iiii>.jpg``; fold ids come from
      the line positions.
    - CSV (``.csv``, or a first line holding a comma): rows ``path1,path2,same`` with same as 1/0, true/false
      or yes/no, an optional header row, ``#`` comment lines. Relative paths resolve against ``images_root``.

    ``images_root`` defaults to the pairs file's folder. Image files are not checked for existence.
    """
    p = Path(path)
    root = Path(images_root) if images_root is not None else p.parent
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PairsFileError(p, exc.strerror or str(exc)) from exc
    except UnicodeDecodeError:
        raise PairsFileError(p, "not a UTF-8 text file") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if p.suffix.lower() == ".csv" or "," in first:
        return _read_csv_pairs(p, lines, root)
    return _read_lfw_pairs(p, lines, root)


# ----------------------------------------------------------------------------------------------------------
# Closed-set identification


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


def _nearest(gallery: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def nearest_identity(
    gallery_enc: np.ndarray, gallery_labels: Any, probe_enc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1-nearest-neighbour identification: ``(labels (p,), distances (p,))`` of each probe's closest gallery
    encoding (over all gallery images, not per-person means)."""
    g = _check_encodings(gallery_enc, "gallery_enc")
    q = _check_encodings(probe_enc, "probe_enc")
    gl = _check_labels(gallery_labels, g.shape[0], "gallery_labels")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty")
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"gallery and probes differ in dimension: {g.shape[1]} vs {q.shape[1]}")
    idx, dist = _nearest(g, q)
    return gl[idx], dist


# ----------------------------------------------------------------------------------------------------------
# Open-set identification


@dataclass(frozen=True)
class OpenSetResult(JSONFields):
    """Open-set identification at thresholds ``t``.

    - ``dir``: detection-and-identification rate, known probes whose nearest gallery encoding has the right
      identity *and* lies at distance ``<= t``;
    - ``far``: false-alarm rate, unknown probes whose nearest gallery encoding lies at distance ``<= t``;
    - ``rank1``: closed-set accuracy of the known probes (``dir`` as ``t`` grows without bound).

    ``curve_*`` trace both rates at every distinct nearest distance. A rate is NaN when there is no probe of its
    kind.
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


# ----------------------------------------------------------------------------------------------------------
# Bootstrap over people


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
    :func:`bootstrap_identification_diff` and :func:`bootstrap_tar_at_far_diff` for ready-made statistics.
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


class _WeightedTar:
    """TAR at one FAR under person weights, without recomputing pairs for each replicate.

    Resampling people and rebuilding all pairs i<j of the resampled set (copies of one person are distinct
    people, and pairs between two copies of a person are left out) gives each original pair a weight: ``w_p``
    for a same-person pair of person p, ``w_p * w_q`` for a different-person pair of p and q. Only the same
    pairs and the ``keep`` smallest different pairs are stored: the FAR threshold lies among them unless a
    replicate weights them down extremely (then the replicate is NaN).
    """

    head_factor = 2.0  # first pass over the head: head_factor * far * (pairs kept) + head_slack pairs
    head_slack = 1024

    def __init__(self, x: np.ndarray, codes: np.ndarray, n_people: int, far: float, keep: int | None = None):
        self.far = far
        self.sizes = np.bincount(codes, minlength=n_people).astype(np.float64)
        n = x.shape[0]
        m_diff = int(n * (n - 1) // 2 - np.sum(self.sizes * (self.sizes - 1) / 2))
        if keep is None:
            keep = max(200_000, int(math.ceil(50 * far * m_diff)))
        self.complete = keep >= m_diff
        same_d, same_p = [], []
        diff_d = np.empty(0)
        diff_i = np.empty(0, dtype=np.int32)
        diff_j = np.empty(0, dtype=np.int32)
        for _, i, j, d in _iter_pair_blocks(x):
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

    def __call__(self, w: np.ndarray) -> float:
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
    by two encoders, resampling people.

    Each replicate equals recomputing :func:`tar_at_far` on the pairs of the resampled people (copies of one
    person count as different people; pairs between two copies are not formed), but costs only one pass over
    the same-person pairs and the smallest different-person pairs. Replicates whose FAR is not measurable are
    NaN. Raises ``ValueError`` when it is not measurable on the data as they are.
    """
    xa = _check_encodings(encodings_a, "encodings_a")
    xb = _check_encodings(encodings_b, "encodings_b")
    if xa.shape[0] != xb.shape[0]:
        raise ValueError("both encoders must encode the same images")
    y = _check_labels(labels, xa.shape[0])
    (far,) = _check_fars(far)
    _, codes = np.unique(y, return_inverse=True)
    n_people = int(codes.max()) + 1 if codes.size else 0
    tar_a = _WeightedTar(xa, codes, n_people, far)
    tar_b = _WeightedTar(xb, codes, n_people, far)
    ones = np.ones(n_people)
    if not (np.isfinite(tar_a(ones)) and np.isfinite(tar_b(ones))):
        n_diff = (xa.shape[0] * (xa.shape[0] - 1)) // 2 - int(tar_a.same_d.size)
        reason = _not_measurable_reason(far, n_diff) or "no same-person pairs"
        raise ValueError(f"TAR@FAR={far:g} cannot be measured on these images: {reason}")
    return bootstrap_over_people(lambda w: tar_a(w) - tar_b(w), n_people, n_boot, seed, confidence)


# ----------------------------------------------------------------------------------------------------------
# Report


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

    ``roc_far``/``roc_tar`` is the ROC thinned for plotting. ``identification``, ``open_set`` and
    ``comparisons`` (name -> :class:`BootstrapResult`, e.g. ``"tar@1e-3 vs dlib"``) are filled by the caller
    when it has the data.
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
    identification: IdentificationReport | None = None
    open_set: OpenSetResult | None = None
    comparisons: dict[str, BootstrapResult] = field(default_factory=dict)


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
