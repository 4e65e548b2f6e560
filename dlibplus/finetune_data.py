"""The photos a fine-tuning run learns from and is checked on: aligned chips, labels, the split.

:func:`prepare_finetune_data` is what ``dlibplus finetune`` does before training, as a library call:
align every photo of a people folder once (cached), leave out people who cannot be split, and split
each person's photos into train and validation (or take validation from another folder). Torch-free.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataFolderError
from .faces import FaceSettings


@dataclass
class ChipSet:
    """Aligned chips with labels. ``chips``: (n, 150, 150, 3) uint8; ``labels``: (n,) int64 into ``classes``."""

    chips: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "ChipSet":
        return ChipSet(self.chips[idx], self.labels[idx], self.classes, [self.paths[i] for i in idx])

    def fingerprint(self) -> str:
        """sha256 over (label, chip bytes) in order: identifies the training data exactly."""
        h = hashlib.sha256()
        for label, chip in zip(self.labels, self.chips):
            h.update(self.classes[label].encode())
            h.update(chip.tobytes())
        return h.hexdigest()


@dataclass
class FinetuneData:
    """What a run trains and validates on, and what was left out on the way.

    :ivar people: the :class:`~dlibplus.people.PeopleSet` of the training folder (its skip report).
    :ivar dropped: people left out for having too few usable photos.
    :ivar val_strangers: people of ``--val-folder`` who are not in the training folder (left out).
    :ivar val_folder: the ``--val-folder`` validated on, ``None`` when ``val`` was split off ``train``'s folder.
    """

    train: ChipSet
    val: ChipSet
    people: Any
    dropped: list[str] = field(default_factory=list)
    val_strangers: list[str] = field(default_factory=list)
    folder: str = ""
    val_folder: str | None = None

    def report_lines(self) -> list[str]:
        """The folder's skip report, then what was left out and why."""
        lines = list(self.people.report_lines())
        lines += [f"warning: validation person {name} is not in the training folder and is left out"
                  for name in self.val_strangers]
        lines += [f"warning: {name} has fewer than 2 usable photos and is left out" for name in self.dropped]
        return lines

    def pooled(self) -> ChipSet:
        """The training photos, then the validation photos, as one set (what cross-fitting deals into folds)."""
        return ChipSet(np.concatenate([self.train.chips, self.val.chips]),
                       np.concatenate([self.train.labels, self.val.labels]), self.train.classes,
                       self.train.paths + self.val.paths)

    def median_photos(self) -> float:
        """The median number of photos per person over training and validation (each photo once)."""
        person = {}  # path -> person; cross-fitting's data validates on the very photos it trains on
        for part in (self.train, self.val):
            person.update((path, part.classes[label]) for path, label in zip(part.paths, part.labels))
        return float(np.median(np.unique(list(person.values()), return_counts=True)[1]))

    def file_hashes(self) -> list[str]:
        """sha256 of every photo the run used (train and validation), sorted: evaluate's overlap check."""
        from .fileio import file_sha256

        # each file once: cross-fitting's data validates on the very photos it trains on
        return sorted({file_sha256(p) for p in dict.fromkeys(self.train.paths + self.val.paths)})


def load_chipset(folder: os.PathLike | str, settings: FaceSettings, *, jobs: int | None = None,
                 progress: bool = True, multiple_faces: str = "skip") -> tuple[ChipSet, Any]:
    """Aligned chips of a people folder (cached on disk), and the :class:`~dlibplus.people.PeopleSet` report.
    ``multiple_faces``: see :func:`dlibplus.people.pick_face`."""
    from .people import load_people

    people = load_people(folder, settings=settings, want="chips", jobs=jobs, progress=progress,
                         multiple_faces=multiple_faces)
    classes = sorted(set(people.labels.tolist()))
    labels = np.searchsorted(classes, people.labels).astype(np.int64)
    return ChipSet(people.chips, labels, classes, people.paths.tolist()), people


def restrict_to_classes(data: ChipSet, classes: list[str]) -> tuple[ChipSet, list[str]]:
    """``data`` re-labelled into ``classes`` (a training set's), and the people of ``data`` not among them,
    whose photos are left out.

    :raises DataFolderError: no photo of ``data`` belongs to one of ``classes``.
    """
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([i for i, label in enumerate(data.labels) if data.classes[label] in index], dtype=np.int64)
    unknown = sorted({data.classes[label] for label in data.labels} - set(classes))
    if not len(keep):
        raise DataFolderError("no validation photo belongs to a person of the training folder")
    labels = np.array([index[data.classes[data.labels[i]]] for i in keep], dtype=np.int64)
    return ChipSet(data.chips[keep], labels, list(classes), [data.paths[i] for i in keep]), unknown


def drop_small_classes(data: ChipSet, minimum: int = 2) -> tuple[ChipSet, list[str]]:
    """Leave out people with fewer than ``minimum`` photos (they cannot be split); error under 2 people."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    keep = np.flatnonzero(counts >= minimum)
    dropped = [data.classes[i] for i in np.flatnonzero(counts < minimum)]
    if len(keep) < 2:
        raise DataFolderError(f"fine-tuning needs at least 2 people with at least {minimum} usable photos each; "
                              f"found {len(keep)}")
    remap = -np.ones(len(data.classes), np.int64)
    remap[keep] = np.arange(len(keep))
    rows = np.flatnonzero(remap[data.labels] >= 0)
    return ChipSet(data.chips[rows], remap[data.labels[rows]], [data.classes[i] for i in keep],
                   [data.paths[i] for i in rows]), dropped


def prepare_finetune_data(folder: os.PathLike | str, settings: FaceSettings | None = None, *,
                          val_folder: os.PathLike | str | None = None, val_fraction: float = 0.25, seed: int = 0,
                          jobs: int | None = None, progress: bool = True, dist_info=None,
                          multiple_faces: str = "skip") -> FinetuneData:
    """Align a people folder and split it for :func:`dlibplus.finetune.finetune`.

    :param val_folder: a people folder to validate on instead of a split (its people must be in ``folder``).
    :param val_fraction: share of each person's photos held out for validation (seeded by ``seed``).
    :param dist_info: a :class:`~dlibplus.distributed.Dist` under ``torchrun``: rank 0 aligns and caches
        first, the other ranks then read the cache.
    :param multiple_faces: a photo with several faces: ``"skip"`` it, or its clearly ``"largest"`` face
        (:func:`dlibplus.people.pick_face`; both folders).
    :raises DataFolderError: a folder is missing or empty, or fewer than 2 people can be split.
    """
    import contextlib

    from .data import split_per_person

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if val_folder is not None and os.path.realpath(val_folder) == os.path.realpath(folder):
        raise DataFolderError(f"--val-folder {val_folder} is the training folder: validating on the training photos "
                              "would measure nothing; give a folder of other photos, or leave it out to split")
    settings = settings or FaceSettings()
    guard = contextlib.nullcontext()
    if dist_info is not None and dist_info.active:
        from .distributed import main_process_first

        guard = main_process_first(dist_info)
    with guard:
        data, people = load_chipset(folder, settings, jobs=jobs, progress=progress, multiple_faces=multiple_faces)
        val_data = (load_chipset(val_folder, settings, jobs=jobs, progress=progress, multiple_faces=multiple_faces)[0]
                    if val_folder else None)
    if val_data is not None:
        train, dropped = drop_small_classes(data, 1)
        val, strangers = restrict_to_classes(val_data, train.classes)
        return FinetuneData(train, val, people, dropped, strangers, str(folder), str(val_folder))
    data, dropped = drop_small_classes(data, 2)
    train_idx, val_idx = split_per_person(data.labels, val_fraction, seed)
    return FinetuneData(data.subset(train_idx), data.subset(val_idx), people, dropped, [], str(folder))
