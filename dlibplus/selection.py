"""Which network a fine-tuning run hands the user: dlib, a point between dlib and the fine-tuned weights,
or the fine-tuned weights themselves; never one that does worse than dlib on the user's photos.

Candidates are weight-space interpolations ``(1 - alpha) * dlib + alpha * fine_tuned`` (WiSE-FT,
Wortsman et al. 2022): cheap, and they keep much of the gain while staying closer to dlib on faces the
user did not train on. Each candidate is calibrated (:mod:`dlibplus.calibration`) and judged on the
user's path: train-knn on the training photos, predict each validation photo at tolerance 0.6, with
thresholds fit without that photo's fold. dlib is judged as it is (no calibration: what the user has
today). A candidate replaces dlib only when its accuracy gain holds up under a bootstrap over people
(the lower end of the one-sided 95 % interval above zero), or when it names at least as many photos
rightly and separates people better with confidence (the per-photo margin between the nearest impostor
and the nearest genuine photo, which has far more power than a right/wrong count on 1–2 validation
photos per person); in that second case it takes the smallest alpha that does so, since what people the user
never trained on lose grows with alpha while the validation photos cannot show it. Otherwise the run hands back
dlib, and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .calibration import OperatingPoint, knn_correct, knn_correct_grown, operating_point, probe_pairs

ALPHAS = (0.25, 0.5, 0.75, 1.0)  # interpolation weights of the fine-tuned network; dlib (0) is always judged
CONFIDENCE = 0.95  # one-sided: the share of bootstrap draws in which a candidate must gain over dlib


@dataclass
class Assessment:
    """One candidate network on the user's validation photos.

    :ivar alpha: 0 for dlib, 1 for the fine-tuned weights.
    :ivar correct: (p,) bool, each validation photo named rightly by train-knn + predict at 0.6.
    :ivar rejected: (p,) bool, right person but called "unknown".
    :ivar stranger_out: (p,) bool, no training photo of anyone else within the photo's threshold: as a stranger
        (its person absent from train-knn) it would certainly be called "unknown".
    """

    alpha: float
    point: OperatingPoint
    correct: np.ndarray
    rejected: np.ndarray
    margin: np.ndarray  # (p,) nearest impostor minus nearest genuine distance, over the median distance
    stranger_out: np.ndarray

    @property
    def mean_margin(self) -> float:
        return float(self.margin.mean()) if len(self.margin) else 0.0

    @property
    def name(self) -> str:
        return "dlib" if self.alpha == 0 else ("fine-tuned" if self.alpha == 1 else f"interpolated {self.alpha:g}")

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else 0.0

    @property
    def unknown_rate(self) -> float:
        return float(self.rejected.mean()) if len(self.rejected) else 0.0

    @property
    def strangers_out(self) -> float:
        """Share of validation photos a gallery without their person would call "unknown" (at least)."""
        return float(self.stranger_out.mean()) if len(self.stranger_out) else 0.0

    def summary(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "name": self.name, "knn_accuracy": self.accuracy,
                "unknown_rate": self.unknown_rate, "strangers_out": self.strangers_out, "mean_margin": self.mean_margin,
                "operating_point": self.point.to_dict()}


def assess(train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray, val_y: np.ndarray, *, alpha: float,
           calibrate: bool, target_far: float | None, seed: int, grown: bool = False,
           rule: str = "balanced") -> Assessment:
    """Calibrate one candidate's embeddings and measure the user's path with held-out thresholds.
    ``grown``: name the validation photos against the training photos plus other validation photos
    (:func:`~dlibplus.calibration.knn_correct_grown`), else against the training photos alone. ``rule``: how
    0.6 is placed (:func:`~dlibplus.calibration.operating_point`)."""
    pairs = probe_pairs(train_emb, train_y, val_emb, val_y)
    point, thresholds = operating_point(pairs, calibrate=calibrate, target_far=target_far, rule=rule, seed=seed)
    if grown:
        correct, rejected = knn_correct_grown(train_emb, train_y, val_emb, val_y, thresholds, seed)
    else:
        correct, rejected = knn_correct(train_emb, train_y, val_emb, val_y, thresholds)
    genuine, impostor, median = nearest_photos(train_emb, train_y, val_emb, val_y)
    return Assessment(alpha, point, correct, rejected, (impostor - genuine) / median, impostor > thresholds)


def nearest_photos(train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray, val_y: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """For each validation photo, the distance to the nearest training photo of the same person (genuine) and
    of someone else (impostor), (p,) float each, and the median distance between validation and training
    photos."""
    from .metrics import cross_distances

    d = cross_distances(val_emb, train_emb)
    same = np.asarray(val_y)[:, None] == np.asarray(train_y)[None, :]
    return np.where(same, d, np.inf).min(axis=1), np.where(~same, d, np.inf).min(axis=1), float(np.median(d))


def interpolate(base: Mapping[str, Any], tuned: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """State dict ``(1 - alpha) * base + alpha * tuned`` (floating tensors; others from ``tuned``)."""
    out = {}
    for key, t in tuned.items():
        b = base[key]
        out[key] = b.lerp(t, alpha) if t.is_floating_point() else t.clone()
    return out


@dataclass
class Selection:
    """The candidate a run keeps, and why."""

    chosen: Assessment
    dlib: Assessment
    candidates: list[Assessment]
    beats_dlib: bool
    gain: float  # accuracy of the best candidate minus dlib's
    gain_low: float  # lower end of the one-sided 95 % bootstrap interval of that gain
    reason: str
    forced: bool = False  # kept as asked (``keep="finetuned"``), not chosen by the validation photos

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen.summary(), "dlib": self.dlib.summary(),
                "candidates": [c.summary() for c in self.candidates], "beats_dlib": self.beats_dlib,
                "knn_accuracy_gain": self.gain, "knn_accuracy_gain_low": self.gain_low,
                "confidence": CONFIDENCE, "reason": self.reason}


def bootstrap_gain(a: np.ndarray, b: np.ndarray, groups: np.ndarray, *, n_boot: int = 2000, seed: int = 0
                   ) -> np.ndarray:
    """Bootstrap over groups (people) of ``mean(a) - mean(b)`` for per-item scores: (n_boot,) draws."""
    people, index = np.unique(groups, return_inverse=True)
    diff = np.bincount(index, weights=a.astype(float) - b.astype(float), minlength=len(people))
    count = np.bincount(index, minlength=len(people)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(people), np.full(len(people), 1 / len(people)), size=n_boot).astype(float)
    return (draws @ diff) / np.maximum(draws @ count, 1)


def select(candidates: list[Assessment], dlib: Assessment, val_y: np.ndarray, *, seed: int = 0,
           force: bool = False) -> Selection:
    """The best candidate by accuracy (then cross-validated balanced accuracy, then the smaller alpha),
    kept only when it beats dlib with confidence; ``force`` keeps the fine-tuned weights (alpha 1) whatever
    they measure."""
    best = max(candidates, key=lambda c: (round(c.accuracy, 12), round(c.mean_margin, 12),
                                          round(c.point.balanced_accuracy, 12), -c.alpha))
    if force:
        best = next(c for c in candidates if c.alpha == 1.0)
    groups = np.asarray(val_y)
    gain = best.accuracy - dlib.accuracy
    low = _gain_low(best.correct, dlib.correct, groups, seed)
    # with few validation photos a right/wrong count has little power; the margin of every photo (how far the
    # nearest impostor is beyond the nearest genuine photo) is paired and continuous, and has much more
    margin_low = _gain_low(best.margin, dlib.margin, groups, seed)
    sure = gain > 0 and low > 0
    separated = gain >= 0 and margin_low > 0
    if separated and not sure and not force:
        # kept on geometry alone: the margin grows with alpha on the user's own photos, and so does what people
        # the user never trained on lose; take the smallest alpha that names as many photos and separates better
        best = min((c for c in candidates if c.accuracy >= best.accuracy - 1e-12
                    and _gain_low(c.margin, dlib.margin, groups, seed) > 0), key=lambda c: c.alpha)
        gain = best.accuracy - dlib.accuracy
        low = _gain_low(best.correct, dlib.correct, groups, seed)
        margin_low = _gain_low(best.margin, dlib.margin, groups, seed)
    summary = (f"{best.name} names {best.accuracy:.1%} of the validation photos rightly at 0.6, dlib "
               f"{dlib.accuracy:.1%} (gain {gain:+.1%}, one-sided {CONFIDENCE:.0%} lower bound {low:+.1%}; "
               f"margin {best.mean_margin:+.3f} vs {dlib.mean_margin:+.3f}, gain's lower bound {margin_low:+.3f})")
    if force:
        return Selection(best, dlib, candidates, sure or separated, gain, low,
                         f"kept as asked (--keep finetuned): {summary}", forced=True)
    if sure or separated:
        return Selection(best, dlib, candidates, True, gain, low, summary)
    why = ("no candidate named more validation photos rightly than dlib" if gain < 0 else
           f"neither the accuracy gain nor the margin gain is sure enough on {len(val_y)} validation photos: "
           f"{summary}")
    return Selection(dlib, dlib, candidates, False, gain, low, why)


def _gain_low(a: np.ndarray, b: np.ndarray, groups: np.ndarray, seed: int) -> float:
    """Lower end of the one-sided bootstrap interval (over people) of ``mean(a) - mean(b)``."""
    return float(np.quantile(bootstrap_gain(a, b, groups, seed=seed), 1 - CONFIDENCE))
