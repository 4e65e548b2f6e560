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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ImageReadError, ModelFileError, NotFittedError
from .fileio import atomic_path
from .predict import UNKNOWN
from .recipe import Recipe

FORMAT = "dlibplus-knn"
FORMAT_VERSION = 2  # 2: recipe with a relative encoder path and its sha256; info apart


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


class FaceKNN:
    """k-NN over face encodings, following scikit-learn's estimator contract: the constructor stores
    its parameters, :meth:`fit` takes data only and sets the ``*_`` attributes, predictions are arrays.

    :param n_neighbors: ``"auto"`` (leave-one-out choice), ``"sqrt"`` (the example's heuristic) or an int.
    :param algorithm: scikit-learn's neighbour search: ``ball_tree`` (the example's), ``kd_tree``,
        ``brute`` or ``auto``.
    :param threshold: Euclidean distance beyond which a face is "unknown" (face_recognition's 0.6).
    :param recipe: how the encodings given to :meth:`fit` were made (encoder, face settings, jitter);
        prediction on photos follows it (:func:`dlibplus.predict.predict_images`).
    :param method: who a face is: ``"knn"`` (the example's distance-weighted vote of the k nearest photos),
        ``"prototype"`` (the nearest person's mean encoding) or ``"svm"`` (a linear SVM). Whatever the method,
        "unknown" is decided on the distance to the nearest photo of the predicted person, so the threshold
        keeps face_recognition's meaning. With few photos per person the last two name more faces rightly
        on dlib's encodings (BENCHMARKS.md, the suite).
    """

    METHODS = ("knn", "prototype", "svm")

    def __init__(self, n_neighbors: int | str = "auto", algorithm: str = "ball_tree", threshold: float = 0.6,
                 recipe: Recipe | None = None, method: str = "knn"):
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
    def fit(self, X: np.ndarray, y: Sequence[str]) -> "FaceKNN":
        """:param X: (n, 128) float encodings. :param y: n person names."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError("need a non-empty (n, d) array of encodings")
        if len(y) != len(X):
            raise ValueError(f"{len(y)} labels for {len(X)} encodings")
        if not (isinstance(self.threshold, (int, float)) and self.threshold >= 0):
            raise ValueError(f"threshold must be a distance >= 0, not {self.threshold!r}")
        if self.method not in self.METHODS:
            raise ValueError(f"method must be one of {list(self.METHODS)}, not {self.method!r}")
        self.classes_, labels = np.unique(np.asarray(y, dtype=str), return_inverse=True)
        self.encodings_, self.labels_ = X, labels
        self.loo_scores_: dict[int, float] = {}
        if self.n_neighbors == "auto":
            self.k_, self.loo_scores_ = choose_n_neighbors(X, labels)
        elif self.n_neighbors == "sqrt":
            self.k_ = max(1, int(round(np.sqrt(len(X)))))
        else:
            self.k_ = int(self.n_neighbors)
            if self.k_ < 1:
                raise ValueError(f"n_neighbors must be >= 1, not {self.k_}")
        self.k_ = min(self.k_, len(X))
        self.clf_ = self._classifier()
        with warnings.catch_warnings():
            # scikit-learn hints that more classes than half the samples looks like regression; a face
            # gallery with one or two photos per person is exactly that, and fine
            warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
            self.clf_.fit(X, labels)
        return self

    def _classifier(self):
        """The scikit-learn classifier that names faces (the threshold is applied apart)."""
        from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
        from sklearn.svm import LinearSVC

        if self.method == "prototype":
            return NearestCentroid()
        if self.method == "svm":
            return LinearSVC(C=1.0, max_iter=20000, random_state=0)
        return KNeighborsClassifier(n_neighbors=self.k_, algorithm=self.algorithm, weights="distance")

    def _check(self) -> None:
        if not hasattr(self, "clf_"):
            raise NotFittedError("this FaceKNN is not trained: call fit() or FaceKNN.load()")

    # -- prediction -----------------------------------------------------------------------------
    def predict_with_distance(self, X: np.ndarray, threshold: float | None = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Names ("unknown" beyond the threshold), distances to the predicted person, predicted people.

        :param X: (n, 128) float. :return: ``(names (n,) str, distances (n,) float64, people (n,) str)``.
        """
        self._check()
        X = np.asarray(X, dtype=np.float64).reshape(-1, self.encodings_.shape[1])
        if len(X) == 0:
            return np.zeros(0, dtype=str), np.zeros(0), np.zeros(0, dtype=str)
        threshold = self.threshold if threshold is None else threshold
        pred = self.clf_.predict(X)
        from .metrics import nearest_identity

        dist = np.empty(len(X))
        for c in np.unique(pred):
            rows = pred == c
            gallery = self.encodings_[self.labels_ == c]
            dist[rows] = nearest_identity(gallery, np.zeros(len(gallery)), X[rows])[1]
        people = self.classes_[pred]
        names = np.where(dist <= threshold, people, UNKNOWN)
        return names, dist, people

    def predict(self, X: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """(n,) str: the person of each encoding, or "unknown"."""
        return self.predict_with_distance(X, threshold)[0]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: os.PathLike | str, *, info: dict[str, Any] | None = None) -> None:
        """Write encodings, labels, parameters and the recipe to ``path`` (.npz) atomically.

        A path encoder (a fine-tuned folder) is recorded relative to the model file, so the two can move
        together, with its sha256 so that a different model in its place is noticed. ``info``: JSON-able
        facts about the training run kept beside (``info_`` after :meth:`load`).
        """
        self._check()
        from .encoders import encoder_sha256

        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_neighbors": self.k_,
                "n_neighbors_rule": str(self.n_neighbors), "algorithm": self.algorithm, "method": self.method,
                "threshold": self.threshold,
                "loo_accuracy": {str(k): v for k, v in self.loo_scores_.items()},
                **self.recipe.relative_to(Path(path).parent).to_dict(),
                "encoder_sha256": encoder_sha256(self.recipe.encoder),
                "info": dict(info if info is not None else getattr(self, "info_", {}))}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, encodings=self.encodings_, labels=self.labels_.astype(np.int32),
                         classes=self.classes_.astype(str), metadata=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: os.PathLike | str) -> "FaceKNN":
        """Load a model written by :meth:`save`; never unpickles.

        :raises ModelFileError: missing, truncated or not a dlibplus KNN model; its encoder folder
            missing or replaced by a different model.
        """
        path = Path(path)
        if path.is_dir():
            raise ModelFileError(path, "is a folder, not a train-knn model file (a `dlibplus finetune` folder "
                                       "classifies with --classifier head)")
        if not path.is_file():
            raise ModelFileError(path, "file not found")
        arrays, meta = _read_npz(path)
        if meta.get("format") != FORMAT:
            raise ModelFileError(path, "not a dlibplus KNN model (wrong format tag)")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFileError(path, f"written by a newer dlibplus (format {meta['format_version']})")
        _check_encodings(path, arrays["encodings"])
        recipe = Recipe.from_dict(meta, path).resolved_from(path.parent)
        _check_encoder(path, recipe.encoder, meta.get("encoder_sha256"))
        try:
            labels = arrays["classes"][arrays["labels"]]
            model = cls(int(meta["n_neighbors"]), meta["algorithm"], float(meta["threshold"]), recipe,
                        str(meta.get("method", "knn")))
            model.fit(arrays["encodings"], labels)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelFileError(path, f"inconsistent KNN model ({type(exc).__name__}: {exc})") from None
        model.n_neighbors = meta.get("n_neighbors_rule", model.n_neighbors)
        model.loo_scores_ = {int(k): v for k, v in meta.get("loo_accuracy", {}).items()}
        model.info_ = meta.get("info", {k: v for k, v in meta.items() if k in _V1_INFO})
        return model


def is_model_file(path: os.PathLike | str) -> bool:
    """Whether ``path`` is a train-knn model file (what :meth:`FaceKNN.save` writes), judged by its tag."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return _read_npz(path)[1].get("format") == FORMAT
    except ModelFileError:
        return False


_V1_INFO = ("dlibplus_version", "trained_on", "n_images", "n_people")  # format 1 kept these at the top


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and JSON metadata of a KNN model file, or a ModelFileError saying what the file is not."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise ModelFileError(path, "not a train-knn model: not an .npz archive (a train-knn model is the "
                                   ".npz that `dlibplus train-knn -o` writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("encodings", "labels", "classes", "metadata")}
        meta = json.loads(str(arrays["metadata"]))
    except KeyError as exc:
        raise ModelFileError(path, f"not a dlibplus KNN model (no {exc} array)") from None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise ModelFileError(path, "not a dlibplus KNN model: it holds Python objects, which dlibplus "
                                       "never loads") from None
        raise ModelFileError(path, f"not a dlibplus KNN model, or damaged ({exc})") from None
    except Exception as exc:
        raise ModelFileError(path, f"not a dlibplus KNN model, or truncated ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(path, "not a dlibplus KNN model (its metadata is not a JSON object)")
    return arrays, meta


def _check_encoder(path: Path, spec: str, recorded_sha256: str | None) -> None:
    """A path encoder a model records must exist and be the model it was trained with."""
    from .encoders import encoder_sha256, split_flip

    base, _ = split_flip(spec)
    if base in ("dlib", "torch"):
        return
    if not Path(base).exists():
        raise ModelFileError(path, f"its encoder {base} is missing (keep the fine-tuned folder where it was "
                                   "relative to the model file, or retrain with train-knn --encoder)")
    _check_encoder_folder(path, Path(base))
    if recorded_sha256 and encoder_sha256(spec) != recorded_sha256:
        raise ModelFileError(path, f"its encoder {base} is not the model it was trained with (its model.dat "
                                   "changed): retrain with train-knn --encoder")


def _check_encoder_folder(path: Path, folder: Path) -> None:
    """A fine-tuned encoder folder must still hold its network (a re-run into it may have removed it)."""
    from . import model_folder

    if not folder.is_dir() or (folder / model_folder.MODEL_DAT).is_file():
        return
    if (folder / model_folder.CHECKPOINT).is_file():
        raise ModelFileError(path, f"its encoder folder {folder} holds an unfinished `dlibplus finetune` run "
                                   f"({model_folder.CHECKPOINT}, no {model_folder.MODEL_DAT}): finish that run "
                                   "with --resume, or retrain with train-knn --encoder")
    raise ModelFileError(path, f"its encoder folder {folder} holds no {model_folder.MODEL_DAT} any more: put the "
                               "fine-tuned model back, or retrain with train-knn --encoder")


def _check_encodings(path: Path, encodings: np.ndarray) -> None:
    """The stored encodings must be face encodings: (n, 128) real numbers."""
    if encodings.ndim != 2 or encodings.shape[1] != 128 or not np.issubdtype(encodings.dtype, np.number):
        raise ModelFileError(path, f"its encodings are not 128-d face encodings (shape {encodings.shape}, "
                                   f"{encodings.dtype}): not a train-knn model, or damaged")


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
