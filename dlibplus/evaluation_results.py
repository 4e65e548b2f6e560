"""What ``dlibplus evaluate`` measures, as result objects: ``to_dict()`` is the content of ``metrics.json``.

:mod:`dlibplus.evaluate` computes them, :mod:`dlibplus.report` renders them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .faces import FaceSettings
from .jsonutil import jsonable
from .metrics import BootstrapResult, DirAtFar, IdentificationReport, OpenSetResult, VerificationReport


@dataclass(frozen=True)
class Comparison:
    """``metric(encoder) - metric(baseline)`` with a bootstrap-over-people CI (``ci.estimate`` is the
    difference on the data as they are). ``far`` is set for TAR comparisons."""

    encoder: str
    baseline: str
    metric: str
    value: float
    baseline_value: float
    ci: BootstrapResult
    far: float | None = None

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "baseline": self.baseline, "metric": self.metric, "far": self.far,
                "value": jsonable(self.value), "baseline_value": jsonable(self.baseline_value),
                "difference": jsonable(self.ci.estimate), "ci": self.ci.to_dict()}


@dataclass
class EncoderEvaluation:
    """Every number of one encoder. Arrays marked ``repr=False`` are per probe / per pair.

    :ivar knn_pred: (p_known,) the train-knn classifier's person for each known probe (closed set: never
        "unknown"). :ivar nn1_pred: (p_known,) the nearest gallery image's person.
    :ivar knn_distance, nn1_distance: (p_known,) float64 distances (encoding units) behind those predictions.
    :ivar confusion: (c, c) int64 counts, rows = true, columns = KNN prediction, in ``classes`` order.
    :ivar open_set, dir_at_far: with unknown probes only: DIR and false-alarm rates at the thresholds, and the
        DIR at each of ``OPEN_SET_FARS``.
    :ivar verification: all pairs of probe images; :ivar pairs: the pairs file's pairs (``None`` without one).
    :ivar distances, same: (m,) float64 / bool, all probe-image pairs in ``pdist`` order (``None`` when
        verification was impossible).
    """

    name: str
    spec: str
    threshold: float
    k: int
    loo_accuracy: dict[int, float]
    knn_accuracy: float
    nn1_accuracy: float
    identification: IdentificationReport
    classes: np.ndarray = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    knn_pred: np.ndarray = field(repr=False)
    knn_distance: np.ndarray = field(repr=False)
    nn1_pred: np.ndarray = field(repr=False)
    nn1_distance: np.ndarray = field(repr=False)
    verification: VerificationReport | None = None
    open_set: OpenSetResult | None = None
    dir_at_far: list[DirAtFar] = field(default_factory=list)
    pairs: VerificationReport | None = None
    distances: np.ndarray | None = field(default=None, repr=False)
    same: np.ndarray | None = field(default=None, repr=False)
    num_jitters: int = 1  # dlib's jitter: each face the mean of this many jittered copies (1: none)
    jitter_scale: float = 1.0  # what the jittered encodings were multiplied by, as train-knn does (dlibplus.jitter_scale)

    def tar_at(self, far: float) -> float | None:
        """TAR over the probe pairs at target ``far``; ``None`` when not measured or not measurable."""
        if self.verification is None:
            return None
        for t in self.verification.tar_at_far:
            if math.isclose(t.far, far):
                return t.tar
        return None

    def to_dict(self) -> dict:
        nz = np.nonzero(self.confusion)
        return {
            "name": self.name, "encoder": self.spec, "num_jitters": self.num_jitters,
            "jitter_scale": self.jitter_scale, "threshold": self.threshold,
            "identification": {
                "knn_accuracy": self.knn_accuracy, "knn_k": self.k,
                "knn_loo_accuracy": {str(k): v for k, v in self.loo_accuracy.items()},
                "nn1_accuracy": self.nn1_accuracy,
                "report": self.identification.to_dict(),
                "confusion": {"classes": self.classes.tolist(),
                              "cells": [[str(self.classes[i]), str(self.classes[j]), int(self.confusion[i, j])]
                                        for i, j in zip(*nz)]},
                "knn_pred": self.knn_pred.tolist(), "knn_distance": self.knn_distance.tolist(),
                "nn1_pred": self.nn1_pred.tolist(), "nn1_distance": self.nn1_distance.tolist(),
            },
            "verification": self.verification.to_dict() if self.verification else None,
            "open_set": ({**self.open_set.to_dict(), "dir_at_far": [r.to_dict() for r in self.dir_at_far]}
                         if self.open_set else None),
            "pairs": self.pairs.to_dict() if self.pairs else None,
        }


@dataclass
class EvaluationResult:
    """What :func:`evaluate_folder` measured; ``encoders[0]`` is the baseline.

    ``gallery_*`` and ``probe_*`` give the split (paths and people); ``known`` (p,) is True for probes of a
    person in the gallery. ``dropped_images`` are usable by some encoders but not all, so left out for all.
    ``comparison_far`` is the FAR the TAR comparisons are made at (``None``: no verification, or nothing
    measurable). ``to_dict()`` is the content of ``metrics.json``.
    """

    folder: Path
    test_folder: Path | None
    pairs_file: Path | None
    settings: FaceSettings
    test_fraction: float | None
    seed: int
    n_boot: int
    threshold: float
    encoders: list[EncoderEvaluation]
    gallery_paths: np.ndarray = field(repr=False)
    gallery_labels: np.ndarray = field(repr=False)
    probe_paths: np.ndarray = field(repr=False)
    probe_labels: np.ndarray = field(repr=False)
    known: np.ndarray = field(repr=False)
    holdout_people: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    image_reports: dict[str, Any] = field(default_factory=dict, repr=False)
    dropped_images: list[str] = field(default_factory=list)
    pairs_summary: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    comparison_far: float | None = None
    training_overlap: list["TrainingOverlap"] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What makes these numbers mislead: a fine-tuned encoder evaluated on photos it was trained on."""
        return [o.warning for o in self.training_overlap if o.n_overlap]

    @property
    def baseline(self) -> EncoderEvaluation:
        return self.encoders[0]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.encoders]

    def to_dict(self) -> dict:
        return jsonable({
            "folder": str(self.folder), "test_folder": str(self.test_folder) if self.test_folder else None,
            "pairs_file": str(self.pairs_file) if self.pairs_file else None,
            "face_settings": self.settings.to_dict(), "test_fraction": self.test_fraction, "seed": self.seed,
            "n_boot": self.n_boot, "threshold": self.threshold,
            "baseline": self.baseline.name,
            "encoders": {e.name: e.spec for e in self.encoders},
            "split": {
                "gallery_images": len(self.gallery_labels),
                "gallery_people": len(set(self.gallery_labels.tolist())),
                "known_probes": int(self.known.sum()), "unknown_probes": int((~self.known).sum()),
                "probe_people": len(set(self.probe_labels.tolist())),
                "holdout_people": self.holdout_people,
                "gallery": [{"path": p, "person": q} for p, q in zip(self.gallery_paths, self.gallery_labels)],
                "probes": [{"path": p, "person": q, "known": bool(k)}
                           for p, q, k in zip(self.probe_paths, self.probe_labels, self.known)],
            },
            "results": {e.name: e.to_dict() for e in self.encoders},
            "comparisons": [c.to_dict() for c in self.comparisons],
            "images": {"reports": self.image_reports, "dropped_for_fairness": self.dropped_images},
            "pairs_summary": self.pairs_summary,
            "training_overlap": [o.to_dict() for o in self.training_overlap],
            "warnings": self.warnings,
            "notes": self.notes,
        })


@dataclass(frozen=True)
class TrainingOverlap:
    """How many of the evaluated photos (by content) a fine-tuned encoder was trained or validated on."""

    encoder: str
    n_overlap: int
    n_evaluated: int

    @property
    def share(self) -> float:
        return self.n_overlap / self.n_evaluated if self.n_evaluated else 0.0

    @property
    def warning(self) -> str:
        return (f"{self.encoder} was fine-tuned on {self.n_overlap} of the {self.n_evaluated} evaluated photos "
                f"({self.share:.0%}): its numbers overstate how it does on new photos; evaluate on photos it was "
                "not trained on")

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "photos_trained_on": self.n_overlap, "photos_evaluated": self.n_evaluated,
                "share": self.share}
