"""face_recognition's KNN example as a library: train on a people folder, predict faces in photos.

Differences from the example, each fixing something that hurts its users:

- ``n_neighbors`` defaults to ``"auto"``: leave-one-out accuracy on the training encodings picks k
  among small candidates. The example's ``round(sqrt(n))`` collapses when people have few photos
  (``"sqrt"`` keeps it available);
- the distance reported for a face, and the "unknown" decision, concern the *predicted* person (its
  nearest training encoding), not whichever training face happened to be nearest;
- the model is an ``.npz`` of arrays plus JSON metadata, written atomically and loaded without pickle,
  so loading a model file can never run code. The scikit-learn classifier is rebuilt on load.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ModelFileError, NotFittedError
from .fileio import atomic_path

FORMAT = "dlibplus-knn"
FORMAT_VERSION = 1
UNKNOWN = "unknown"


def _weighted_vote(dist: np.ndarray, neigh_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class scores (n, n_classes) of inverse-distance-weighted votes (scikit-learn's 'distance').

    An exact match (distance 0) takes the whole vote, as in scikit-learn.
    """
    with np.errstate(divide="ignore"):
        w = 1.0 / dist
    exact = ~np.isfinite(w)
    rows = exact.any(axis=1)
    w[rows] = exact[rows].astype(np.float64)
    scores = np.zeros((len(dist), n_classes))
    np.add.at(scores, (np.repeat(np.arange(len(dist)), dist.shape[1]), neigh_labels.ravel()), w.ravel())
    return scores


def choose_n_neighbors(encodings: np.ndarray, labels: np.ndarray,
                       candidates: Sequence[int] = (1, 2, 3, 4, 5, 7, 9, 11, 15)) -> tuple[int, dict[int, float]]:
    """k with the best leave-one-out accuracy of the distance-weighted vote (the smallest on ties).

    :param encodings: (n, d) float array. :param labels: (n,) int class indices.
    :return: ``(k, {k: loo_accuracy})``.
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(encodings)
    ks = sorted({k for k in candidates if 1 <= k <= n - 1}) or [1]
    nn = NearestNeighbors(n_neighbors=min(max(ks) + 1, n)).fit(encodings)
    dist, idx = nn.kneighbors(encodings)
    # drop each point itself (it may not come first when exact duplicates exist)
    not_self = idx != np.arange(n)[:, None]
    order = np.argsort(~not_self, axis=1, kind="stable")
    dist = np.take_along_axis(dist, order, 1)[:, :-1]
    idx = np.take_along_axis(idx, order, 1)[:, :-1]
    n_classes = int(labels.max()) + 1
    scores = {}
    for k in ks:
        votes = _weighted_vote(dist[:, :k], labels[idx[:, :k]], n_classes)
        scores[k] = float(np.mean(votes.argmax(axis=1) == labels))
    best = max(ks, key=lambda k: (scores[k], -k))
    return best, scores


@dataclass
class Prediction:
    """One face in one image. ``distance``: to the nearest training encoding of ``name``'s person."""

    name: str
    box: tuple[int, int, int, int]
    distance: float
    person: str  # the predicted person even when ``name`` is "unknown"


class FaceKNN:
    """k-NN over face encodings, following scikit-learn's estimator contract.

    :param n_neighbors: ``"auto"`` (leave-one-out choice), ``"sqrt"`` (the example's heuristic) or an int.
    :param algorithm: scikit-learn's neighbour search: ``ball_tree`` (the example's), ``kd_tree``,
        ``brute`` or ``auto``.
    :param threshold: Euclidean distance beyond which a face is "unknown" (face_recognition's 0.6).
    """

    def __init__(self, n_neighbors: int | str = "auto", algorithm: str = "ball_tree", threshold: float = 0.6):
        self.n_neighbors = n_neighbors
        self.algorithm = algorithm
        self.threshold = threshold

    # -- training -------------------------------------------------------------------------------
    def fit(self, encodings: np.ndarray, labels: Sequence[str], metadata: dict | None = None) -> "FaceKNN":
        """:param encodings: (n, 128) float. :param labels: n person names."""
        from sklearn.neighbors import KNeighborsClassifier

        X = np.asarray(encodings, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError("need a non-empty (n, d) array of encodings")
        if len(labels) != len(X):
            raise ValueError(f"{len(labels)} labels for {len(X)} encodings")
        self.classes_, y = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
        self.encodings_, self.labels_ = X, y
        self.loo_scores_: dict[int, float] = {}
        if self.n_neighbors == "auto":
            self.k_, self.loo_scores_ = choose_n_neighbors(X, y)
        elif self.n_neighbors == "sqrt":
            self.k_ = max(1, int(round(np.sqrt(len(X)))))
        else:
            self.k_ = int(self.n_neighbors)
            if self.k_ < 1:
                raise ValueError(f"n_neighbors must be >= 1, not {self.k_}")
        self.k_ = min(self.k_, len(X))
        self.clf_ = KNeighborsClassifier(n_neighbors=self.k_, algorithm=self.algorithm, weights="distance")
        with warnings.catch_warnings():
            # scikit-learn hints that more classes than half the samples looks like regression; a face
            # gallery with one or two photos per person is exactly that, and fine
            warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
            self.clf_.fit(X, y)
        self.metadata_ = dict(metadata or {})
        return self

    def _check(self) -> None:
        if not hasattr(self, "clf_"):
            raise NotFittedError("this FaceKNN is not trained: call fit() or FaceKNN.load()")

    # -- prediction -----------------------------------------------------------------------------
    def predict_with_distance(self, encodings: np.ndarray, threshold: float | None = None
                              ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Names ("unknown" beyond the threshold), distances to the predicted person, predicted people.

        :param encodings: (n, 128) float. :return: ``(names, distances (n,), people)``.
        """
        self._check()
        X = np.asarray(encodings, dtype=np.float64).reshape(-1, self.encodings_.shape[1])
        if len(X) == 0:
            return [], np.zeros(0), np.zeros(0, dtype=str)
        threshold = self.threshold if threshold is None else threshold
        pred = self.clf_.predict(X)
        from .metrics import nearest_identity

        dist = np.empty(len(X))
        for c in np.unique(pred):
            rows = pred == c
            gallery = self.encodings_[self.labels_ == c]
            dist[rows] = nearest_identity(gallery, np.zeros(len(gallery)), X[rows])[1]
        people = self.classes_[pred]
        names = [str(p) if d <= threshold else UNKNOWN for p, d in zip(people, dist)]
        return names, dist, people

    def predict(self, encodings: np.ndarray, threshold: float | None = None) -> list[str]:
        return self.predict_with_distance(encodings, threshold)[0]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: os.PathLike | str) -> None:
        """Write encodings, labels and metadata to ``path`` (.npz) atomically."""
        self._check()
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_neighbors": self.k_,
                "n_neighbors_rule": str(self.n_neighbors), "algorithm": self.algorithm,
                "threshold": self.threshold,
                "loo_accuracy": {str(k): v for k, v in self.loo_scores_.items()}, **self.metadata_}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, encodings=self.encodings_, labels=self.labels_.astype(np.int32),
                         classes=self.classes_.astype(str), metadata=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: os.PathLike | str) -> "FaceKNN":
        """Load a model written by :meth:`save`; never unpickles.

        :raises ModelFileError: missing, truncated or not a dlibplus KNN model.
        """
        path = Path(path)
        if path.is_dir():
            raise ModelFileError(path, "is a folder, not a train-knn model file (a `dlibplus finetune` folder "
                                       "classifies with --classifier head)")
        if not path.is_file():
            raise ModelFileError(path, "file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("encodings", "labels", "classes", "metadata")}
            meta = json.loads(str(arrays["metadata"]))
        except KeyError as exc:
            raise ModelFileError(path, f"not a dlibplus KNN model (no {exc} array)") from None
        except Exception as exc:
            raise ModelFileError(path, f"not a dlibplus KNN model, or truncated ({type(exc).__name__}: {exc})") from None
        if meta.get("format") != FORMAT:
            raise ModelFileError(path, "not a dlibplus KNN model (wrong format tag)")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFileError(path, f"written by a newer dlibplus (format {meta['format_version']})")
        model = cls(int(meta["n_neighbors"]), meta["algorithm"], float(meta["threshold"]))
        labels = arrays["classes"][arrays["labels"]]
        model.fit(arrays["encodings"], labels)
        model.n_neighbors = meta.get("n_neighbors_rule", model.n_neighbors)
        model.loo_scores_ = {int(k): v for k, v in meta.get("loo_accuracy", {}).items()}
        model.metadata_ = {k: v for k, v in meta.items()
                           if k not in ("format", "format_version", "n_neighbors", "n_neighbors_rule",
                                        "algorithm", "threshold", "loo_accuracy")}
        return model

    @property
    def metadata(self) -> dict[str, Any]:
        self._check()
        return self.metadata_


# --- the example's functions ---------------------------------------------------------------------

def train(train_dir: os.PathLike | str, model_save_path: os.PathLike | str | None = None,
          n_neighbors: int | str | None = None, knn_algo: str = "ball_tree", verbose: bool = False, *,
          settings=None, encoder: str = "dlib", jobs: int | None = None, num_jitters: int = 1,
          threshold: float = 0.6, use_cache: bool = True, progress: bool = False) -> FaceKNN:
    """Train a k-NN classifier on ``train_dir/<person>/<image>`` (the example's ``train``).

    Images with no face or several faces are skipped (listed when ``verbose``). ``n_neighbors=None``
    means ``"auto"``. Returns the fitted :class:`FaceKNN`; saves it when ``model_save_path`` is given.
    """
    from .people import load_people

    ts = load_people(train_dir, settings=settings, encoder=encoder, jobs=jobs, num_jitters=num_jitters,
                     use_cache=use_cache, progress=progress)
    if verbose:
        for line in ts.report_lines():
            print(line)
    model = FaceKNN(n_neighbors if n_neighbors is not None else "auto", knn_algo, threshold)
    model.fit(ts.encodings, ts.labels, metadata=ts.metadata())
    if model_save_path is not None:
        model.save(model_save_path)
    return model


def predict(X_img_path: os.PathLike | str, knn_clf: FaceKNN | None = None,
            model_path: os.PathLike | str | None = None, distance_threshold: float = 0.6, *,
            encoder=None) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``[(name, (top, right, bottom, left)), ...]`` for the faces in one image (the example's ``predict``).

    ``encoder=None`` uses the encoder the model was trained with.
    """
    from .errors import DlibplusError

    if knn_clf is None and model_path is None:
        raise DlibplusError("give a trained classifier (knn_clf) or a model file (model_path)")
    model = knn_clf if knn_clf is not None else FaceKNN.load(model_path)
    preds = predict_images([X_img_path], model, threshold=distance_threshold, encoder=encoder, progress=False)
    return [(p.name, p.box) for p in preds[0][1]]


def predict_images(paths: Sequence[os.PathLike | str], model: FaceKNN, *, threshold: float | None = None,
                   encoder=None, jobs: int | None = 1, progress: bool = True, use_cache: bool = False
                   ) -> list[tuple[Path, list[Prediction], str | None]]:
    """Predict every face of every image: ``[(path, [Prediction...], error or None), ...]``."""
    from .people import encoder_from_metadata, settings_from_metadata
    from .data import process_images

    from .people import resolve_encoder

    settings = settings_from_metadata(model.metadata)
    encoder = encoder_from_metadata(model.metadata) if encoder is None else resolve_encoder(encoder)[0]
    results = process_images(paths, settings, encoder=encoder, num_jitters=model.metadata.get("num_jitters", 1),
                             jobs=jobs, use_cache=use_cache, progress=progress, desc="predicting")
    out = []
    for r in results:
        if r.error is not None or not r.n_faces:
            out.append((r.path, [], r.error))
            continue
        names, dist, people = model.predict_with_distance(r.encodings, threshold)
        preds = [Prediction(n, tuple(int(v) for v in box), float(d), str(p))
                 for n, box, d, p in zip(names, r.boxes, dist, people)]
        out.append((r.path, preds, None))
    return out
