"""Classify faces with a fine-tuned model's own head (``dlibplus predict DIR --classifier head``).

The head holds one weight vector per trained person; a face goes to the person whose weight has the
highest cosine with the face's (centred) embedding, and is "unknown" when that cosine is below the
open-set threshold ``finetune`` calibrated on its validation photos. Distances are reported as
``1 − cosine`` so that, as with the KNN, smaller is closer and "unknown" lies beyond a threshold.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import model_folder
from .errors import ModelFileError
from .predict import UNKNOWN
from .recipe import Recipe


class HeadClassifier:
    """A fine-tuned model folder's head, with the same prediction interface as :class:`~dlibplus.knn.FaceKNN`."""

    def __init__(self, head, embedding_mean: np.ndarray, classes: list[str], threshold: float, recipe: Recipe):
        self.head = head.eval()
        self.embedding_mean = embedding_mean
        self.classes_ = np.array(classes)
        self.threshold = threshold
        self.recipe = recipe

    @classmethod
    def load(cls, folder: os.PathLike | str) -> "HeadClassifier":
        """Load the head, its people and its open-set threshold from a ``dlibplus finetune`` output folder.

        :raises ModelFileError: a file is missing or unreadable, or the metadata has no open-set threshold.
        """
        folder = Path(folder)
        _check_folder(folder)
        meta = model_folder.read_metadata(folder)
        classes = model_folder.read_classes(folder)
        cos_threshold = meta.head_open_set.get("cosine_threshold")
        if not isinstance(cos_threshold, (int, float)):
            raise ModelFileError(folder / model_folder.METADATA, "has no open-set threshold (head_open_set); "
                                 "without it every stranger would be named: fine-tune again")
        head, mean = _load_head(folder / model_folder.HEAD_PT, classes)
        try:
            recipe = meta.recipe.with_encoder(str(folder.resolve()))
        except ModelFileError as exc:  # the recipe names no file: say which one
            raise ModelFileError(folder / model_folder.METADATA, exc.reason) from None
        return cls(head, mean, classes, 1.0 - float(cos_threshold), recipe)

    def predict_with_distance(self, encodings: np.ndarray, threshold: float | None = None
                              ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Names ("unknown" beyond the threshold), cosine distances (n,), predicted people.

        :param encodings: (n, 128) from this folder's encoder. :param threshold: on ``1 − cosine``.
        """
        import torch

        x = np.asarray(encodings, dtype=np.float64).reshape(-1, 128) - self.embedding_mean
        if len(x) == 0:
            return np.zeros(0, dtype=str), np.zeros(0), np.zeros(0, dtype=str)
        with torch.no_grad():
            cos = self.head.predict(torch.from_numpy(x).float()).numpy().astype(np.float64)
        pred = cos.argmax(axis=1)
        dist = 1.0 - cos[np.arange(len(x)), pred]
        threshold = self.threshold if threshold is None else threshold
        people = self.classes_[pred]
        return np.where(dist <= threshold, people, UNKNOWN), dist, people

    def predict(self, encodings: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return self.predict_with_distance(encodings, threshold)[0]


def _check_folder(folder: Path) -> None:
    """A finished ``dlibplus finetune`` folder, or a ModelFileError saying what ``folder`` is and what to do."""
    if folder.is_file():
        if _is_zip(folder):
            raise ModelFileError(folder, "is a train-knn model file, not a `dlibplus finetune` folder: predict with "
                                         "it without --classifier head (--classifier knn is the default)")
        raise ModelFileError(folder, "is a file; --classifier head takes the output folder of `dlibplus finetune`")
    if not folder.is_dir():
        raise ModelFileError(folder, "folder not found; --classifier head takes the output folder of "
                                     "`dlibplus finetune`")
    if (folder / "knn.json").is_file():  # knn_store.MODEL_FILE, named here to keep this module light
        raise ModelFileError(folder, "is a train-knn model, not a `dlibplus finetune` folder: predict with "
                                     "it without --classifier head (--classifier knn is the default)")
    if not (folder / model_folder.MODEL_DAT).is_file() and (folder / model_folder.CHECKPOINT).is_file():
        raise ModelFileError(folder, f"an unfinished `dlibplus finetune` run (it holds {model_folder.CHECKPOINT} but "
                                     f"no {model_folder.MODEL_DAT} yet): finish it with the same "
                                     f"`dlibplus finetune ... -o {folder}` command plus --resume")


def _load_head(path: Path, classes: list[str]) -> tuple[Any, np.ndarray]:
    """The head in ``head.pt`` and the embedding mean it was trained around (128,)."""
    from .heads import create_head

    if not path.is_file():
        raise ModelFileError(path, "missing: expected the output folder of `dlibplus finetune`")
    saved = _load_weights(path)
    try:
        head = create_head(saved["name"], len(classes), **saved["options"])
        head.load_state_dict(saved["state"])
        mean = saved["embedding_mean"].numpy().astype(np.float64).reshape(128)
    except Exception as exc:
        raise ModelFileError(path, f"does not match {model_folder.CLASSES} or is damaged "
                                   f"({type(exc).__name__}: {exc})") from None
    return head, mean


def _load_weights(path: Path) -> dict:
    """``head.pt``'s saved dict, loaded with ``weights_only`` (never unpickling code)."""
    import pickle

    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        # torch's own message suggests weights_only=False, which could run code from the file: never say that
        raise ModelFileError(path, f"not a head saved by `dlibplus finetune`, or damaged ({type(exc).__name__}); "
                                   "fine-tune again") from None
    if not isinstance(saved, dict) or not {"name", "options", "state", "embedding_mean"} <= saved.keys():
        raise ModelFileError(path, "not a head saved by `dlibplus finetune` (missing its name, options or weights)")
    return saved


def _is_zip(path: Path) -> bool:
    """Whether ``path`` starts as a zip archive does (every ``.npz`` does)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False
