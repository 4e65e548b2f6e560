"""The face_recognition 1.3.0 API, function for function, on dlib.

Same names, signatures, defaults and results (boxes and landmarks exactly, encodings to float
precision), so ``import dlibplus as face_recognition`` is a drop-in change. Differences, all where
the original hurts users:

- models load lazily on first use, so importing is instant, and a missing or corrupt model file
  raises :class:`~dlibplus.errors.ModelFileError` instead of printing and calling ``quit()``;
- an unknown ``model=`` string raises ``ValueError`` (face_recognition silently falls back to HOG or
  to the 68-point predictor);
- ``batch_face_locations`` clips each image's boxes to that image (the original clips all of them
  to the first image's size);
- ``face_encodings`` takes ``encoder=``: ``None`` (dlib itself, the default), an encoder object from
  :func:`dlibplus.load_encoder`, or a spec string (``'dlib'``, ``'torch'``, a fine-tuned model dir);
- :func:`load_image_file` is documented in :mod:`dlibplus.images`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import models
from .images import load_image_file  # noqa: F401  (re-exported)

__all__ = ["load_image_file", "face_locations", "batch_face_locations", "face_landmarks", "face_encodings",
           "compare_faces", "face_distance"]

Css = tuple[int, int, int, int]  # (top, right, bottom, left), pixels


def _rect_to_css(rect) -> Css:
    return rect.top(), rect.right(), rect.bottom(), rect.left()


def _css_to_rect(css: Sequence[int]):
    import dlib

    return dlib.rectangle(int(css[3]), int(css[0]), int(css[1]), int(css[2]))


def _trim_css_to_bounds(css: Css, image_shape: tuple[int, ...]) -> Css:
    return max(css[0], 0), min(css[1], image_shape[1]), min(css[2], image_shape[0]), max(css[3], 0)


def _check_detector(model: str) -> None:
    if model not in ("hog", "cnn"):
        raise ValueError(f"detector model must be 'hog' or 'cnn', not {model!r}")


def _raw_face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog"):
    _check_detector(model)
    if model == "cnn":
        return [d.rect for d in models.cnn_detector()(img, number_of_times_to_upsample)]
    return list(models.hog_detector()(img, number_of_times_to_upsample))


def face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog") -> list[Css]:
    """Bounding boxes of the faces in an image.

    :param img: (H, W, 3) or (H, W) uint8 array.
    :param number_of_times_to_upsample: how many times to upsample the image looking for faces;
        higher finds smaller faces and is slower.
    :param model: ``"hog"`` (fast on CPU) or ``"cnn"`` (more accurate, dlib's MMOD detector).
    :return: list of ``(top, right, bottom, left)`` int tuples, clipped to the image.
    """
    return [_trim_css_to_bounds(_rect_to_css(r), img.shape)
            for r in _raw_face_locations(img, number_of_times_to_upsample, model)]


def batch_face_locations(images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1,
                         batch_size: int = 128) -> list[list[Css]]:
    """CNN face boxes for a batch of same-sized images (faster on a CUDA build of dlib).

    :return: one list of ``(top, right, bottom, left)`` tuples per image.
    """
    batched = models.cnn_detector()(list(images), number_of_times_to_upsample, batch_size=batch_size)
    return [[_trim_css_to_bounds(_rect_to_css(d.rect), img.shape) for d in detections]
            for img, detections in zip(images, batched)]


def _raw_face_landmarks(face_image: np.ndarray, face_locations: Sequence[Css] | None = None,
                        model: str = "large") -> list:
    predictor = models.shape_predictor(model)  # validates model
    if face_locations is None:
        rects = _raw_face_locations(face_image)
    else:
        rects = [_css_to_rect(css) for css in face_locations]
    return [predictor(face_image, rect) for rect in rects]


def face_landmarks(face_image: np.ndarray, face_locations: Sequence[Css] | None = None,
                   model: str = "large") -> list[dict[str, list[tuple[int, int]]]]:
    """Facial feature points of each face, as dicts of ``(x, y)`` pixel tuples.

    :param face_locations: boxes to use; ``None`` runs the HOG detector (upsample 1).
    :param model: ``"large"`` (68 points: chin, eyebrows, nose, eyes, lips) or ``"small"``
        (5 points: nose_tip, left_eye, right_eye).
    """
    if model not in ("large", "small"):
        raise ValueError("Invalid landmarks model type. Supported models are ['small', 'large'].")
    shapes = _raw_face_landmarks(face_image, face_locations, model)
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
    :param encoder: ``None`` for dlib itself; otherwise an encoder (see :func:`dlibplus.load_encoder`)
        or a spec such as ``'torch'`` or a fine-tuned model folder.
    :return: list of (128,) float64 arrays, one per face, in box order.
    """
    if model not in ("large", "small"):
        raise ValueError(f"landmark model must be 'large' or 'small', not {model!r}")
    face_image = np.ascontiguousarray(face_image)
    shapes = _raw_face_landmarks(face_image, known_face_locations, model)
    if encoder is None:
        net = models.face_recognition_model()
        return [np.array(net.compute_face_descriptor(face_image, shape, num_jitters)) for shape in shapes]

    from .data import face_chips
    from .encoders import load_encoder

    if isinstance(encoder, str):
        encoder = load_encoder(encoder)
    if not shapes:
        return []
    return list(_encode_jittered(encoder, face_chips(face_image, shapes), num_jitters))


def _encode_jittered(encoder: Any, chips: np.ndarray, num_jitters: int) -> np.ndarray:
    """dlib's jitter on any encoder: the mean encoding of ``num_jitters`` jittered copies per chip.

    Like dlib's model object, each encoder owns one random sequence that persists across calls, so
    the original network under :class:`~dlibplus.encoders.TorchEncoder` gives dlib's jittered encodings.
    """
    if num_jitters <= 1:
        return np.asarray(encoder.encode(chips), dtype=np.float64)
    from .align import DlibRand, jitter_image

    rng = getattr(encoder, "_jitter_rng", None)
    if rng is None:
        rng = encoder._jitter_rng = DlibRand()
    out = []
    for chip in chips:
        copies = np.stack([jitter_image(chip, rng) for _ in range(num_jitters)])
        # dlib averages in float32
        out.append(np.asarray(encoder.encode(copies), dtype=np.float32).mean(axis=0, dtype=np.float32))
    return np.asarray(out, dtype=np.float64)


def face_distance(face_encodings: Sequence[np.ndarray] | np.ndarray, face_to_compare: np.ndarray) -> np.ndarray:
    """Euclidean distance from each known encoding to ``face_to_compare``; (n,) float array."""
    if len(face_encodings) == 0:
        return np.empty((0))
    return np.linalg.norm(np.asarray(face_encodings) - face_to_compare, axis=1)


def compare_faces(known_face_encodings: Sequence[np.ndarray] | np.ndarray, face_encoding_to_check: np.ndarray,
                  tolerance: float = 0.6) -> list:
    """``distance <= tolerance`` for each known encoding; lower tolerance is stricter, 0.6 is typical."""
    return list(face_distance(known_face_encodings, face_encoding_to_check) <= tolerance)
