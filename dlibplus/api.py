"""The face_recognition 1.3.0 API, function for function, on dlib.

Same names, signatures, defaults and results (boxes and landmarks exactly, encodings to float
precision), so ``import dlibplus as face_recognition`` is a drop-in change. Differences, all where
the original hurts users:

- models load lazily on first use, so importing is instant, and a missing or corrupt model file
  raises :class:`~dlibplus.errors.ModelFileError` instead of printing and calling ``quit()``;
- an unknown ``model=`` string raises ``ValueError`` (face_recognition silently falls back to HOG or
  to the 68-point predictor);
- ``batch_face_locations`` takes images of different sizes (the original raises dlib's RuntimeError) and
  clips each image's boxes to that image (the original clips all of them to the first image's size);
- ``face_encodings`` takes ``encoder=``: ``None`` (dlib itself, the default), an encoder object from
  :func:`dlibplus.load_encoder`, or a spec string (``'dlib'``, ``'torch'``, a fine-tuned model dir);
- :func:`load_image_file` is documented in :mod:`dlibplus.images`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import faces, models
from .faces import Css
from .images import load_image_file  # noqa: F401  (re-exported)

__all__ = ["load_image_file", "face_locations", "batch_face_locations", "face_landmarks", "face_encodings",
           "compare_faces", "face_distance"]

_raw_face_locations = faces.detect_rects  # face_recognition's private name, kept for its users


def face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog") -> list[Css]:
    """Bounding boxes of the faces in an image.

    :param img: (H, W, 3) or (H, W) uint8 array.
    :param number_of_times_to_upsample: how many times to upsample the image looking for faces;
        higher finds smaller faces and is slower.
    :param model: ``"hog"`` (fast on CPU) or ``"cnn"`` (more accurate, dlib's MMOD detector).
    :return: list of ``(top, right, bottom, left)`` int tuples, clipped to the image.
    """
    return faces.detect(img, number_of_times_to_upsample, model)


def batch_face_locations(images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1,
                         batch_size: int = 128) -> list[list[Css]]:
    """CNN face boxes for a batch of images, many per forward pass (on the GPU when there is one).

    dlib's MMOD detector, as its exact PyTorch replica (:func:`dlibplus.faces.cnn_detections`). Images
    of different sizes are fine; results come back in input order, each box clipped to its own image.
    ``batch_size`` is accepted for face_recognition's signature; batches are sized by pixels instead.

    :return: one list of ``(top, right, bottom, left)`` tuples per image.
    """
    images = list(images)
    return [[faces.trim_css_to_bounds(d.box, img.shape) for d in detections]
            for img, detections in zip(images, faces.cnn_detections(images, number_of_times_to_upsample))]


def face_landmarks(face_image: np.ndarray, face_locations: Sequence[Css] | None = None,
                   model: str = "large") -> list[dict[str, list[tuple[int, int]]]]:
    """Facial feature points of each face, as dicts of ``(x, y)`` pixel tuples.

    :param face_locations: boxes to use; ``None`` runs the HOG detector (upsample 1).
    :param model: ``"large"`` (68 points: chin, eyebrows, nose, eyes, lips) or ``"small"``
        (5 points: nose_tip, left_eye, right_eye).
    """
    if model not in ("large", "small"):
        raise ValueError("Invalid landmarks model type. Supported models are ['small', 'large'].")
    shapes = faces.landmark_shapes(face_image, face_locations, model)
    all_points = [[(p.x, p.y) for p in shape.parts()] for shape in shapes]
    if model == "large":
        return [{
            "chin": points[0:17],
            "left_eyebrow": points[17:22],
            "right_eyebrow": points[22:27],
            "nose_bridge": points[27:31],
            "nose_tip": points[31:36],
            "left_eye": points[36:42],
            "right_eye": points[42:48],
            "top_lip": points[48:55] + [points[64], points[63], points[62], points[61], points[60]],
            "bottom_lip": points[54:60] + [points[48], points[60], points[67], points[66], points[65],
                                           points[64]],
        } for points in all_points]
    return [{"nose_tip": [points[4]], "left_eye": points[2:4], "right_eye": points[0:2]}
            for points in all_points]


def face_encodings(face_image: np.ndarray, known_face_locations: Sequence[Css] | None = None,
                   num_jitters: int = 1, model: str = "small", *, encoder: Any = None) -> list[np.ndarray]:
    """The 128-d encoding of each face in an image.

    :param face_image: (H, W, 3) uint8 RGB array.
    :param known_face_locations: boxes to encode; ``None`` runs the HOG detector (upsample 1).
    :param num_jitters: how many randomly jittered copies to average; ``<= 1`` means none
        (100 is about 100× slower and slightly more accurate).
    :param model: landmark model used to align the face: ``"small"`` (5 points, the default, as in
        face_recognition 1.3.0's code) or ``"large"`` (68 points).
    :param encoder: ``None`` for dlib itself (jitter as face_recognition's: its random sequence runs on
        across calls); otherwise an encoder (see :func:`dlibplus.load_encoder`) or a spec such as
        ``'torch'`` or a fine-tuned model folder (jitter seeded per face: see
        :class:`~dlibplus.encoders.JitterEncoder`).
    :return: list of (128,) float64 arrays, one per face, in box order.
    """
    if model not in ("large", "small"):
        raise ValueError(f"landmark model must be 'large' or 'small', not {model!r}")
    face_image = np.ascontiguousarray(face_image)
    shapes = faces.landmark_shapes(face_image, known_face_locations, model)
    if encoder is None and num_jitters > 1:
        # face_recognition's jitter exactly: the shared model's random sequence runs on across calls
        net = models.face_recognition_model()
        return [np.array(net.compute_face_descriptor(face_image, shape, num_jitters)) for shape in shapes]

    from .encoders import DlibEncoder, load_encoder, with_jitter

    if encoder is None:
        encoder = DlibEncoder()
    elif isinstance(encoder, str):
        encoder = load_encoder(encoder)
    if not shapes:
        return []
    return list(with_jitter(encoder, num_jitters).encode(faces.face_chips(face_image, shapes)))


def face_distance(face_encodings: Sequence[np.ndarray] | np.ndarray, face_to_compare: np.ndarray) -> np.ndarray:
    """Euclidean distance from each known encoding to ``face_to_compare``; (n,) float array."""
    if len(face_encodings) == 0:
        return np.empty((0))
    return np.linalg.norm(np.asarray(face_encodings) - face_to_compare, axis=1)


def compare_faces(known_face_encodings: Sequence[np.ndarray] | np.ndarray, face_encoding_to_check: np.ndarray,
                  tolerance: float = 0.6) -> list:
    """``distance <= tolerance`` for each known encoding; lower tolerance is stricter, 0.6 is typical."""
    return list(face_distance(known_face_encodings, face_encoding_to_check) <= tolerance)
