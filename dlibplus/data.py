"""People folders, the many-image face pipeline (detect → landmarks → chip → encoding), its disk cache, splits.

A people folder is ``FOLDER/<person>/<image>`` as in face_recognition's KNN example. Every image goes
through :func:`process_images`, which runs the pipeline on all cores and caches each image's result
on disk under a key made of the file's content hash and every setting that changes the result, so a
re-run only processes new or changed photos, and an interrupted run keeps what it had done.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import DataFolderError
from .fileio import atomic_path, file_sha256, settings_key, write_json
from .faces import FaceSettings, image_faces
from .image_result import ImageFaces, faces_result, guarded, read_image
from .images import is_image_file

log = logging.getLogger(__name__)


# --- folders ---------------------------------------------------------------------------------------

def person_folders(folder: os.PathLike | str) -> list[Path]:
    """The person sub-folders of a people folder, sorted (those starting with ``_`` or ``.`` are not people),
    empty ones included.

    :raises DataFolderError: the folder is missing or is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataFolderError(f"people folder not found: {root}" if not root.exists()
                              else f"{root} is a file, not a people folder: expected {root}/<person>/<image>.jpg")
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    except OSError as exc:
        raise DataFolderError(f"people folder {root} cannot be read ({exc.strerror or exc})") from None


def scan_people(folder: os.PathLike | str) -> list[tuple[str, Path]]:
    """``(person, image path)`` pairs of a people folder, sorted by person then file name.

    Sub-folders starting with ``_`` or ``.`` are not people. Files that are not images (by extension,
    any case) are ignored; :func:`person_folders` also gives the people without any image.

    :raises DataFolderError: the folder is missing, or holds no person folder with an image.
    """
    root = Path(folder)
    pairs = []
    for person_dir in person_folders(root):
        try:
            files = sorted(person_dir.iterdir())
        except OSError as exc:
            raise DataFolderError(f"person folder {person_dir} cannot be read ({exc.strerror or exc})") from None
        pairs += [(person_dir.name, p) for p in files if _is_image_entry(p)]
    if not pairs:
        raise DataFolderError(f"no images found in {root}: expected {root}/<person>/<image>.jpg")
    return pairs


def _is_image_entry(path: Path) -> bool:
    """An image file by its name, or a broken link by an image's name (kept, so that it is reported as
    unreadable instead of silently left out)."""
    return is_image_file(path) and (path.is_file() or (path.is_symlink() and not path.exists()))


def image_paths(paths: Iterable[os.PathLike | str]) -> list[Path]:
    """Files given directly, plus the image files found (recursively, sorted) in given folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if _is_image_entry(q))
        else:
            out.append(p)
    return out


# --- the per-image pipeline (runs in worker processes) ----------------------------------------------

def _process_one(path: Path, settings: FaceSettings, worker_encoder) -> ImageFaces:
    """Detect, align and, when ``worker_encoder`` is given, encode the faces of one image (chips kept
    only when it is not)."""
    img = read_image(path)
    if isinstance(img, ImageFaces):
        return img
    boxes, chips = image_faces(img, settings)
    return faces_result(path, boxes, chips, worker_encoder)


def _worker(task: tuple) -> ImageFaces:
    path, settings, worker_encoder = task
    return guarded(path, _process_one, path, settings, worker_encoder)


# --- cache ------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$DLIBPLUS_CACHE``, else ``$XDG_CACHE_HOME/dlibplus``, else ``~/.cache/dlibplus``."""
    if os.environ.get("DLIBPLUS_CACHE"):
        return Path(os.environ["DLIBPLUS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dlibplus"


class CacheFolderError(DataFolderError):
    """The encoding cache folder cannot be created or written to (bad input: exit 2)."""


def check_cache_root(root: os.PathLike | str) -> Path:
    """Create the cache folder ``root`` if needed and check that it can be written to, before any work.

    :raises CacheFolderError: ``root`` (or a folder above it) is a file, or the place is not writable.
    """
    root = Path(root)
    fix = ("point DLIBPLUS_CACHE at a writable folder" if os.environ.get("DLIBPLUS_CACHE")
           else "set DLIBPLUS_CACHE to a writable folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheFolderError(f"encoding cache {root} cannot be created ({exc.strerror or exc}): {fix}") from None
    reason = unwritable_reason(root)
    if reason:
        raise CacheFolderError(f"encoding cache {root} {reason}: {fix}")
    return root


def unwritable_reason(path: os.PathLike | str) -> str | None:
    """Why a file cannot be created in the folder ``path`` (or in the nearest existing folder above it, which
    would hold it), or ``None`` when one can. Tries for real: ``os.access`` says yes to root on read-only places."""
    import tempfile

    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        return f"cannot be created: {here} is a file"
    try:
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as exc:
        return f"is not writable ({here}: {exc.strerror or exc})"
    return None


class ResultCache:
    """One small ``.npz`` per image, named by the image's content hash, in a folder per settings key.

    The root is checked on construction (:func:`check_cache_root`); a write that fails later (a full disk)
    is logged once and the run goes on without caching."""

    def __init__(self, root: Path, settings: dict):
        self.folder = check_cache_root(root) / settings_key(settings)
        self.settings = settings
        self._write_failed = False

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
        if faces.error is not None or self._write_failed:
            return
        try:
            self._write(sha, faces)
        except OSError as exc:
            self._write_failed = True
            log.warning("encoding cache %s cannot be written (%s): going on without caching", self.folder,
                        exc.strerror or exc)

    def _write(self, sha: str, faces: ImageFaces) -> None:
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
    # (face_recognition users' scripts rarely have one) and starts fast.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(jobs, _init_worker)


def _init_worker() -> None:
    """A worker runs the CNN detector (torch) on its own core, on the CPU: CUDA cannot be used after a
    fork, and one thread per worker keeps N workers on N cores (and clear of the parent's OpenMP pool)."""
    from . import faces

    faces.CNN_DEVICE = "cpu"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    else:
        os.environ["OMP_NUM_THREADS"] = "1"  # read when torch is first imported here


def resolve_jobs(jobs: int | None) -> int:
    """``None`` or ``0`` means every core."""
    return jobs if jobs and jobs > 0 else (os.cpu_count() or 1)


def process_images(paths: Sequence[os.PathLike | str], settings: FaceSettings, **options) -> list[ImageFaces]:
    """:func:`iter_images` as a list, in input order."""
    return list(iter_images(paths, settings, **options))


def iter_images(paths: Sequence[os.PathLike | str], settings: FaceSettings, *, encoder=None,
                num_jitters: int = 1, want: str = "encodings", jobs: int | None = None,
                cache_dir: os.PathLike | str | None = None, use_cache: bool = True,
                progress: bool = True, desc: str = "encoding",
                detect_in_parent: bool | None = None,
                shas: Sequence[str | None] | None = None) -> Iterator[ImageFaces]:
    """Find, align and (optionally) encode the faces of every image; yields one result per path, in
    input order, as soon as it is ready (and cached), so an interrupted run keeps its work.

    :param encoder: an encoder (:mod:`dlibplus.encoders`); ``None`` is dlib's own
        (:class:`~dlibplus.encoders.DlibEncoder`). Encoders that say ``in_workers`` (dlib's) run in the
        worker processes, one image at a time; the others (torch) run here, batched over images.
    :param num_jitters: dlib's jitter around ``encoder`` (:func:`~dlibplus.encoders.with_jitter`).
    :param want: ``"encodings"`` or ``"chips"`` (aligned 150×150 chips only, no encoder).
    :param jobs: worker processes; ``None`` = all cores, 1 = no subprocess.
    :param detect_in_parent: with the CNN detector, run it here on many images at once while the workers
        read and align (:mod:`dlibplus.device_pipeline`: the same results); ``None`` (auto) does so when it
        runs on a GPU, ``False`` keeps it in the workers, one image each.
    :param shas: the hex sha256 of each path when the caller has hashed them already (``None`` for one it
        could not read); the cache then does not read the files again to find their entries.
    """
    from tqdm.auto import tqdm

    from .encoders import DlibEncoder, with_jitter

    paths = [Path(p) for p in paths]
    if want not in ("encodings", "chips"):
        raise ValueError(f"want must be 'encodings' or 'chips', not {want!r}")
    if want == "encodings":
        encoder = with_jitter(encoder if encoder is not None else DlibEncoder(), num_jitters)
    else:
        encoder = None
    key = {"pipeline": 2, "faces": settings.to_dict(), "want": want,
           "encoder": encoder.identity if encoder is not None else None}
    cache = ResultCache(Path(cache_dir) if cache_dir else default_cache_dir() / want, key) if use_cache else None
    worker_encoder = encoder if getattr(encoder, "in_workers", False) else None

    batched = want == "encodings" and worker_encoder is None
    shas, hits = _cache_lookup(paths, cache, shas)
    todo = [i for i in range(len(paths)) if i not in hits]
    tasks = [(paths[i], settings, worker_encoder) for i in todo]
    jobs = min(resolve_jobs(jobs), max(len(tasks), 1))
    bar = tqdm(total=len(paths), initial=len(hits), desc=desc, unit="img", disable=not progress, leave=False)
    pool = None
    try:
        pool = _pool(jobs) if jobs > 1 else None
        stream = _stream(tasks, settings, pool, detect_in_parent)
        buffered: list[tuple[int, ImageFaces]] = []  # in input order, waiting for the batched encoder
        for i in range(len(paths)):
            if i in hits:
                result = hits[i]
            else:
                result = next(stream)
                bar.update(1)
                if not batched and cache is not None:
                    cache.put(shas[i], result)
            buffered.append((i, result))
            waiting = [r for j, r in buffered if j not in hits and r.chips is not None] if batched else []
            if sum(r.n_faces for r in waiting) >= ENCODE_BATCH or i == len(paths) - 1 or not waiting:
                if waiting:
                    _encode_here(encoder, waiting)
                    if cache is not None:
                        for j, r in buffered:
                            if j not in hits:
                                cache.put(shas[j], r)
                yield from (r for _, r in buffered)
                buffered = []
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def _stream(tasks: list[tuple], settings: FaceSettings, pool, detect_in_parent: bool | None) -> Iterator[ImageFaces]:
    """The results of ``tasks`` in order: from the workers (``pool``, or here without one), or with the CNN
    detector batched here (:mod:`dlibplus.device_pipeline`)."""
    if settings.detector == "cnn" and tasks:
        from .device_pipeline import parent_detection_stream, uses_parent_detection

        if uses_parent_detection(settings, detect_in_parent):
            return parent_detection_stream(tasks, pool)
    return pool.imap(_worker, tasks, chunksize=1) if pool is not None else map(_worker, tasks)


ENCODE_BATCH = 64  # faces per call of an encoder that runs here (torch): batched, yet results stream


def _cache_lookup(paths: list[Path], cache: "ResultCache | None", known: Sequence[str | None] | None = None
                  ) -> tuple[list[str | None], dict[int, ImageFaces]]:
    """The content hash of each path (``None`` without a cache), and the results the cache holds, by
    index; an unreadable file becomes a result with its error. ``known``: hashes already computed."""
    shas: list[str | None] = [None] * len(paths)
    hits: dict[int, ImageFaces] = {}
    if cache is None:
        return shas, hits
    for i, p in enumerate(paths):
        try:
            shas[i] = known[i] if known is not None and known[i] is not None else file_sha256(p)
        except OSError as exc:
            hits[i] = ImageFaces(p, error=f"cannot read file ({exc.strerror or exc})")
            continue
        hit = cache.get(p, shas[i])
        if hit is not None:
            hits[i] = hit
    return shas, hits


def _encode_here(encoder, items: list[ImageFaces]) -> None:
    """Encode the chips of several images in one call and attach the encodings (chips dropped)."""
    chips = [r.chips for r in items if r.n_faces]
    encs = np.asarray(encoder.encode(np.concatenate(chips)), np.float64) if chips else np.zeros((0, 128))
    start = 0
    for r in items:
        r.encodings = encs[start:start + r.n_faces].reshape(r.n_faces, 128)
        start += r.n_faces
        r.chips = None


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
