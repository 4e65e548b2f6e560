"""The scale that keeps tolerance 0.6's meaning for jittered encodings.

A jittered encoding is the mean of N encodings of jittered copies of a face; averaging pulls encodings
together, so at 0.6 more pairs of different people pass as "the same person" than with plain encodings
(dlib, 10 copies, on the labelled sets' different-person pairs at 2-4 photos a person: 16.1 % → 17.6 %;
BENCHMARKS.md). ``train-knn --jitters N`` multiplies the jittered encodings by the ratio of the median
different-person distance, plain over jittered, measured on a sample of its own photos; 0.6 then lets through
about as many different-person pairs as without jitter, and jitter keeps most of its gain in naming.

Pure numpy: the caller encodes the sample both ways.
"""
from __future__ import annotations

import numpy as np

from .metrics import pair_distances

SAMPLE_PHOTOS = 100  # photos encoded without jitter too: ~5,000 pairs, 1/10 of a 300-photo folder's work


def sample_rows(labels: np.ndarray, limit: int = SAMPLE_PHOTOS, seed: int = 0) -> np.ndarray:
    """Sorted rows of at most ``limit`` photos, as many people as possible: each person's photos in a seeded
    order, taken round-robin over people until ``limit``.

    :param labels: (n,) person of each photo (any comparable dtype).
    :return: (m,) int64 row indices, ``m = min(n, limit)``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == person))) for person in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(limit, len(labels)):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(int(queue.pop()))
    return np.sort(np.array(picked, dtype=np.int64))


def estimate_scale(plain: np.ndarray, jittered: np.ndarray, labels: np.ndarray) -> float:
    """The factor for ``jittered`` encodings: median different-person distance of ``plain`` over that of
    ``jittered`` (the same photos, in the same order). 1.0 when there is no different-person pair.

    :param plain: (n, 128) float encodings without jitter. :param jittered: (n, 128) float, the same faces
        jittered. :param labels: (n,) person of each row.
    :return: a positive float (about 1.01-1.07 for 10 copies on the labelled sets).
    """
    plain, jittered = np.asarray(plain, np.float64), np.asarray(jittered, np.float64)
    if plain.shape != jittered.shape:
        raise ValueError(f"plain {plain.shape} and jittered {jittered.shape} encodings differ in shape")
    if len(np.unique(np.asarray(labels))) < 2:
        return 1.0
    d_plain, same = pair_distances(plain, labels)
    d_jittered, _ = pair_distances(jittered, labels)
    below = float(np.median(d_jittered[~same]))
    return float(np.median(d_plain[~same]) / below) if below > 0 else 1.0


def scale_for(plain: np.ndarray, jittered: np.ndarray, labels: np.ndarray) -> float:
    """The scale train-knn would store for a folder of these photos, when both encodings of every photo are at
    hand: :func:`estimate_scale` on the rows :func:`sample_rows` picks.

    :param plain: (n, 128) float without jitter. :param jittered: (n, 128) float, the same faces jittered.
    :param labels: (n,) person of each row.
    """
    rows = sample_rows(labels)
    return estimate_scale(np.asarray(plain)[rows], np.asarray(jittered)[rows], np.asarray(labels)[rows])
