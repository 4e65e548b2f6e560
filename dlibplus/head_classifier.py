"""Classify faces with a fine-tuned model's own head (``dlibplus predict DIR --classifier head``).

The head holds one weight vector per trained person; a face goes to the person whose weight has the
highest cosine with the face's (centred) embedding, and is "unknown" when that cosine is below the
open-set threshold ``finetune`` calibrated on its validation photos. Distances are reported as
``1 − cosine`` so that, as with the KNN, smaller is closer and "unknown" lies beyond a threshold.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import ModelFileError
from .knn import UNKNOWN


class HeadClassifier:
    """A fine-tuned model folder's head, with the same prediction interface as :class:`~dlibplus.knn.FaceKNN`."""

    def __init__(self, head, embedding_mean: np.ndarray, classes: list[str], threshold: float, metadata: dict):
        self.head = head.eval()
        self.embedding_mean = embedding_mean
        self.classes_ = np.array(classes)
        self.threshold = threshold
        self.metadata = metadata

    @classmethod
    def load(cls, folder: os.PathLike | str) -> "HeadClassifier":
        """Load ``head.pt``, ``classes.json`` and ``metadata.json`` from a ``dlibplus finetune`` output folder."""
        import torch

        from .heads import create_head
        from .train import CLASSES, HEAD_PT, METADATA

        folder = Path(folder)
        for name in (HEAD_PT, CLASSES, METADATA):
            if not (folder / name).is_file():
                raise ModelFileError(folder / name, "missing: expected the output folder of `dlibplus finetune`")
        try:
            saved = torch.load(folder / HEAD_PT, map_location="cpu", weights_only=True)
            classes = json.loads((folder / CLASSES).read_text())
            meta = json.loads((folder / METADATA).read_text())
            head = create_head(saved["name"], len(classes), **saved["options"])
            head.load_state_dict(saved["state"])
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(folder / HEAD_PT, f"cannot load the head ({type(exc).__name__}: {exc})") from None
        cos_threshold = float(meta.get("head_open_set", {}).get("cosine_threshold", 0.0))
        usage = {"encoder": str(folder.resolve()), "face_settings": meta.get("face_settings", {}), "num_jitters": 1}
        return cls(head, saved["embedding_mean"].numpy().astype(np.float64), classes, 1.0 - cos_threshold, usage)

    def predict_with_distance(self, encodings: np.ndarray, threshold: float | None = None
                              ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Names ("unknown" beyond the threshold), cosine distances (n,), predicted people.

        :param encodings: (n, 128) from this folder's encoder. :param threshold: on ``1 − cosine``.
        """
        import torch

        x = np.asarray(encodings, dtype=np.float64).reshape(-1, 128) - self.embedding_mean
        if len(x) == 0:
            return [], np.zeros(0), np.zeros(0, dtype=str)
        with torch.no_grad():
            cos = self.head.predict(torch.from_numpy(x).float()).numpy().astype(np.float64)
        pred = cos.argmax(axis=1)
        dist = 1.0 - cos[np.arange(len(x)), pred]
        threshold = self.threshold if threshold is None else threshold
        people = self.classes_[pred]
        return [str(p) if d <= threshold else UNKNOWN for p, d in zip(people, dist)], dist, people

    def predict(self, encodings: np.ndarray, threshold: float | None = None) -> list[str]:
        return self.predict_with_distance(encodings, threshold)[0]
