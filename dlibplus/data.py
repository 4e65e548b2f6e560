"""People folders, the face pipeline (detect → landmarks → chip → encoding), its disk cache, splits.

A people folder is ``FOLDER/<person>/<image>`` as in face_recognition's KNN example. Every image goes
through :func:`process_images`, which runs the pipeline on all cores and caches each image's result
on disk under a key made of the file's content hash and every setting that changes the result, so a
re-run only processes new or changed photos, and an interrupted run keeps what it had done.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DataFolderError, DlibplusError, ImageReadError
from .fileio import atomic_path, file_sha256, settings_key, write_json
from .images import is_image_file

log = logging.getLogger(__name__)

CHIP_SIZE = 150


# --- folders ---------------------------------------------------------------------------------------

def scan_people(folder: os.PathLike | str) -> list[tuple[str, Path]]:
    """``(person, image path)`` pairs of a people folder, sorted by person then file name.

    Sub-folders starting with ``_`` or ``.`` are not people. Files that are not images (by extension,
    any case) are ignored.

    :raises DataFolderError: the folder is missing, or holds no person folder with an image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataFolderError(f"people folder not found: {root}")
    pairs = []
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if person_dir.name.startswith(("_", ".")):
            continue
        pairs += [(person_dir.name, p) for p in sorted(person_dir.iterdir()) if p.is_file() and is_image_file(p)]
    if not pairs:
        raise DataFolderError(f"no images found in {root}: expected {root}/<person>/<image>.jpg")
    return pairs


def image_paths(paths: Iterable[os.PathLike | str]) -> list[Path]:
    """Files given directly, plus the image files found (recursively, sorted) in given folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
        else:
            out.append(p)
    return out


# --- settings and results --------------------------------------------------------------------------

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
        if self.detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', not {self.detector!r}")
        if self.landmarks not in ("small", "large"):
            raise ValueError(f"landmarks must be 'small' or 'large', not {self.landmarks!r}")
        if self.face_box not in ("detect", "whole"):
            raise ValueError(f"face_box must be 'detect' or 'whole', not {self.face_box!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ImageFaces:
    """What the pipeline found in one image.

    :ivar boxes: (n, 4) int32 ``(top, right, bottom, left)`` in the original image's pixels.
    :ivar encodings: (n, 128) float64, or ``None`` when only chips were asked for.
    :ivar chips: (n, 150, 150, 3) uint8 RGB aligned chips, or ``None``.
    :ivar error: why the image could not be used at all (unreadable file), else ``None``.
    """

    path: Path
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    encodings: np.ndarray | None = None
    chips: np.ndarray | None = None
    error: str | None = None

    @property
    def n_faces(self) -> int:
        return len(self.boxes)


# --- the per-image pipeline (runs in worker processes) ----------------------------------------------

def _shrink(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img, 1.0
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS)), scale


def find_faces(img: np.ndarray, settings: FaceSettings) -> tuple[list, list]:
    """Boxes (css) and dlib landmark shapes of the faces in ``img``."""
    from . import api

    if settings.face_box == "whole":
        boxes = [(0, img.shape[1], img.shape[0], 0)]
    else:
        boxes = api.face_locations(img, settings.upsample, settings.detector)
    return boxes, api._raw_face_landmarks(img, boxes, settings.landmarks)


def face_chips(img: np.ndarray, shapes: Sequence) -> np.ndarray:
    """dlib's aligned 150×150 chips (n, 150, 150, 3) uint8 of the faces with these landmark shapes.

    One dlib call per face, as face_recognition does: dlib's chip of a face depends on the other faces
    of the same call (they share one bounding box and pyramid), see :mod:`dlibplus.align`.
    """
    import dlib

    if not shapes:
        return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    return np.stack([dlib.get_face_chip(img, s, CHIP_SIZE, 0.25) for s in shapes])


def _process_one(path: Path, settings: FaceSettings, mode: str, num_jitters: int) -> ImageFaces:
    """Run the pipeline on one image. ``mode``: ``"chips"`` or ``"dlib"`` (encode with dlib here)."""
    from . import models
    from .images import load_image_file

    try:
        full = load_image_file(path)
    except ImageReadError as exc:
        return ImageFaces(path, error=exc.reason)
    img, scale = _shrink(full, settings.max_side)
    boxes, shapes = find_faces(img, settings)
    result = ImageFaces(path, boxes=_rescale_boxes(boxes, scale, full.shape))
    if mode == "chips":
        result.chips = face_chips(img, shapes)
    else:
        # A fresh model per image when jittering, so the random jitter depends on the image alone.
        net = models.face_recognition_model() if num_jitters <= 1 else models.new_face_recognition_model()
        encs = [np.array(net.compute_face_descriptor(img, s, num_jitters)) for s in shapes]
        result.encodings = np.array(encs, np.float64).reshape(len(encs), 128)
    return result


def _rescale_boxes(boxes: Sequence, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(boxes, np.float64).reshape(-1, 4)
    if scale != 1.0:
        arr = np.round(arr / scale)
        arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, shape[0])
        arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, shape[1])
    return arr.astype(np.int32)


def _worker(task: tuple) -> ImageFaces:
    path, settings, mode, num_jitters = task
    try:
        return _process_one(path, settings, mode, num_jitters)
    except DlibplusError:
        raise
    except Exception as exc:  # dlib errors on odd images must not kill a long run
        return ImageFaces(path, error=f"{type(exc).__name__}: {exc}")


# --- cache ------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$DLIBPLUS_CACHE``, else ``$XDG_CACHE_HOME/dlibplus``, else ``~/.cache/dlibplus``."""
    if os.environ.get("DLIBPLUS_CACHE"):
        return Path(os.environ["DLIBPLUS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dlibplus"


class ResultCache:
    """One small ``.npz`` per image, named by the image's content hash, in a folder per settings key."""

    def __init__(self, root: Path, settings: dict):
        self.folder = Path(root) / settings_key(settings)
        self.settings = settings

    def _path(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.npz"

    def get(self, path: Path, sha: str) -> ImageFaces | None:
        entry = self._path(sha)
        if not entry.is_file():
            return None
        try:
            with np.load(entry, allow_pickle=False) as z:
                return ImageFaces(path, boxes=z["boxes"],
                                  encodings=z["encodings"] if "encodings" in z else None,
                                  chips=z["chips"] if "chips" in z else None)
        except Exception:  # a damaged entry is recomputed, never trusted
            log.warning("ignoring damaged cache entry %s", entry)
            return None

    def put(self, sha: str, faces: ImageFaces) -> None:
        if faces.error is not None:
            return
        arrays = {"boxes": faces.boxes}
        if faces.encodings is not None:
            arrays["encodings"] = faces.encodings
        if faces.chips is not None:
            arrays["chips"] = faces.chips
        entry = self._path(sha)
        if not self.folder.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / "settings.json", self.settings)
        with atomic_path(entry) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)


# --- running the pipeline over many images -------------------------------------------------------------

def _pool(jobs: int):
    # fork where there is one: it works from scripts without an ``if __name__ == "__main__"`` guard
    # (face_recognition users' scripts rarely have one) and starts fast. The workers only run dlib and
    # numpy, never torch, so torch's thread pools in the parent do not matter to them.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(jobs)


def resolve_jobs(jobs: int | None) -> int:
    """``None`` or ``0`` means every core."""
    return jobs if jobs and jobs > 0 else (os.cpu_count() or 1)


def process_images(paths: Sequence[os.PathLike | str], settings: FaceSettings, *, encoder=None,
                   num_jitters: int = 1, want: str = "encodings", jobs: int | None = None,
                   cache_dir: os.PathLike | str | None = None, use_cache: bool = True,
                   progress: bool = True, desc: str = "encoding") -> list[ImageFaces]:
    """Find, align and (optionally) encode the faces of every image, in input order.

    :param encoder: ``None`` for dlib itself (encoded in the worker processes, face_recognition's
        exact path), or an encoder object with ``encode(chips) -> (n, 128)`` and ``identity``, run
        here in batches on the chips the workers return.
    :param want: ``"encodings"`` or ``"chips"`` (aligned 150×150 chips only, no encoder).
    :param jobs: worker processes; ``None`` = all cores, 1 = no subprocess.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    if want not in ("encodings", "chips"):
        raise ValueError(f"want must be 'encodings' or 'chips', not {want!r}")
    on_dlib = want == "encodings" and encoder is None
    key = {"pipeline": 1, "faces": settings.to_dict(), "want": want,
           "encoder": "dlib" if encoder is None else encoder.identity,
           "num_jitters": max(num_jitters, 1) if want == "encodings" else 0}
    cache = ResultCache(Path(cache_dir) if cache_dir else default_cache_dir() / want, key) if use_cache else None

    results: list[ImageFaces | None] = [None] * len(paths)
    shas: list[str | None] = [None] * len(paths)
    todo = []
    for i, p in enumerate(paths):
        if cache is not None:
            try:
                shas[i] = file_sha256(p)
            except OSError as exc:
                results[i] = ImageFaces(p, error=f"cannot read file ({exc.strerror or exc})")
                continue
            hit = cache.get(p, shas[i])
            if hit is not None:
                results[i] = hit
                continue
        todo.append(i)

    mode = "dlib" if on_dlib else "chips"
    tasks = [(paths[i], settings, mode, num_jitters) for i in todo]
    jobs = min(resolve_jobs(jobs), max(len(tasks), 1))
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=desc, unit="img",
               disable=not progress, leave=False)
    pool = None
    try:
        if jobs <= 1:
            stream = map(_worker, tasks)
        else:
            pool = _pool(jobs)
            stream = pool.imap(_worker, tasks, chunksize=1)
        batch: list[int] = []
        for i, res in zip(todo, stream):
            results[i] = res
            if on_dlib or want == "chips":
                if cache is not None:
                    cache.put(shas[i], res)
            else:
                batch.append(i)
                if sum(results[j].n_faces for j in batch) >= 64:
                    _encode_batch(encoder, [results[j] for j in batch], num_jitters, cache, shas, batch)
                    batch = []
            bar.update(1)
        if batch:
            _encode_batch(encoder, [results[j] for j in batch], num_jitters, cache, shas, batch)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return results  # type: ignore[return-value]


def _encode_batch(encoder, items: list[ImageFaces], num_jitters: int, cache, shas, idx) -> None:
    """Encode the chips of several images in one call and attach the encodings (chips dropped)."""
    from .api import _encode_jittered

    with_chips = [r for r in items if r.error is None]
    chips = [r.chips for r in with_chips if r.n_faces]
    encs = _encode_jittered(encoder, np.concatenate(chips), num_jitters) if chips else np.zeros((0, 128))
    start = 0
    for r in with_chips:
        r.encodings = np.asarray(encs[start:start + r.n_faces], np.float64).reshape(r.n_faces, 128)
        start += r.n_faces
        r.chips = None
    if cache is not None:
        for r, i in zip(items, idx):
            cache.put(shas[i], r)


# --- splits ----------------------------------------------------------------------------------------------

def split_per_person(labels: Sequence[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-person split: indices ``(kept, held_out)`` with about ``fraction`` of each person's
    images held out. A person with at least 2 images has at least one on each side; a person with one
    image stays on the kept side.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for person in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == person)
        idx = idx[rng.permutation(len(idx))]
        n_held = 0 if len(idx) < 2 else min(max(int(round(len(idx) * fraction)), 1), len(idx) - 1)
        held += idx[:n_held].tolist()
        kept += idx[n_held:].tolist()
    return np.array(sorted(kept), dtype=np.int64), np.array(sorted(held), dtype=np.int64)
