"""How far fine-tuning may move from dlib, chosen from how well dlib tells the user's people apart.

dlib's tolerance 0.6 lets about 1 % of different-person pairs through on general faces. On people it
confuses (kpop_idols15: 89-97 % of the training photos' different-person pairs within 0.6) the network
has to move further than the weight anchor lets it, and ``--regime distill`` does that while keeping
dlib's descriptors of faces nobody trained on. Where dlib already separates the people (0-6 % on every
other labelled set measured) the anchored regime loses nothing. Torch-free: it reads encodings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics
from .calibration import TOLERANCE
from .train_config import CONFUSED_SHARE

__all__ = ["MAX_PHOTOS", "RegimeChoice", "choose_regime", "sample_photos"]

MAX_PHOTOS = 1000  # photos whose pairs are measured (500,000 pairs at most), a seeded draw beyond


@dataclass(frozen=True)
class RegimeChoice:
    """:ivar regime: ``"anchor"`` or ``"distill"``.
    :ivar dlib_different_within_tolerance: share of the measured different-person pairs whose dlib
        distance is at most :data:`dlibplus.calibration.TOLERANCE` (nan when every photo is of one person).
    :ivar n_photos: photos whose pairs were measured.
    """

    regime: str
    dlib_different_within_tolerance: float
    n_photos: int
    threshold: float = CONFUSED_SHARE

    def to_dict(self) -> dict:
        return {"regime": self.regime, "chosen_by": "auto", "n_photos": self.n_photos,
                "dlib_different_pairs_within_0.6": self.dlib_different_within_tolerance,
                "threshold": self.threshold}

    def describe(self) -> str:
        """One line for the user: what dlib does with their photos and what that decided."""
        share = f"{self.dlib_different_within_tolerance:.0%}"
        if self.regime == "distill":
            return (f"dlib puts {share} of the different-person pairs of your photos within 0.6 (about 1% on "
                    "general faces): training to move further from it (--regime distill; --regime anchor "
                    "stays closer)")
        return (f"dlib puts {share} of the different-person pairs of your photos within 0.6: training close to "
                "it (--regime anchor; --regime distill moves further)")


def sample_photos(labels: np.ndarray, seed: int = 0, limit: int = MAX_PHOTOS) -> np.ndarray:
    """(k,) int64 rows of at most ``limit`` photos to measure, a seeded draw when there are more, sorted."""
    n = len(labels)
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False)).astype(np.int64)


def choose_regime(embeddings: np.ndarray, labels: np.ndarray, threshold: float = CONFUSED_SHARE) -> RegimeChoice:
    """``distill`` when dlib puts more than ``threshold`` of the different-person pairs within 0.6.

    :param embeddings: (n, 128) float, dlib's descriptors of the user's photos (:func:`sample_photos`).
    :param labels: (n,) the person of each photo.
    """
    dist, same = metrics.pair_distances(np.asarray(embeddings, np.float64), np.asarray(labels))
    different = dist[~same]
    share = float(np.mean(different <= TOLERANCE)) if len(different) else float("nan")
    regime = "distill" if share > threshold else "anchor"  # nan (one person): anchor
    return RegimeChoice(regime, share, len(labels), threshold=threshold)
