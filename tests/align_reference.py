"""How dlib places a face's aligned chip from its landmarks, in numpy (dlib's ``get_face_chip_details``).

The tests use it with :func:`dlibplus.align.extract_image_chips` to prove the replica of dlib's chip
sampling, which jitter and training augmentation rely on, pixel for pixel against ``dlib.get_face_chip``.
The pipeline itself takes its chips from dlib. Names of :mod:`dlibplus.align` are re-exported, so the
tests read ``align.X`` for both.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from dlibplus.align import (ChipDetails, DlibRand, _pyramid_down, _rotate_point,  # noqa: F401
                            extract_image_chips, jitter_chips, jitter_image)

# dlib's 5-point template (parts 0..4: outer and inner corner of one eye, then of the other eye,
# then the bottom of the nose), in a unit square.
_FIVE_POINT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

# dlib's mean face shape for the 68-point (iBUG 300-W) parts 17..67, in a unit square.
_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)
_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)
# The 68-point alignment ignores the eyebrows (17-26) and the lower lip (55-59, 65-67): 33 parts.
_SIXTY_EIGHT_PARTS = tuple(
    i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67)
)
_SIXTY_EIGHT_TEMPLATE = np.array(
    [[_MEAN_FACE_X[i - 17], _MEAN_FACE_Y[i - 17]] for i in _SIXTY_EIGHT_PARTS]
)


def landmarks_to_array(shape: Any) -> np.ndarray:
    """A dlib ``full_object_detection``'s parts as an ``(k, 2)`` int64 array of (x, y) pixels."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.int64).reshape(-1, 2)


def _as_landmarks(landmarks: Any) -> np.ndarray:
    if hasattr(landmarks, "parts"):
        landmarks = landmarks_to_array(landmarks)
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in (5, 68):
        raise ValueError(
            f"landmarks must be a (5, 2) or (68, 2) array of (x, y), not shape {pts.shape}"
        )
    return pts


def _similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ M @ src + t`` (Umeyama), following dlib's arithmetic.

    ``src`` and ``dst`` are ``(k, 2)`` float64. Returns ``M`` (2, 2) = scale * rotation and ``t``
    (2,). Sums run point by point in order, as in dlib; dlib's own SVD routine (no LAPACK in the
    dlib-bin wheel) rounds differently from numpy's, so the result agrees to about 1e-16 relative
    (rectangles to ~1e-13 px), which has not changed a single chip pixel in the tests.
    """
    n = len(src)
    mean_from = [0.0, 0.0]
    mean_to = [0.0, 0.0]
    for (fx, fy), (tx, ty) in zip(src.tolist(), dst.tolist()):
        mean_from[0] += fx
        mean_from[1] += fy
        mean_to[0] += tx
        mean_to[1] += ty
    mean_from = [mean_from[0] / n, mean_from[1] / n]
    mean_to = [mean_to[0] / n, mean_to[1] / n]

    sigma_from = 0.0
    cov = [[0.0, 0.0], [0.0, 0.0]]
    for (fx, fy), (tx, ty) in zip(src.tolist(), dst.tolist()):
        dfx, dfy = fx - mean_from[0], fy - mean_from[1]
        dtx, dty = tx - mean_to[0], ty - mean_to[1]
        sigma_from += dfx * dfx + dfy * dfy
        cov[0][0] += dtx * dfx
        cov[0][1] += dtx * dfy
        cov[1][0] += dty * dfx
        cov[1][1] += dty * dfy
    sigma_from /= n
    cov = np.array(cov) / n

    u, d, vt = np.linalg.svd(cov)
    s = np.ones(2)
    det = cov[0, 0] * cov[1, 1] - cov[0, 1] * cov[1, 0]
    if det < 0 or (det == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        if d[1] < d[0]:
            s[1] = -1.0
        else:
            s[0] = -1.0
    r = (u * s) @ vt
    c = 1.0
    if sigma_from != 0:
        c = 1.0 / sigma_from * float(np.dot(d, s))
    m = c * r
    t = np.array(mean_to) - m @ np.array(mean_from)
    return m, t


def get_face_chip_details(landmarks: Any, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """Where dlib cuts the aligned face chip for these landmarks (dlib's ``get_face_chip_details``).

    ``landmarks``: ``(5, 2)`` or ``(68, 2)`` (x, y) pixel positions from dlib's 5- or 68-point
    shape predictor (or the ``full_object_detection`` itself). ``size``: chip side in pixels.
    ``padding``: border around the template face, as a fraction of its size (0.25 is what
    ``compute_face_descriptor`` uses; note dlib's own C++ default is 0.2 with size 200).
    """
    pts = _as_landmarks(landmarks)
    if size <= 0 or padding < 0:
        raise ValueError(f"need size > 0 and padding >= 0, got size={size}, padding={padding}")
    if len(pts) == 5:
        template, image_pts = _FIVE_POINT_TEMPLATE, pts
    else:
        template, image_pts = _SIXTY_EIGHT_TEMPLATE, pts[list(_SIXTY_EIGHT_PARTS)]
    chip_pts = (padding + template) / (2 * padding + 1) * size

    m, t = _similarity_transform(chip_pts, image_pts)
    px, py = float(m[0, 0]), float(m[1, 0])  # M @ (1, 0)
    angle = math.atan2(py, px)
    scale = math.sqrt(px * px + py * py)
    half = size / 2.0
    cx = float(m[0, 0] * half + m[0, 1] * half + t[0])
    cy = float(m[1, 0] * half + m[1, 1] * half + t[1])
    w = size * scale - 1  # dlib's centered_drect(p, w, h) subtracts 1 first
    h = size * scale - 1
    rect = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return ChipDetails(rect=rect, angle=angle, rows=int(size), cols=int(size))


def get_face_chips(img: np.ndarray, landmarks_list: Sequence[Any], size: int = 150,
                   padding: float = 0.25) -> list[np.ndarray]:
    """All faces' aligned chips in one extraction call, as ``dlib.get_face_chips``.

    ``landmarks_list``: one ``(5, 2)``/``(68, 2)`` landmark array (or ``full_object_detection``)
    per face. Returns uint8 ``(size, size[, 3])`` chips. The faces share one bounding box and
    pyramid (see :func:`extract_image_chips`).
    """
    return extract_image_chips(
        img, [get_face_chip_details(lm, size, padding) for lm in landmarks_list]
    )


def get_face_chip(img: np.ndarray, landmarks: Any, size: int = 150,
                  padding: float = 0.25) -> np.ndarray:
    """One face's aligned uint8 ``(size, size[, 3])`` chip, as ``dlib.get_face_chip``."""
    return get_face_chips(img, [landmarks], size, padding)[0]

