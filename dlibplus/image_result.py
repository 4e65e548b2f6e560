"""What the face pipeline finds in one image (:class:`ImageFaces`), and the per-image steps that every
pipeline shares: reading the file, packing the result, keeping one odd image from ending a long run.

Both :mod:`dlibplus.data` (a worker process per image) and :mod:`dlibplus.device_pipeline` (the detector
batched in the parent) build their results here, so they give the same results and errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DlibplusError, ImageReadError


@dataclass
class ImageFaces:
    """What the pipeline found in one image.

    :ivar boxes: (n, 4) int32 ``(top, right, bottom, left)`` in the original image's pixels.
    :ivar encodings: (n, 128) float64, or ``None`` when only chips were asked for.
    :ivar chips: (n, 150, 150, 3) uint8 RGB aligned chips, or ``None``.
    :ivar error: why the image could not be used at all (unreadable file), else ``None``.
    """

    path: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    encodings: np.ndarray | None = None
    chips: np.ndarray | None = None
    error: str | None = None

    @property
    def n_faces(self) -> int:
        return len(self.boxes)


def read_image(path: Path) -> np.ndarray | ImageFaces:
    """The image (H, W, 3) uint8 RGB at ``path``, or, when it cannot be read, its result with the reason."""
    from .images import load_image_file

    try:
        return load_image_file(path)
    except ImageReadError as exc:
        return ImageFaces(path, error=exc.reason)


def faces_result(path: Path, boxes: np.ndarray, chips: np.ndarray, worker_encoder) -> ImageFaces:
    """The result of an image with these boxes (n, 4) int32 and chips (n, 150, 150, 3) uint8: the chips
    kept, or, when ``worker_encoder`` is given, replaced by their (n, 128) float64 encodings."""
    if worker_encoder is None:
        return ImageFaces(path, boxes=boxes, chips=chips)
    encodings = np.asarray(worker_encoder.encode(chips), np.float64).reshape(len(chips), 128)
    return ImageFaces(path, boxes=boxes, encodings=encodings)


def guarded(path: Path, step, *args):
    """``step(*args)``, or the result of ``path`` with the error when it fails: dlib errors on odd images must
    not kill a long run (dlibplus's own errors, a missing model file say, still do)."""
    try:
        return step(*args)
    except DlibplusError:
        raise
    except Exception as exc:
        return ImageFaces(path, error=f"{type(exc).__name__}: {exc}")
