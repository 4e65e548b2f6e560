"""Reading and writing train-knn models, never with pickle.

A model is a folder (format 3)::

    knn.json                  format tag and version, parameters, recipe, classes, file names, info
    gallery-<token>/          the encodings and their search index (:meth:`GalleryIndex.save`): float32,
                              memory-mapped on load, so a million-face model opens in milliseconds
    labels-<token>.npy        (n,) int32: row → index into ``classes``
    sources-<token>.npy       (n,) 32-byte sha256 of each row's photo (``train-knn --add`` skips photos
                              already in the model); absent when the rows came from arrays
    classifier-<token>.npz    ``prototype``: class means; ``svm``: the linear SVM's coefficients

``knn.json`` is the commit point: a save writes fresh token-named files, replaces ``knn.json`` in one
step, then deletes the previous token's files, so a crash leaves the previous model whole.

Models written by dlibplus before the folder format are single ``.npz`` files (format 1 and 2): they
still load (their encodings are read into memory and their classifier refit, as then).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFileError
from .fileio import atomic_path

FORMAT = "dlibplus-knn"
FORMAT_VERSION = 3  # 3: a folder with a memory-mapped gallery; 2: .npz, relative encoder + sha256; 1: .npz
MODEL_FILE = "knn.json"
_PARTS = ("gallery", "labels", "sources", "classifier")  # token-named entries a save writes
_V1_INFO = ("dlibplus_version", "trained_on", "n_images", "n_people")  # format 1 kept these at the top


@dataclass
class StoredModel:
    """What a model file holds, before it becomes a :class:`~dlibplus.knn.FaceKNN`.

    :ivar meta: the JSON metadata (parameters, recipe, info).
    :ivar classes: (c,) str person names. :ivar labels: (n,) int32 indices into ``classes``.
    :ivar index: a :class:`~dlibplus.gallery.GalleryIndex` (format 3), or ``None`` for a legacy file,
        whose (n, 128) encodings are in ``encodings``.
    :ivar sources: (n,) ``S32`` sha256 digests, or ``None``.
    :ivar classifier: the method's learned arrays (format 3), e.g. ``{"centroids": (c, 128)}``.
    """

    meta: dict[str, Any]
    classes: np.ndarray
    labels: np.ndarray
    index: Any = None
    encodings: np.ndarray | None = None
    sources: np.ndarray | None = None
    classifier: dict[str, np.ndarray] = field(default_factory=dict)


# --- telling what a path is -------------------------------------------------------------------------------

def is_model_folder(path: os.PathLike | str) -> bool:
    """Whether ``path`` is a folder holding a train-knn model (its ``knn.json`` carries the format tag)."""
    meta_path = Path(path) / MODEL_FILE
    if not meta_path.is_file():
        return False
    try:
        return _read_json(meta_path).get("format") == FORMAT
    except ModelFileError:
        return False


def is_legacy_model_file(path: os.PathLike | str) -> bool:
    """Whether ``path`` is a single-file ``.npz`` model of dlibplus before format 3."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return _read_npz(path)[1].get("format") == FORMAT
    except ModelFileError:
        return False


def is_leftover_folder(path: os.PathLike | str) -> bool:
    """A folder a save began and never committed (no ``knn.json``; only entries a save writes): safe to
    write a model into again."""
    path = Path(path)
    if not path.is_dir() or (path / MODEL_FILE).exists():
        return False
    return all(entry.name.startswith(tuple(f"{p}-" for p in _PARTS) + (f".{MODEL_FILE}.",))
               for entry in path.iterdir())


# --- writing -------------------------------------------------------------------------------------------

def write_model(folder: os.PathLike | str, meta: dict[str, Any], classes: np.ndarray, labels: np.ndarray,
                index, sources: np.ndarray | None, classifier: dict[str, np.ndarray]) -> Path:
    """Write a model folder atomically (module docstring); returns the folder.

    :param meta: JSON-able parameters, recipe and info (``format``, ``classes`` and ``files`` are added).
    :param index: the :class:`~dlibplus.gallery.GalleryIndex` of the encodings.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = _read_json(folder / MODEL_FILE).get("files", {}) if is_model_folder(folder) else {}
    token = secrets.token_hex(6)
    files: dict[str, str | None] = {"gallery": f"gallery-{token}", "labels": f"labels-{token}.npy",
                                    "sources": None, "classifier": None}
    index.save(folder / files["gallery"])
    _save_npy(folder / files["labels"], np.asarray(labels, np.int32))
    if sources is not None:
        files["sources"] = f"sources-{token}.npy"
        _save_npy(folder / files["sources"], np.asarray(sources, "S32"))
    if classifier:
        files["classifier"] = f"classifier-{token}.npz"
        with atomic_path(folder / files["classifier"]) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.asarray(v, np.float64) for k, v in classifier.items()})
    full = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "n": int(len(labels)),
            "classes": [str(c) for c in classes], "files": files, "gallery": index.info}
    with atomic_path(folder / MODEL_FILE) as tmp:
        tmp.write_text(json.dumps(full, indent=1) + "\n")
    for part, name in old.items():  # the previous token's files, now unreferenced
        if part in _PARTS and name and name != files.get(part) and "/" not in name and name.startswith(part):
            target = folder / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    return folder


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


# --- reading -------------------------------------------------------------------------------------------

def read_model(path: os.PathLike | str, *, mmap: bool = True) -> StoredModel:
    """The parts of a model folder (or of a legacy ``.npz``).

    :raises ModelFileError: missing, truncated, from a newer dlibplus, or not a train-knn model.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise ModelFileError(path, f"is a folder without {MODEL_FILE}, not a train-knn model (a `dlibplus "
                                       "finetune` folder classifies with --classifier head)")
        return _read_folder(path, mmap)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    arrays, meta = _read_npz(path)
    _check_format(path, meta)
    if meta.get("info") is None:
        meta["info"] = {k: v for k, v in meta.items() if k in _V1_INFO}
    encodings = arrays["encodings"]
    _check_encodings(path, encodings)
    return StoredModel(meta, arrays["classes"].astype(str), arrays["labels"].astype(np.int32), encodings=encodings)


def _read_folder(folder: Path, mmap: bool) -> StoredModel:
    from .gallery import GalleryIndex

    meta = _read_json(folder / MODEL_FILE)
    _check_format(folder, meta)
    files = meta.get("files") or {}
    try:
        classes = np.array([str(c) for c in meta["classes"]])
        n = int(meta["n"])
        index = GalleryIndex.load(folder / str(files["gallery"]), mmap=mmap)
        labels = _load_npy(folder / str(files["labels"]), mmap=False)
        sources = _load_npy(folder / files["sources"], mmap=mmap) if files.get("sources") else None
        classifier = {}
        if files.get("classifier"):
            with np.load(folder / files["classifier"], allow_pickle=False) as z:
                classifier = {k: z[k] for k in z.files}
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ModelFileError(folder, f"incomplete or damaged train-knn model ({type(exc).__name__}: {exc})") from None
    _check_encodings(folder, index.encodings)
    if len(index) != n or labels.shape != (n,) or (sources is not None and sources.shape != (n,)):
        raise ModelFileError(folder, f"its parts disagree: {MODEL_FILE} says {n} faces, the gallery holds "
                                     f"{len(index)}, the labels {len(labels)}")
    if n and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ModelFileError(folder, "its labels point outside its list of people")
    return StoredModel(meta, classes, labels.astype(np.int32), index=index, sources=sources, classifier=classifier)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise ModelFileError(path, "missing: the model folder is incomplete")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise ModelFileError(path, f"not a plain array ({exc}): dlibplus never loads Python objects") from None


def _check_format(path: Path, meta: dict[str, Any]) -> None:
    if meta.get("format") != FORMAT:
        raise ModelFileError(path, "not a dlibplus KNN model (wrong format tag)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(path, f"written by a newer dlibplus (format {meta['format_version']})")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(path, f"cannot be read as a train-knn model ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(path, "not a dlibplus KNN model (not a JSON object)")
    return meta


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and JSON metadata of a single-file model, or a ModelFileError saying what it is not."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise ModelFileError(path, "not a train-knn model: not an .npz archive nor a model folder (a train-knn "
                                   "model is the folder that `dlibplus train-knn -o` writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("encodings", "labels", "classes", "metadata")}
        meta = json.loads(str(arrays["metadata"]))
    except KeyError as exc:
        raise ModelFileError(path, f"not a dlibplus KNN model (no {exc} array)") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ModelFileError(path, "not a dlibplus KNN model: it holds Python objects, which dlibplus "
                                       "never loads") from None
        raise ModelFileError(path, f"not a dlibplus KNN model, or damaged ({exc})") from None
    except Exception as exc:
        raise ModelFileError(path, f"not a dlibplus KNN model, or truncated ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(path, "not a dlibplus KNN model (its metadata is not a JSON object)")
    return arrays, meta


def _check_encodings(path: Path, encodings: np.ndarray) -> None:
    """The stored encodings must be face encodings: (n, 128) real numbers."""
    if encodings.ndim != 2 or encodings.shape[1] != 128 or not np.issubdtype(encodings.dtype, np.number):
        raise ModelFileError(path, f"its encodings are not 128-d face encodings (shape {encodings.shape}, "
                                   f"{encodings.dtype}): not a train-knn model, or damaged")


# --- the encoder a model was trained with ---------------------------------------------------------------

def check_encoder(path: Path, spec: str, recorded_sha256: str | None) -> None:
    """A path encoder a model records must exist and be the model it was trained with."""
    from .encoders import encoder_sha256, split_flip

    base, _ = split_flip(spec)
    if base in ("dlib", "torch"):
        return
    if not Path(base).exists():
        raise ModelFileError(path, f"its encoder {base} is missing (keep the fine-tuned folder where it was "
                                   "relative to the model, or retrain with train-knn --encoder)")
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
