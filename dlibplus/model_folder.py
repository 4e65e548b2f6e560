"""The folder ``dlibplus finetune`` writes: its file names, its metadata, reading and writing it.

One owner for the format, torch-free, so that inference (``--encoder DIR``, ``predict DIR --classifier
head``, ``evaluate``, ``export``) never loads the training code::

    DIR/model.dat       the network in dlib's format (dlib and face_recognition load it), calibrated
    DIR/model.pt        the same weights for torch
    DIR/head.pt         the classification head (``predict --classifier head``)
    DIR/classes.json    the head's people, in order
    DIR/metadata.json   :class:`FinetunedMetadata`
    DIR/checkpoint.pt   the last finished epoch, for ``--resume``
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .fileio import write_json
from .recipe import Recipe

MODEL_DAT = "model.dat"
MODEL_PT = "model.pt"
HEAD_PT = "head.pt"
CLASSES = "classes.json"
METADATA = "metadata.json"
CHECKPOINT = "checkpoint.pt"

FORMAT = "dlibplus-finetuned"
FORMAT_VERSION = 2  # 2: selection, operating point and training files recorded


@dataclass
class FinetunedMetadata:
    """Everything a fine-tuned folder records about how it was made and how it measured.

    Required keys (a file without them is not a model folder): ``base_model`` (file name, sha256),
    ``config`` (the :class:`~dlibplus.train_config.FinetuneConfig` as a dict), ``classes``,
    ``face_settings``, ``calibration`` (``scale``: the factor the network's output was multiplied by).
    The rest describe the run and its validation; ``selection`` and ``operating_point`` (format 2)
    say which candidate (dlib, an interpolation, the fine-tuned weights) was kept and what tolerance
    0.6 means on the user's photos; ``cross_fit`` (``folds`` >= 2) the folds' best epochs, their epochs'
    validation figures (``fold_histories``) and the epochs of the run on every photo; ``regime`` which
    regime trained and why (:mod:`dlibplus.regime`).
    """

    base_model: dict[str, Any]
    config: dict[str, Any]
    classes: list[str]
    face_settings: dict[str, Any]
    calibration: dict[str, Any]
    calibration_flip: dict[str, Any] = field(default_factory=dict)
    head_open_set: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    operating_point: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    cross_fit: dict[str, Any] = field(default_factory=dict)
    regime: dict[str, Any] = field(default_factory=dict)
    frozen_stages: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    trained_on: str = ""
    wall_seconds: float = 0.0
    device: str = ""
    world_size: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    model_dat_sha256: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def recipe(self) -> Recipe:
        """Face settings a model made from this folder's training photos used (encoder: dlib's own)."""
        return Recipe.from_dict({"face_settings": self.face_settings}, "metadata")

    @property
    def flip_scale(self) -> float | None:
        """The calibration of the test-time-flip output (``DIR+flip``), or ``None``."""
        scale = self.calibration_flip.get("scale")
        if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
            return float(scale)
        return None

    @property
    def holds_dlib(self) -> bool:
        """Whether the run kept dlib's own network (format 2: nothing beat it), so the folder encodes as dlib."""
        chosen = self.selection.get("chosen")
        return isinstance(chosen, dict) and chosen.get("alpha") == 0

    @property
    def file_hashes(self) -> list[str]:
        """sha256 of every photo the run used, training and validation (format 2): evaluate's overlap check."""
        return list(self.data.get("files_sha256", []))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, path: os.PathLike | str) -> "FinetunedMetadata":
        """:raises ModelFileError: not this format, written by a newer dlibplus, or a required key missing."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ModelFileError(path, f"not the metadata of a `dlibplus finetune` folder (no format {FORMAT!r})")
        version = raw.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(path, f"written by a newer dlibplus (format {version}); upgrade dlibplus")
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in raw]
        if missing:
            raise ModelFileError(path, f"metadata lacks {', '.join(missing)} (a damaged or hand-edited file?)")
        # keys of a newer minor addition or of format 1 that are gone are ignored, never guessed at
        return cls(**{k: v for k, v in raw.items() if k in names})


def read_metadata(folder: os.PathLike | str) -> FinetunedMetadata:
    """The metadata of a fine-tuned folder.

    :raises ModelFileError: the file is missing, is not JSON, or is not this format.
    """
    path = Path(folder) / METADATA
    if not path.is_file():
        raise ModelFileError(path, "missing: expected the output folder of `dlibplus finetune`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(path, f"cannot be read as JSON ({exc})") from None
    return FinetunedMetadata.from_dict(raw, path)


def write_metadata(folder: os.PathLike | str, meta: FinetunedMetadata) -> None:
    """Write ``folder/metadata.json`` atomically."""
    write_json(Path(folder) / METADATA, meta.to_dict())


def read_classes(folder: os.PathLike | str) -> list[str]:
    """The head's people, in order. :raises ModelFileError: missing or not a list of names."""
    path = Path(folder) / CLASSES
    try:
        classes = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(path, "missing: expected the output folder of `dlibplus finetune`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(path, f"cannot be read as JSON ({exc})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(path, "is not a list of person names")
    return classes


def is_model_folder(path: os.PathLike | str) -> bool:
    """Whether ``path`` is a folder holding a fine-tuned ``model.dat``."""
    return Path(path).is_dir() and (Path(path) / MODEL_DAT).is_file()
