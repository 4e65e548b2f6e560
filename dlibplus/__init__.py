"""dlibplus: face_recognition's API on dlib, and a PyTorch replica of dlib's face ResNet to fine-tune.

``import dlibplus as face_recognition`` gives the seven face_recognition functions with the same
signatures, defaults and results. Importing is instant: models load on first use.
"""
from .api import (
    batch_face_locations,
    compare_faces,
    face_distance,
    face_encodings,
    face_landmarks,
    face_locations,
    load_image_file,
)

from ._version import __version__

__all__ = [
    "load_image_file", "face_locations", "batch_face_locations", "face_landmarks", "face_encodings",
    "compare_faces", "face_distance", "load_encoder", "__version__",
]


def load_encoder(spec="dlib", **kwargs):
    """An encoder for ``face_encodings(..., encoder=...)``: ``'dlib'``, ``'torch'``, a ``.dat`` file or a
    ``dlibplus finetune`` output folder. See :func:`dlibplus.encoders.load_encoder`."""
    from .encoders import load_encoder as _load

    return _load(spec, **kwargs)
