"""The recipe of a set of encodings: how faces were found, aligned and encoded.

A classifier (a train-knn model, a fine-tuned head) only works on encodings made the way its training
encodings were; it records its :class:`Recipe` and prediction follows it. Torch-free.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .faces import FaceSettings


FLIP_SUFFIX = "+flip"  # an encoder spec ending in this gets test-time flip


def split_flip(spec: str) -> tuple[str, bool]:
    """``("mymodel/", True)`` for ``"mymodel/+flip"``; a spec without the suffix (or an existing path that
    happens to end in it) comes back unchanged with ``False``."""
    if spec.endswith(FLIP_SUFFIX) and spec != FLIP_SUFFIX and not Path(spec).exists():
        return spec[:-len(FLIP_SUFFIX)], True
    return spec, False


@dataclass(frozen=True)
class Recipe:
    """:param encoder: an encoder spec (``'dlib'``, ``'torch'``, a ``.dat`` file or a fine-tuned folder,
        optionally ``+flip``; paths as given, see :meth:`resolve_encoder_path`).
    :param face_settings: detection and alignment settings.
    :param num_jitters: dlib's jitter, 1 for none.
    :param jitter_scale: the factor jittered encodings are multiplied by (:mod:`dlibplus.jitter_scale`: so
        that 0.6 keeps its meaning); 1.0 without jitter and in models written before it existed.
    """

    encoder: str = "dlib"
    face_settings: FaceSettings = field(default_factory=FaceSettings)
    num_jitters: int = 1
    jitter_scale: float = 1.0

    def __post_init__(self):
        if self.num_jitters < 1:
            raise ValueError(f"num_jitters must be >= 1, not {self.num_jitters}")
        if not self.jitter_scale > 0:
            raise ValueError(f"jitter_scale must be > 0, not {self.jitter_scale}")

    def to_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "face_settings": self.face_settings.to_dict(),
                "num_jitters": self.num_jitters, "jitter_scale": self.jitter_scale}

    @classmethod
    def from_dict(cls, meta: dict[str, Any], source: os.PathLike | str) -> "Recipe":
        """The recipe recorded in ``meta`` (a model's metadata); ``source`` names the model in errors.

        :raises ModelFileError: a recorded setting is not one dlibplus knows.
        """
        try:
            return cls(encoder=str(meta.get("encoder", "dlib")),
                       face_settings=FaceSettings(**meta.get("face_settings", {})),
                       num_jitters=int(meta.get("num_jitters", 1)),
                       jitter_scale=float(meta.get("jitter_scale", 1.0)))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(source, f"its recorded face settings or encoder are not usable ({exc})") from None

    def with_encoder(self, encoder: str) -> "Recipe":
        return replace(self, encoder=encoder)

    def with_face_settings(self, face_settings: FaceSettings) -> "Recipe":
        return replace(self, face_settings=face_settings)

    def relative_to(self, folder: os.PathLike | str) -> "Recipe":
        """The recipe with a path encoder written relative to ``folder`` (where the model file is), so a
        model and its encoder folder can move together."""
        base, flip = split_flip(self.encoder)
        if base in ("dlib", "torch"):
            return self
        rel = os.path.relpath(Path(base).resolve(), Path(folder).resolve())
        return self.with_encoder(rel + (FLIP_SUFFIX if flip else ""))

    def resolved_from(self, folder: os.PathLike | str) -> "Recipe":
        """The inverse of :meth:`relative_to`: a relative path encoder resolved against ``folder``."""
        base, flip = split_flip(self.encoder)
        if base in ("dlib", "torch") or Path(base).is_absolute():
            return self
        return self.with_encoder(str((Path(folder) / base).resolve()) + (FLIP_SUFFIX if flip else ""))
