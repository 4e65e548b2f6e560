"""Naming the faces in photos with any classifier (a train-knn model or a fine-tuned head).

A classifier is anything with ``predict_with_distance(encodings)`` and a ``recipe``: the encoder and
face settings its training encodings were made with, which prediction follows (one may override
them, see :func:`predict_images`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from .recipe import Recipe

UNKNOWN = "unknown"  # the name of a face farther than the threshold from every known person


class Classifier(Protocol):
    """What :func:`predict_images` needs of a classifier."""

    threshold: float

    @property
    def recipe(self) -> Recipe:
        """How the classifier's training encodings were made."""

    def predict_with_distance(self, encodings: np.ndarray, threshold: float | None = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(names, distances, people)`` for (n, 128) encodings: names are ``UNKNOWN`` beyond the
        threshold, distances (n,) float64 to the predicted person, people the predicted person."""


@dataclass
class Prediction:
    """One face in one image. ``distance``: to the predicted person (as the classifier measures it)."""

    name: str
    box: tuple[int, int, int, int]
    distance: float
    person: str  # the predicted person even when ``name`` is "unknown"


@dataclass
class ImagePredictions:
    """The faces of one image, or why it could not be read (``error``)."""

    path: Path
    faces: list[Prediction]
    error: str | None = None


def predict_images(paths: Sequence[os.PathLike | str], classifier: Classifier, *, threshold: float | None = None,
                   recipe: Recipe | None = None, jobs: int | None = 1, progress: bool = True,
                   use_cache: bool = True) -> Iterator[ImagePredictions]:
    """Predict every face of every image, in input order, as each image is done.

    :param recipe: how to find and encode faces; default the classifier's own. Changing the encoder
        makes distances meaningless unless it gives the same encodings (callers check).
    :param threshold: distance beyond which a face is ``UNKNOWN``; default the classifier's.
    """
    from .data import iter_images
    from .encoders import resolve_encoder, with_jitter

    recipe = recipe or classifier.recipe
    encoder = with_jitter(resolve_encoder(recipe.encoder)[0], recipe.num_jitters, recipe.jitter_scale)
    results = iter_images(paths, recipe.face_settings, encoder=encoder,
                          jobs=jobs, use_cache=use_cache, progress=progress, desc="predicting")
    for r in results:
        if r.error is not None or not r.n_faces:
            yield ImagePredictions(r.path, [], r.error)
            continue
        names, dist, people = classifier.predict_with_distance(r.encodings, threshold)
        preds = [Prediction(str(n), tuple(int(v) for v in box), float(d), str(p))
                 for n, box, d, p in zip(names, r.boxes, dist, people)]
        yield ImagePredictions(r.path, preds)
