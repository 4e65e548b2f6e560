"""face_recognition's KNN example as a library: train on a people folder, predict faces in photos.

Differences from the example, each fixing something that hurts its users:

- ``n_neighbors`` defaults to ``"auto"``: leave-one-out accuracy on the training encodings picks k
  among small candidates. The example's ``round(sqrt(n))`` collapses when people have few photos
  (``"sqrt"`` keeps it available);
- ``method`` defaults to ``"auto"``: the person is the example's vote of the k nearest photos, or the
  nearest person's mean encoding when leave-one-out says the means name as many training faces rightly
  (on dlib's encodings of the project's labelled sets, +7.3 points on kpop_idols15 on average, and
  ``"knn"`` keeps the example's vote);
- the distance reported for a face, and the "unknown" decision, concern the *predicted* person (its
  nearest training encoding), not whichever training face happened to be nearest;
- neighbours come from a :class:`~dlibplus.gallery.GalleryIndex` (faiss): exact search, the same
  neighbours as scikit-learn's, up to 100,000 faces, an approximate index with a measured recall above;
- the model is a folder (:mod:`dlibplus.knn_store`) of float32 encodings memory-mapped on load, plain
  arrays and JSON, written atomically and loaded without pickle, so a million-face model opens in
  milliseconds and loading a model can never run code; :meth:`FaceKNN.add` grows it without
  re-encoding what it holds.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import knn_store
from .errors import ImageReadError, ModelFileError, NotFittedError
from .predict import UNKNOWN
from .recipe import Recipe

FORMAT = knn_store.FORMAT
FORMAT_VERSION = knn_store.FORMAT_VERSION
INDEXES = ("auto", "exact", "hnsw", "ivf")
EXACT_ALIASES = ("ball_tree", "kd_tree", "brute")
"""scikit-learn's names for its exact searches (the example's ``knn_algo``): the same neighbours as
``"exact"``, which they mean here."""
LOO_SAMPLE = 5000
"""Training faces on which leave-one-out picks k (all of them in smaller galleries)."""
_PREDICT_BLOCK = 4096  # queries per block: bounds the (block, k, 128) float64 neighbour buffer


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


def _neighbours(index, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery rows of each query: ``(distances (m, k) float64, ids (m, k) int64)``.

    The index finds them; the distances are recomputed in float64 from the stored rows, as
    scikit-learn computes them.
    """
    _, ids = index.search(X, k)
    rows = np.asarray(index.encodings[ids.ravel()], np.float64).reshape(len(X), k, -1)
    return np.sqrt(((rows - X[:, None, :]) ** 2).sum(axis=2)), ids


def _loo_rows(n: int, sample: int, seed: int) -> np.ndarray:
    """The training faces left out in turn: all of them, or a seeded sample of ``sample``."""
    return np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def choose_n_neighbors(encodings: np.ndarray | None, labels: np.ndarray,
                       candidates: Sequence[int] = (1, 2, 3, 4, 5, 7, 9, 11, 15), *, index=None,
                       sample: int = LOO_SAMPLE, seed: int = 0) -> tuple[int, dict[int, float]]:
    """k with the best leave-one-out accuracy of the distance-weighted vote (the smallest on ties).

    :param encodings: (n, d) float array (or ``None`` with ``index``). :param labels: (n,) int class indices.
    :param index: a :class:`~dlibplus.gallery.GalleryIndex` over the encodings (built exact if not given).
    :param sample: at most this many faces are left out in turn (seeded), so that a big gallery costs
        ``sample`` searches, not one per face.
    :return: ``(k, {k: loo_accuracy})``.
    """
    from .gallery import GalleryIndex

    if index is None:
        index = GalleryIndex.build(encodings, kind="exact", device="cpu")
    n = len(labels)
    ks = sorted({k for k in candidates if 1 <= k <= n - 1}) or [1]
    rows = _loo_rows(n, sample, seed)
    Q = np.asarray(index.encodings[rows], np.float64)
    dist, idx = _neighbours(index, Q, min(max(ks) + 1, n))
    # drop each face itself (it may not come first when exact duplicates exist)
    not_self = idx != rows[:, None]
    order = np.argsort(~not_self, axis=1, kind="stable")
    dist = np.take_along_axis(dist, order, 1)[:, :-1]
    idx = np.take_along_axis(idx, order, 1)[:, :-1]
    n_classes = int(labels.max()) + 1
    truth = labels[rows]
    scores = {}
    for k in ks:
        votes = _weighted_vote(dist[:, :k], labels[idx[:, :k]], n_classes)
        scores[k] = float(np.mean(votes.argmax(axis=1) == truth))
    best = max(ks, key=lambda k: (scores[k], -k))
    return best, scores


def prototype_loo_accuracy(encodings: np.ndarray, labels: np.ndarray, *, sample: int = LOO_SAMPLE,
                           seed: int = 0) -> float:
    """Leave-one-out accuracy of the nearest class mean, fair to the person left out.

    Each face (of the same seeded sample as :func:`choose_n_neighbors`) is compared with its own person's
    mean without it, and with every other person's mean *as if that person had lost a photo too*: the
    expected squared distance to the mean of ``n - 1`` of their ``n`` photos drawn at random,
    ``|x - mean|^2 + S^2 / (n (n - 1))`` with ``S^2`` their photos' sample variance (summed over
    dimensions). Without that term the person left out would compete with one photo fewer than everyone
    else, which at two photos per person always favours the vote. A person's only photo, left out, leaves
    no mean: it counts as wrong, as for the vote.

    :param encodings: (n, d) float array (may be memory-mapped). :param labels: (n,) int class indices.
    """
    from .metrics import cross_distances

    n_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_classes)
    means = _class_means(encodings, labels, n_classes)
    scatter = np.zeros(n_classes)  # sum over a class's photos of |x - mean|^2
    for block in _row_blocks(len(labels)):
        np.add.at(scatter, labels[block], ((np.asarray(encodings[block], np.float64) - means[labels[block]]) ** 2
                                           ).sum(axis=1))
    lost_photo = np.where(counts > 1, scatter / (counts * np.maximum(counts - 1, 1) ** 2), 0)  # S^2 / (n (n-1))
    rows = _loo_rows(len(labels), sample, seed)
    right = 0
    step = max(1, (1 << 22) // n_classes)  # bounds the (step, n_classes) distance block
    for s in range(0, len(rows), step):
        X, own = np.asarray(encodings[rows[s:s + step]], np.float64), labels[rows[s:s + step]]
        d2 = cross_distances(X, means) ** 2 + lost_photo[None, :]
        loo_mean = (means[own] * counts[own, None] - X) / np.maximum(counts[own] - 1, 1)[:, None]
        d2[np.arange(len(X)), own] = np.where(counts[own] == 1, np.inf, ((X - loo_mean) ** 2).sum(axis=1))
        right += int(np.sum(d2.argmin(axis=1) == own))
    return right / len(rows)


class FaceKNN:
    """k-NN over face encodings, following scikit-learn's estimator contract: the constructor stores
    its parameters, :meth:`fit` takes data only and sets the ``*_`` attributes, predictions are arrays.

    :param n_neighbors: ``"auto"`` (leave-one-out choice), ``"sqrt"`` (the example's heuristic) or an int.
    :param algorithm: the neighbour search (:class:`~dlibplus.gallery.GalleryIndex`): ``"auto"`` (exact
        up to 100,000 faces, then HNSW), ``"exact"``, ``"hnsw"`` or ``"ivf"``; scikit-learn's
        ``ball_tree``, ``kd_tree`` and ``brute`` mean ``"exact"`` (the same neighbours).
    :param threshold: Euclidean distance beyond which a face is "unknown" (face_recognition's 0.6).
    :param recipe: how the encodings given to :meth:`fit` were made (encoder, face settings, jitter);
        prediction on photos follows it (:func:`dlibplus.predict.predict_images`).
    :param method: who a face is: ``"knn"`` (the example's distance-weighted vote of the k nearest photos),
        ``"prototype"`` (the nearest person's mean encoding), ``"svm"`` (a linear SVM) or ``"auto"`` (the
        vote or the means, whichever names more training faces rightly when each is left out in turn; the
        means on ties, see :func:`prototype_loo_accuracy`). Whatever the method, "unknown" is decided on the
        distance to the nearest photo of the predicted person, so the threshold keeps face_recognition's
        meaning. With few photos per person the means and the SVM name more faces rightly on dlib's
        encodings (BENCHMARKS.md, the suite).

    Fitted attributes: ``classes_`` (c,) str, ``labels_`` (n,) int32, ``index_`` (the gallery; its float32
    encodings are ``encodings_``), ``k_``, ``loo_scores_``, ``method_`` (the method used: ``method``, or
    what ``"auto"`` chose), ``method_scores_`` (``"auto"``: leave-one-out accuracy of each method),
    ``sources_`` ((n,) sha256 digests or ``None``), and the method's arrays (``centroids_`` or
    ``svm_coef_``/``svm_intercept_``).
    """

    METHODS = ("knn", "prototype", "svm", "auto")

    def __init__(self, n_neighbors: int | str = "auto", algorithm: str = "auto", threshold: float = 0.6,
                 recipe: Recipe | None = None, method: str = "auto"):
        self.n_neighbors = n_neighbors
        self.algorithm = algorithm
        self.threshold = threshold
        self.recipe = recipe if recipe is not None else Recipe()
        self.method = method

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_neighbors": self.n_neighbors, "algorithm": self.algorithm, "threshold": self.threshold,
                "recipe": self.recipe, "method": self.method}

    def set_params(self, **params) -> "FaceKNN":
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"FaceKNN has no parameter {key!r}")
            setattr(self, key, value)
        return self

    # -- training -------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: Sequence[str], *, sources: Sequence[bytes] | None = None) -> "FaceKNN":
        """:param X: (n, 128) float encodings. :param y: n person names.
        :param sources: n 32-byte sha256 digests of the photos (what :meth:`add` uses to skip photos
            already in the model), or ``None``."""
        from .gallery import GalleryIndex

        X = self._check_data(X, y)
        self._check_params()
        self.classes_, labels = np.unique(np.asarray(y, dtype=str), return_inverse=True)
        self.labels_ = labels.astype(np.int32)
        self.index_ = GalleryIndex.build(X, kind=self._index_kind())
        self.sources_ = _as_sources(sources, len(X))
        self._fit_rest()
        return self

    def add(self, X: np.ndarray, y: Sequence[str], *, sources: Sequence[bytes] | None = None) -> "FaceKNN":
        """Append faces of new or known people; nothing already in the model is re-encoded or rebuilt
        (an exact gallery grown past 100,000 faces under ``algorithm="auto"`` becomes approximate).
        k is chosen again under ``"auto"``; prototypes and the SVM are refit on every face.

        :param X: (m, 128) float encodings. :param y: m person names. :param sources: as in :meth:`fit`
            (rows without a digest get zeros when the model has digests).
        """
        from .gallery import GalleryIndex

        self._check()
        X = self._check_data(X, y)
        classes = np.union1d(self.classes_, np.asarray(y, dtype=str))
        old_labels = np.searchsorted(classes, self.classes_)[self.labels_]
        new_labels = np.searchsorted(classes, np.asarray(y, dtype=str))
        self.index_.add(X)
        if self.algorithm == "auto" and self.index_.kind == "exact" and self.index_.needs_rebuild():
            self.index_ = GalleryIndex.build(self.index_.encodings, kind="auto")
        self.classes_, self.labels_ = classes, np.concatenate([old_labels, new_labels]).astype(np.int32)
        if self.sources_ is not None or sources is not None:
            old = self.sources_ if self.sources_ is not None else np.zeros(len(old_labels), "S32")
            new = _as_sources(sources, len(X)) if sources is not None else np.zeros(len(X), "S32")
            self.sources_ = np.concatenate([np.asarray(old), new])
        self._fit_rest()
        return self

    def _check_data(self, X, y) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError("need a non-empty (n, d) array of encodings")
        if len(y) != len(X):
            raise ValueError(f"{len(y)} labels for {len(X)} encodings")
        return X

    def _check_params(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and self.threshold >= 0):
            raise ValueError(f"threshold must be a distance >= 0, not {self.threshold!r}")
        if self.method not in self.METHODS:
            raise ValueError(f"method must be one of {list(self.METHODS)}, not {self.method!r}")
        self._index_kind()

    def _index_kind(self) -> str:
        if self.algorithm in EXACT_ALIASES:
            return "exact"
        if self.algorithm not in INDEXES:
            raise ValueError(f"algorithm must be one of {list(INDEXES + EXACT_ALIASES)}, not {self.algorithm!r}")
        return self.algorithm

    def _fit_rest(self) -> None:
        """k and the method's arrays, from the gallery's (stored) encodings."""
        n = len(self.labels_)
        self.loo_scores_: dict[int, float] = {}
        if self.n_neighbors == "auto":
            self.k_, self.loo_scores_ = choose_n_neighbors(None, self.labels_, index=self.index_)
        elif self.n_neighbors == "sqrt":
            self.k_ = max(1, int(round(np.sqrt(n))))
        else:
            self.k_ = int(self.n_neighbors)
            if self.k_ < 1:
                raise ValueError(f"n_neighbors must be >= 1, not {self.k_}")
        self.k_ = min(self.k_, n)
        self._class_rows = None
        self.method_, self.method_scores_ = self.method, {}
        if self.method == "auto":
            self.method_, self.method_scores_ = self._choose_method()
        self._fit_method()

    def _choose_method(self) -> tuple[str, dict[str, float]]:
        """The vote of the k nearest photos or the nearest mean, by leave-one-out accuracy (the means on ties)."""
        knn = self.loo_scores_.get(self.k_)
        if knn is None:
            knn = choose_n_neighbors(None, self.labels_, (self.k_,), index=self.index_)[1].get(self.k_, 0.0)
        scores = {"knn": knn, "prototype": prototype_loo_accuracy(self.index_.encodings, self.labels_)}
        return ("prototype" if scores["prototype"] >= scores["knn"] else "knn"), scores

    def _fit_method(self) -> None:
        """Class means (``prototype``) or a linear SVM (``svm``, scikit-learn's ``LinearSVC``)."""
        self.centroids_ = self.svm_coef_ = self.svm_intercept_ = None
        if self.method_ == "prototype":
            self.centroids_ = _class_means(self.index_.encodings, self.labels_, len(self.classes_))
        elif self.method_ == "svm":
            from sklearn.svm import LinearSVC

            X = np.asarray(self.index_.encodings, np.float64)
            with warnings.catch_warnings():
                # scikit-learn hints that more classes than half the samples looks like regression; a face
                # gallery with one or two photos per person is exactly that, and fine
                warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
                svm = LinearSVC(C=1.0, max_iter=20000, random_state=0).fit(X, self.labels_)
            self.svm_coef_, self.svm_intercept_ = svm.coef_, svm.intercept_

    def _check(self) -> None:
        if not hasattr(self, "index_"):
            raise NotFittedError("this FaceKNN is not trained: call fit() or FaceKNN.load()")

    @property
    def encodings_(self) -> np.ndarray:
        """(n, 128) float32 training encodings (memory-mapped after :meth:`load`)."""
        self._check()
        return self.index_.encodings

    # -- prediction -----------------------------------------------------------------------------
    def predict_with_distance(self, X: np.ndarray, threshold: float | None = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Names ("unknown" beyond the threshold), distances to the predicted person, predicted people.

        :param X: (n, 128) float. :return: ``(names (n,) str, distances (n,) float64, people (n,) str)``.
        """
        self._check()
        X = np.asarray(X, dtype=np.float64).reshape(-1, self.index_.dim)
        if len(X) == 0:
            return np.zeros(0, dtype=str), np.zeros(0), np.zeros(0, dtype=str)
        threshold = self.threshold if threshold is None else threshold
        pred = np.concatenate([self._predict_labels(X[s:s + _PREDICT_BLOCK])
                               for s in range(0, len(X), _PREDICT_BLOCK)])
        dist = self._distance_to_person(X, pred)
        people = self.classes_[pred]
        names = np.where(dist <= threshold, people, UNKNOWN)
        return names, dist, people

    def predict(self, X: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """(n,) str: the person of each encoding, or "unknown"."""
        return self.predict_with_distance(X, threshold)[0]

    def _predict_labels(self, X: np.ndarray) -> np.ndarray:
        """(m,) class indices of the method (scikit-learn's answer for each: same votes, means, SVM)."""
        if self.method_ == "prototype":
            from sklearn.metrics import pairwise_distances_argmin

            return pairwise_distances_argmin(X, self.centroids_)  # what NearestCentroid.predict does
        if self.method_ == "svm":
            scores = X @ self.svm_coef_.T + self.svm_intercept_
            return (scores[:, 0] > 0).astype(np.int64) if scores.shape[1] == 1 else scores.argmax(axis=1)
        dist, ids = _neighbours(self.index_, X, self.k_)
        return _weighted_vote(dist, self.labels_[ids], len(self.classes_)).argmax(axis=1)

    def _distance_to_person(self, X: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """(m,) float64 distance of each query to the nearest training photo of its predicted person."""
        from .metrics import nearest_identity

        if self._class_rows is None:
            order = np.argsort(self.labels_, kind="stable")
            bounds = np.searchsorted(self.labels_[order], np.arange(len(self.classes_) + 1))
            self._class_rows = (order, bounds)
        order, bounds = self._class_rows
        dist = np.empty(len(X))
        for c in np.unique(pred):
            rows = pred == c
            gallery = np.asarray(self.index_.encodings[np.sort(order[bounds[c]:bounds[c + 1]])], np.float64)
            dist[rows] = nearest_identity(gallery, np.zeros(len(gallery)), X[rows])[1]
        return dist

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: os.PathLike | str, *, info: dict[str, Any] | None = None) -> Path:
        """Write the model into the folder ``path`` atomically (:mod:`dlibplus.knn_store`); returns it.

        A path encoder (a fine-tuned folder) is recorded relative to the model, so the two can move
        together, with its sha256 so that a different model in its place is noticed. ``info``: JSON-able
        facts about the training run kept beside (``info_`` after :meth:`load`).
        """
        self._check()
        from .encoders import encoder_sha256

        path = Path(path)
        meta = {"n_neighbors": self.k_, "n_neighbors_rule": str(self.n_neighbors), "algorithm": self.algorithm,
                "method": self.method_, "method_rule": self.method, "method_loo_accuracy": self.method_scores_,
                "threshold": self.threshold,
                "loo_accuracy": {str(k): v for k, v in self.loo_scores_.items()},
                **self.recipe.relative_to(path).to_dict(),
                "encoder_sha256": encoder_sha256(self.recipe.encoder),
                "info": dict(info if info is not None else getattr(self, "info_", {}))}
        classifier = {"centroids": self.centroids_} if self.method_ == "prototype" else \
            {"coef": self.svm_coef_, "intercept": self.svm_intercept_} if self.method_ == "svm" else {}
        return knn_store.write_model(path, meta, self.classes_, self.labels_, self.index_, self.sources_,
                                     classifier)

    @classmethod
    def load(cls, path: os.PathLike | str, *, mmap: bool = True) -> "FaceKNN":
        """Load a model folder written by :meth:`save` (encodings memory-mapped unless ``mmap=False``),
        or a single-file model of an older dlibplus; never unpickles.

        :raises ModelFileError: missing, truncated or not a dlibplus KNN model; its encoder folder
            missing or replaced by a different model.
        """
        path = Path(path)
        stored = knn_store.read_model(path, mmap=mmap)
        meta = stored.meta
        folder = path if path.is_dir() else path.parent
        recipe = Recipe.from_dict(meta, path).resolved_from(folder)
        knn_store.check_encoder(path, recipe.encoder, meta.get("encoder_sha256"))
        try:
            model = cls(int(meta["n_neighbors"]), str(meta.get("algorithm", "auto")), float(meta["threshold"]),
                        recipe, str(meta.get("method", "knn")))
            if stored.index is None:  # a single-file model: refit, as it always was
                model.fit(stored.encodings, stored.classes[stored.labels])
            else:
                model._restore(stored)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelFileError(path, f"inconsistent KNN model ({type(exc).__name__}: {exc})") from None
        model.n_neighbors = meta.get("n_neighbors_rule", model.n_neighbors)
        if model.n_neighbors not in ("auto", "sqrt"):
            model.n_neighbors = int(model.n_neighbors)
        model.loo_scores_ = {int(k): v for k, v in meta.get("loo_accuracy", {}).items()}
        model.method = str(meta.get("method_rule", model.method))
        model.method_scores_ = dict(meta.get("method_loo_accuracy", {}))
        model.info_ = meta.get("info", {})
        return model

    def _restore(self, stored: "knn_store.StoredModel") -> None:
        """Set the fitted attributes from a model folder's parts, without refitting anything."""
        self._check_params()
        self.classes_, self.labels_, self.index_ = stored.classes, stored.labels, stored.index
        self.sources_ = stored.sources
        self.k_ = min(int(stored.meta["n_neighbors"]), len(self.labels_))
        self._class_rows = None
        self.centroids_ = self.svm_coef_ = self.svm_intercept_ = None
        self.method_, self.method_scores_ = self.method, {}
        if self.method_ == "prototype":
            self.centroids_ = stored.classifier["centroids"]
        elif self.method_ == "svm":
            self.svm_coef_, self.svm_intercept_ = stored.classifier["coef"], stored.classifier["intercept"]


def _as_sources(sources, n: int) -> np.ndarray | None:
    """(n,) ``S32`` sha256 digests, or ``None``."""
    if sources is None:
        return None
    out = np.asarray(sources, dtype="S32")
    if out.shape != (n,):
        raise ValueError(f"{len(out)} sources for {n} encodings")
    return out


def _row_blocks(n: int, size: int = 1 << 16) -> Iterator[slice]:
    """Consecutive row slices of at most ``size`` rows: a memory-mapped gallery is read a block at a time."""
    return (slice(s, s + size) for s in range(0, n, size))


def _class_means(encodings: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(c, d) float64 mean encoding of each class, read in blocks (a memory-mapped gallery stays on disk)."""
    sums = np.zeros((n_classes, encodings.shape[1]))
    for block in _row_blocks(len(labels)):
        np.add.at(sums, labels[block], np.asarray(encodings[block], np.float64))
    return sums / np.bincount(labels, minlength=n_classes)[:, None]


def is_model(path: os.PathLike | str) -> bool:
    """Whether ``path`` is a train-knn model: a model folder, or a single-file model of an older dlibplus."""
    return knn_store.is_model_folder(path) or knn_store.is_legacy_model_file(path)


# --- the example's functions ---------------------------------------------------------------------

def train(train_dir: os.PathLike | str, model_save_path: os.PathLike | str | None = None,
          n_neighbors: int | str | None = None, knn_algo: str = "ball_tree", verbose: bool = False, *,
          settings=None, encoder: str = "dlib", jobs: int | None = None, num_jitters: int = 1,
          threshold: float = 0.6, use_cache: bool = True, progress: bool = False,
          multiple_faces: str = "skip") -> FaceKNN:
    """Train a k-NN classifier on ``train_dir/<person>/<image>`` (the example's ``train``).

    Images with no face or several faces are skipped (listed when ``verbose``; ``multiple_faces="largest"``
    keeps a clearly largest face, :func:`dlibplus.people.pick_face`). ``n_neighbors=None`` means ``"auto"``.
    Returns the fitted :class:`FaceKNN`; saves it when ``model_save_path`` is given.
    """
    from .people import load_people, scale_jitter

    ts = load_people(train_dir, settings=settings, encoder=encoder, jobs=jobs, num_jitters=num_jitters,
                     use_cache=use_cache, progress=progress, multiple_faces=multiple_faces)
    ts = scale_jitter(ts, jobs=jobs, use_cache=use_cache, progress=progress)  # as train-knn does
    if verbose:
        for line in ts.report_lines():
            print(line)
    model = FaceKNN(n_neighbors if n_neighbors is not None else "auto", knn_algo, threshold, ts.recipe)
    model.fit(ts.encodings, ts.labels)
    if model_save_path is not None:
        model.save(model_save_path, info=ts.info())
    return model


def predict(X_img_path: os.PathLike | str, knn_clf: FaceKNN | None = None,
            model_path: os.PathLike | str | None = None, distance_threshold: float = 0.6
            ) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``[(name, (top, right, bottom, left)), ...]`` for the faces in one image (the example's ``predict``),
    found and encoded as the model's recipe says."""
    from .errors import DlibplusError
    from .predict import predict_images

    if knn_clf is None and model_path is None:
        raise DlibplusError("give a trained classifier (knn_clf) or a model file (model_path)")
    model = knn_clf if knn_clf is not None else FaceKNN.load(model_path)
    result = next(predict_images([X_img_path], model, threshold=distance_threshold, progress=False))
    if result.error is not None:
        raise ImageReadError(result.path, result.error)
    return [(p.name, p.box) for p in result.faces]
