"""Where the dlib weight files are, and lazy, cached loaders for them.

The weights come from the ``face_recognition_models`` distribution, located by path through
``importlib`` *without importing it*: its ``__init__`` imports ``pkg_resources``, which setuptools >= 81
no longer ships. ``DLIBPLUS_MODELS`` may point at a folder holding the same ``.dat`` files instead.
Nothing here is loaded at import time.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from .errors import ModelFileError

FACE_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
POSE_68 = "shape_predictor_68_face_landmarks.dat"
POSE_5 = "shape_predictor_5_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"


def models_dir() -> Path:
    """The folder holding dlib's ``.dat`` files (``DLIBPLUS_MODELS`` or face_recognition_models')."""
    override = os.environ.get("DLIBPLUS_MODELS")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "face_recognition_models",
            "the package is not installed; run `pip install face_recognition_models` "
            "or set DLIBPLUS_MODELS to a folder holding dlib's .dat files",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_path(name: str) -> Path:
    """Path of one weight file; raises :class:`ModelFileError` naming it when it is missing."""
    path = models_dir() / name
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    return path


def _load(loader, name: str):
    path = model_path(name)
    try:
        return loader(str(path))
    except RuntimeError as exc:  # dlib raises RuntimeError on a corrupt or foreign file
        raise ModelFileError(path, f"dlib could not load it ({exc})") from exc


@functools.lru_cache(maxsize=None)
def hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def cnn_detector():
    import dlib

    return _load(dlib.cnn_face_detection_model_v1, CNN_DETECTOR)


@functools.lru_cache(maxsize=None)
def shape_predictor(model: str):
    """The 68-point (``"large"``) or 5-point (``"small"``) landmark predictor."""
    import dlib

    if model == "large":
        return _load(dlib.shape_predictor, POSE_68)
    if model == "small":
        return _load(dlib.shape_predictor, POSE_5)
    raise ValueError(f"landmark model must be 'large' or 'small', not {model!r}")


@functools.lru_cache(maxsize=None)
def face_recognition_model():
    return new_face_recognition_model()


def new_face_recognition_model():
    """A fresh, uncached copy of dlib's face network (with its own jitter random state)."""
    import dlib

    return _load(dlib.face_recognition_model_v1, FACE_RECOGNITION_MODEL)
