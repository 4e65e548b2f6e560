"""A people folder turned into labelled encodings (or chips), with a record of what was skipped and why.

Shared by ``train-knn``, ``finetune`` and ``evaluate`` so that all three scan, skip and report alike:
an image is used when exactly one face is found in it (or, with ``multiple_faces="largest"``, when one face is
clearly the largest, :func:`pick_face`); unreadable images, images without a face and images with several faces
are skipped and listed per person.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .data import ImageFaces, person_folders, process_images, scan_people
from .encoders import resolve_encoder
from .faces import FaceSettings
from .recipe import Recipe
from .errors import DataFolderError


_PLURALS = {"person": "people"}
# what a training photo with several faces gives: "skip" it (face_recognition's KNN example), or its "largest" face
MULTIPLE_FACES = ("skip", "largest")
# "largest" takes a face only when its box has at least this times the area of the next one. Measured on lfw_dev's
# 164 photos with several faces (benchmarks/bench_multiple_faces.py): at 1.5 or more the largest face was the
# labelled person in 126 of 129 (by the nearest person mean; the 3 others nearest someone else, and no other face of
# those photos was the person); below it, the person was another face of the photo in 3 of 32
CLEARLY_LARGER = 1.5


def counted(n: int, noun: str) -> str:
    """``'1 person'``, ``'3 people'``, ``'1 image'``, ``'0 images'``."""
    return f"{n} {noun if n == 1 else _PLURALS.get(noun, noun + 's')}"


@dataclass
class PeopleSet:
    """Usable faces of a people folder.

    :ivar labels: (n,) person names. :ivar paths: (n,) image paths.
    :ivar encodings: (n, 128) float64, or ``None`` for a chips set.
    :ivar chips: (n, 150, 150, 3) uint8, or ``None`` for an encodings set.
    :ivar skipped: person → list of ``(path, reason)``.
    :ivar sources: (n,) ``S32`` sha256 digests of the used photos (zeros for one that could not be hashed).
    :ivar n_already_known: photos left out because ``skip_sources`` held them.
    :ivar jitter_scale: the factor the (jittered) encodings were multiplied by (:func:`scale_jitter`).
    """

    folder: Path
    labels: np.ndarray
    paths: np.ndarray
    boxes: np.ndarray
    settings: FaceSettings
    encoder_spec: str
    num_jitters: int
    encodings: np.ndarray | None = None
    chips: np.ndarray | None = None
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    total_per_person: dict[str, int] = field(default_factory=dict)
    sources: np.ndarray | None = None
    n_already_known: int = 0
    jitter_scale: float = 1.0
    multiple_faces: str = "skip"
    largest_of_several: list[str] = field(default_factory=list)  # paths whose largest face was used

    @property
    def people(self) -> list[str]:
        return sorted(self.total_per_person)

    @property
    def people_without_images(self) -> list[str]:
        used = set(self.labels.tolist())
        return [p for p in self.people if p not in used]

    @property
    def empty_person_folders(self) -> list[str]:
        """People whose folder holds no image file at all."""
        return [p for p in self.people if not self.total_per_person[p]]

    def report(self) -> dict[str, Any]:
        """Per person: images found, used, and the skipped ones with reasons (JSON-able)."""
        used = Counter(self.labels.tolist())
        return {"folder": str(self.folder),
                "images": int(sum(self.total_per_person.values())), "used": int(len(self.labels)),
                "people": {p: {"images": self.total_per_person[p], "used": used.get(p, 0),
                               "skipped": [{"path": s, "reason": r} for s, r in self.skipped.get(p, [])]}
                           for p in self.people},
                "people_without_usable_images": self.people_without_images,
                "empty_person_folders": self.empty_person_folders,
                "largest_of_several_faces": list(self.largest_of_several)}

    def report_lines(self) -> list[str]:
        """A human summary: one line per person with skipped images, then each skipped file; the people left
        out (an empty folder named as such); the totals."""
        lines = []
        used = Counter(self.labels.tolist())
        for p in self.people:
            skipped = self.skipped.get(p, [])
            if skipped:
                lines.append(f"{p}: {used.get(p, 0)} of {counted(self.total_per_person[p], 'image')} used")
                lines += [f"  skipped {s}: {r}" for s, r in skipped]
        empty = set(self.empty_person_folders)
        for p in self.people_without_images:
            why = f"has no image file in {self.folder / p}" if p in empty else "has no usable image"
            lines.append(f"warning: {p} {why} and is left out")
        if self.largest_of_several:
            lines.append(f"{counted(len(self.largest_of_several), 'image')} with several faces gave their largest "
                         "face (--multiple-faces largest)")
        lines.append(f"{counted(len(self.labels), 'face')} of {counted(len(set(self.labels.tolist())), 'person')} "
                     f"from {counted(sum(self.total_per_person.values()), 'image')}")
        return lines

    @property
    def recipe(self) -> Recipe:
        """How these encodings were made: what a model built from them must be used with."""
        return Recipe(self.encoder_spec, self.settings, self.num_jitters, self.jitter_scale)

    def info(self) -> dict[str, Any]:
        """Facts about the set a model records beside its recipe (JSON-able)."""
        return {"dlibplus_version": __version__, "trained_on": str(self.folder),
                "n_images": int(len(self.labels)), "n_people": int(len(set(self.labels.tolist())))}


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(n,) int64 areas in pixels of (n, 4) face boxes in face_recognition's (top, right, bottom, left) order."""
    b = boxes.astype(np.int64)
    return (b[:, 2] - b[:, 0]) * (b[:, 1] - b[:, 3])


def pick_face(r: ImageFaces, multiple_faces: str = "skip") -> tuple[int | None, str | None]:
    """Which face of ``r`` a people folder's photo gives: ``(index, None)``, or ``(None, why it is skipped)``.

    ``multiple_faces``: with several faces, ``"skip"`` the photo, or take the ``"largest"`` when its box has at
    least :data:`CLEARLY_LARGER` times the area of the next (the person a photo is filed under is nearly always
    its main face; two faces of about one size could be either).
    """
    if r.error is not None:
        return None, r.error
    if r.n_faces == 0:
        return None, "no face found"
    if r.n_faces == 1:
        return 0, None
    if multiple_faces == "largest":
        area = box_areas(r.boxes)
        first, second = np.argsort(-area, kind="stable")[:2]
        if area[first] >= CLEARLY_LARGER * area[second]:
            return int(first), None
        return None, f"{r.n_faces} faces found, none clearly the largest"
    return None, f"{r.n_faces} faces found (need exactly one; --multiple-faces largest takes the largest)"


def load_people(folder: os.PathLike | str, *, settings: FaceSettings | None = None, encoder: str | None = "dlib",
                want: str = "encodings", num_jitters: int = 1, jobs: int | None = None,
                use_cache: bool = True, cache_dir: os.PathLike | str | None = None,
                progress: bool = True, ray_address: str | None = None,
                skip_sources: set[bytes] | None = None, multiple_faces: str = "skip") -> PeopleSet:
    """Scan, detect, align and encode a people folder; keep images with exactly one face (or, with
    ``multiple_faces="largest"``, a clearly largest one: :func:`pick_face`).

    :param encoder: ``'dlib'``, ``'torch'``, a ``.dat`` or a fine-tuned model folder (ignored for chips).
    :param want: ``"encodings"`` or ``"chips"``.
    :param ray_address: encode on Ray (:mod:`dlibplus.ray_encode`): ``"local"`` for a new local cluster of
        ``jobs`` CPUs, or a cluster's address; encodings only, no cache.
    :param skip_sources: sha256 digests (32 bytes) of photos to leave out unread (``train-knn --add``:
        those already in the model); ``n_already_known`` counts them, and the set may then be empty.
    :raises DataFolderError: the folder is missing or empty, or no image has a usable face.
    """
    if multiple_faces not in MULTIPLE_FACES:
        raise ValueError(f"multiple_faces must be one of {list(MULTIPLE_FACES)}, not {multiple_faces!r}")
    settings = settings or FaceSettings()
    pairs = scan_people(folder)
    digests = [_digest(p) for _, p in pairs]
    n_known, known_people = 0, set()
    if skip_sources:
        keep = [d is None or d not in skip_sources for d in digests]
        n_known = len(pairs) - sum(keep)
        known_people = {person for (person, _), k in zip(pairs, keep) if not k}
        pairs = [pair for pair, k in zip(pairs, keep) if k]
        digests = [d for d, k in zip(digests, keep) if k]
    people = [d.name for d in person_folders(folder)]
    enc, spec = resolve_encoder(encoder) if want == "encodings" else (None, "none")
    if ray_address is not None and want == "encodings":
        from .ray_encode import ray_process_images, require_ray

        require_ray()
        results = ray_process_images([p for _, p in pairs], settings, encoder=spec, num_jitters=num_jitters,
                                     address=None if ray_address == "local" else ray_address,
                                     num_cpus=jobs or None, progress=progress)
    else:
        results = process_images([p for _, p in pairs], settings, encoder=enc, want=want, num_jitters=num_jitters,
                                 jobs=jobs, use_cache=use_cache, cache_dir=cache_dir, progress=progress,
                                 desc="encoding" if want == "encodings" else "aligning",
                                 shas=[d.hex() if d is not None else None for d in digests])
    skipped: dict[str, list[tuple[str, str]]] = defaultdict(list)
    labels, paths, boxes, rows, sources, largest = [], [], [], [], [], []
    for (person, path), digest, r in zip(pairs, digests, results):
        face, reason = pick_face(r, multiple_faces)
        if face is None:
            skipped[person].append((str(path), reason))
            continue
        if r.n_faces > 1:
            largest.append(str(path))
        labels.append(person)
        paths.append(str(path))
        sources.append(digest or bytes(32))
        boxes.append(r.boxes[face])
        rows.append(r.encodings[face] if want == "encodings" else r.chips[face])
    # empty person folders too, the report names them; not those whose photos are all known already
    total = {name: 0 for name in people if name not in known_people}
    total.update(Counter(person for person, _ in pairs))
    if not labels and not (n_known and not pairs):
        raise DataFolderError(f"no usable face in {folder}: every image was skipped "
                              f"({counted(sum(total.values()), 'image')}; try --face-box whole for tight crops)")
    stacked = np.stack(rows) if rows else np.zeros((0, 128))
    return PeopleSet(Path(folder), np.array(labels, dtype=str), np.array(paths, dtype=str),
                     np.array(boxes, np.int32).reshape(-1, 4), settings, spec,
                     num_jitters, encodings=stacked if want == "encodings" else None,
                     chips=stacked if want == "chips" else None, skipped=dict(skipped),
                     total_per_person=dict(total), sources=np.array(sources, dtype="S32"), n_already_known=n_known,
                     multiple_faces=multiple_faces, largest_of_several=largest)


def scale_jitter(people: PeopleSet, scale: float | None = None, *, jobs: int | None = None,
                 use_cache: bool = True, progress: bool = True) -> PeopleSet:
    """``people`` (jittered encodings) with its encodings multiplied by ``scale``, or by the scale
    :func:`~dlibplus.jitter_scale.estimate_scale` finds on a sample of its photos encoded again without jitter
    (``scale=None``: at most :data:`~dlibplus.jitter_scale.SAMPLE_PHOTOS`, spread over the people). A set
    without jitter, or with no encodings, comes back unchanged.
    """
    from .jitter_scale import estimate_scale, sample_rows

    if people.num_jitters <= 1 or people.encodings is None or not len(people.labels):
        return people
    if scale is None:
        rows = sample_rows(people.labels)
        results = process_images(people.paths[rows].tolist(), people.settings,
                                 encoder=resolve_encoder(people.encoder_spec)[0], jobs=jobs, use_cache=use_cache,
                                 progress=progress, desc="encoding a sample without jitter")
        faces = [pick_face(r, people.multiple_faces)[0] for r in results]  # the face the set used
        plain = np.array([r.encodings[f] for r, f in zip(results, faces) if f is not None]).reshape(-1, 128)
        rows = rows[np.array([f is not None for f in faces], bool)]
        scale = estimate_scale(plain, people.encodings[rows], people.labels[rows])
    return replace(people, encodings=people.encodings * scale, jitter_scale=float(scale))


def _digest(path: Path) -> bytes | None:
    """The photo's sha256 (32 bytes), or ``None`` when it cannot be read (the pipeline reports why)."""
    from .fileio import file_sha256

    try:
        return bytes.fromhex(file_sha256(path))
    except OSError:
        return None

