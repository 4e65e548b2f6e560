"""The face steps, one home each: settings, detect, landmarks, aligned chips.

The bottom layer that both the drop-in API (:mod:`dlibplus.api`) and the many-image pipeline
(:mod:`dlibplus.pipeline`) build on; it imports only the weight loaders and never the layers above.
Boxes are face_recognition's ``(top, right, bottom, left)`` pixel tuples ("css"); chips are what
``dlib.get_face_chip(image, shape, 150, 0.25)`` returns: uint8 RGB (150, 150, 3).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import models

CHIP_SIZE = 150  # pixels per side of an aligned chip, what dlib's face network takes
CHIP_PADDING = 0.25  # face_recognition's (and dlib's example's) padding around the landmarks

Css = tuple[int, int, int, int]  # (top, right, bottom, left), pixels


@dataclass(frozen=True)
class FaceSettings:
    """How faces are found and aligned; every field changes the result, so all key the cache.

    :param detector: ``"hog"`` or ``"cnn"``.
    :param upsample: times the image is upsampled before detection.
    :param landmarks: ``"small"`` (5 points) or ``"large"`` (68 points) for alignment.
    :param face_box: ``"detect"``, or ``"whole"`` to use the whole image as the face box (folders of
        tight face crops, where HOG often finds nothing).
    :param max_side: images longer than this (pixels) are shrunk first; 0 keeps them as they are.
    """

    detector: str = "hog"
    upsample: int = 1
    landmarks: str = "small"
    face_box: str = "detect"
    max_side: int = 0

    def __post_init__(self):
        check_detector(self.detector)
        if self.landmarks not in ("small", "large"):
            raise ValueError(f"landmarks must be 'small' or 'large', not {self.landmarks!r}")
        if self.face_box not in ("detect", "whole"):
            raise ValueError(f"face_box must be 'detect' or 'whole', not {self.face_box!r}")
        if self.upsample < 0 or self.max_side < 0:
            raise ValueError("upsample and max_side must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_detector(model: str) -> None:
    if model not in ("hog", "cnn"):
        raise ValueError(f"detector model must be 'hog' or 'cnn', not {model!r}")


# --- boxes ---------------------------------------------------------------------------------------

def rect_to_css(rect) -> Css:
    return rect.top(), rect.right(), rect.bottom(), rect.left()


def css_to_rect(css: Sequence[int]):
    import dlib

    return dlib.rectangle(int(css[3]), int(css[0]), int(css[1]), int(css[2]))


def trim_css_to_bounds(css: Css, image_shape: tuple[int, ...]) -> Css:
    return max(css[0], 0), min(css[1], image_shape[1]), min(css[2], image_shape[0]), max(css[3], 0)


# --- detect, landmarks, chips -------------------------------------------------------------------------

CNN_DEVICE = "auto"  # where the CNN detector runs; worker processes set "cpu" (no CUDA after a fork)


def cnn_detections(images: Sequence[np.ndarray], upsample: int = 1) -> list[list]:
    """dlib's MMOD detections (``.box`` css, ``.confidence``) of each image, from the exact PyTorch
    replica (:mod:`dlibplus.cnn_detector`: the same rectangles as ``dlib.cnn_face_detection_model_v1``,
    about 10x faster on CPU, batched, and on the GPU when there is one)."""
    from .cnn_detector import cnn_detector

    return cnn_detector(device=CNN_DEVICE)(list(images), upsample)


def detect_rects(img: np.ndarray, upsample: int = 1, model: str = "hog") -> list:
    """dlib rectangles of the faces in ``img`` (not clipped), as face_recognition's ``_raw_face_locations``."""
    check_detector(model)
    if model == "cnn":
        return [css_to_rect(d.box) for d in cnn_detections([img], upsample)[0]]
    return list(models.hog_detector()(img, upsample))


def detect(img: np.ndarray, upsample: int = 1, model: str = "hog") -> list[Css]:
    """Boxes of the faces in ``img`` (H, W[, 3]) uint8, clipped to the image."""
    if model == "cnn":
        return detect_cnn_batch([img], upsample)[0]
    return [trim_css_to_bounds(rect_to_css(r), img.shape) for r in detect_rects(img, upsample, model)]


def detect_cnn_batch(images: Sequence[np.ndarray], upsample: int = 1) -> list[list[Css]]:
    """:func:`detect` with the CNN detector for many images (H, W[, 3]) uint8 at once, batched on
    ``CNN_DEVICE``: one list of clipped boxes per image, in input order, each as :func:`detect` gives it."""
    return [cnn_boxes(img, dets) for img, dets in zip(images, cnn_detections(images, upsample))]


def cnn_score_maps(images: Sequence[np.ndarray], upsample: int = 1) -> list:
    """The network's part of :func:`cnn_detections`, batched on ``CNN_DEVICE``: one
    :class:`~dlibplus.cnn_detector.ScoreMap` (or ``None``) per image, whose
    :func:`~dlibplus.cnn_detector.detections` are the image's."""
    from .cnn_detector import cnn_detector

    return cnn_detector(device=CNN_DEVICE).score_maps(list(images), upsample)


def cnn_boxes(img: np.ndarray, detections: Sequence) -> list[Css]:
    """The CNN ``detections`` of ``img`` as :func:`detect` returns them: boxes clipped to the image."""
    return [trim_css_to_bounds(d.box, img.shape) for d in detections]


def landmark_shapes(img: np.ndarray, boxes: Sequence[Css] | None = None, model: str = "large") -> list:
    """dlib ``full_object_detection`` shapes of the faces in ``boxes`` (``None``: HOG, upsample 1)."""
    predictor = models.shape_predictor(model)  # validates model
    rects = detect_rects(img) if boxes is None else [css_to_rect(css) for css in boxes]
    return [predictor(img, rect) for rect in rects]


def face_chips(img: np.ndarray, shapes: Sequence) -> np.ndarray:
    """dlib's aligned chips (n, 150, 150, 3) uint8 of the faces with these landmark shapes.

    One dlib call per face, as face_recognition does: dlib's chip of a face depends on the other faces
    of the same call (they share one bounding box and pyramid), see :mod:`dlibplus.align`.
    """
    import dlib

    if not shapes:
        return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    return np.stack([dlib.get_face_chip(img, s, CHIP_SIZE, CHIP_PADDING) for s in shapes])


def face_boxes(img: np.ndarray, settings: FaceSettings) -> list[Css]:
    """Boxes of the faces in ``img`` under ``settings`` (``max_side`` not applied): detected, or the whole image."""
    if settings.face_box == "whole":
        return [(0, img.shape[1], img.shape[0], 0)]
    return detect(img, settings.upsample, settings.detector)


def find_faces(img: np.ndarray, settings: FaceSettings) -> tuple[list[Css], list]:
    """Boxes and landmark shapes of the faces in ``img`` under ``settings`` (``max_side`` not applied)."""
    boxes = face_boxes(img, settings)
    return boxes, landmark_shapes(img, boxes, settings.landmarks)


def shrink(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``img`` shrunk (Lanczos) so that its longer side is at most ``max_side``, and the scale used."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img, 1.0
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS)), scale


def rescale_boxes(boxes: Sequence[Css], scale: float, shape: tuple[int, ...]) -> np.ndarray:
    """(n, 4) int32 boxes found at ``scale`` mapped back to the original image of ``shape``."""
    arr = np.asarray(boxes, np.float64).reshape(-1, 4)
    if scale != 1.0:
        arr = np.round(arr / scale)
        arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, shape[0])
        arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, shape[1])
    return arr.astype(np.int32)


def image_faces(img: np.ndarray, settings: FaceSettings) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) int32 in ``img``'s pixels and aligned chips (n, 150, 150, 3) uint8, ``max_side`` applied."""
    small, scale = shrink(img, settings.max_side)
    return faces_in_boxes(small, face_boxes(small, settings), settings, scale, img.shape)


def faces_in_boxes(small: np.ndarray, boxes: Sequence[Css], settings: FaceSettings, scale: float,
                   shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`image_faces` returns, from boxes already found in ``small`` (``img`` shrunk by
    :func:`shrink` to ``scale``; ``shape`` is the original's): boxes (n, 4) int32 in the original's pixels
    and aligned chips (n, 150, 150, 3) uint8, landmarks by ``settings.landmarks``."""
    shapes = landmark_shapes(small, boxes, settings.landmarks)
    return rescale_boxes(boxes, scale, shape), face_chips(small, shapes)
