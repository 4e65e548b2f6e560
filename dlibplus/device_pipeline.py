"""The many-image pipeline with the CNN detector fed in batches by this process (on the GPU when there is one).

:func:`dlibplus.data.iter_images` runs each image through decode → detect → landmarks → chips in a worker
process, one image at a time. With ``--detector cnn`` on an accelerator that would leave the device idle (and
CUDA cannot be used in forked workers at all), so there :func:`parent_detection_stream` splits the work:

1. worker processes read each image and shrink it to ``max_side`` (:func:`_decode`), and send the array here;
2. this process runs the network of dlib's CNN detector (:mod:`dlibplus.cnn_detector`, exact) on many images
   per call, which it groups by size into forward passes on ``faces.CNN_DEVICE``, and sends each image's
   score map back to a worker with the image;
3. worker processes turn the score map into dlib's detections (candidates, windows, non-maximum suppression:
   about 1 ms of Python per image, which would cap this process near 1,000 images/s), find the landmarks
   and cut the aligned chips (about 5 ms per image), and encode them when the encoder runs in workers
   (dlib's) (:func:`_align`);
4. the results come back in input order, the same :class:`~dlibplus.image_result.ImageFaces` as the per-worker path
   gives: same boxes, chips and encodings, the same errors for files that cannot be read.

The caller (:func:`~dlibplus.data.iter_images`) keeps the cache and the batched torch encoding; so the cache
keys are the same on both paths and either path reuses what the other computed. At most a few batches of
decoded images are held at once (:data:`DETECT_IMAGES`, :data:`DETECT_PIXELS`).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import faces
from .image_result import ImageFaces, faces_result, guarded, read_image
from .errors import DlibplusError
from .faces import FaceSettings, cnn_boxes, cnn_score_maps, faces_in_boxes, shrink

DETECT_IMAGES = 64  # images per call of the detector at most (it splits them into forward passes by size)
DETECT_PIXELS = 1 << 25  # decoded pixels per call at most (about 100 MB of RGB): large photos go fewer at a time


class Decoded(NamedTuple):
    """An image read by a worker: ``image`` (h, w, 3) uint8 RGB, already shrunk to ``max_side`` by ``scale``
    (1.0: as it is) from the original's ``shape`` (H, W, 3)."""

    path: Path
    image: np.ndarray
    scale: float
    shape: tuple[int, ...]


def uses_parent_detection(settings: FaceSettings, choice: bool | None = None) -> bool:
    """Whether :func:`~dlibplus.data.iter_images` should detect here, batched (:func:`parent_detection_stream`).

    Only the CNN detector on detected boxes is batched (HOG, and ``face_box="whole"``, stay in the workers).
    ``choice``: ``True`` / ``False`` forces it; ``None`` (auto) batches here when the CNN detector runs on an
    accelerator (``faces.CNN_DEVICE``: ``"auto"`` means CUDA when torch sees it).
    """
    if settings.detector != "cnn" or settings.face_box != "detect":
        return False
    if choice is not None:
        return bool(choice)
    return cnn_on_accelerator()


def cnn_on_accelerator() -> bool:
    """Whether the CNN detector of this process runs on something other than the CPU."""
    device = faces.CNN_DEVICE
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return not str(device).startswith("cpu")


# --- the steps run in worker processes -----------------------------------------------------------------

def _decode(path: Path, max_side: int) -> Decoded | ImageFaces:
    """Read ``path`` and shrink it as :func:`~dlibplus.faces.image_faces` does; an unreadable file gives its
    result with the reason."""
    img = read_image(path)
    if isinstance(img, ImageFaces):
        return img
    small, scale = shrink(img, max_side)
    return Decoded(path, small, scale, img.shape)


def _align(decoded: Decoded, score_map, settings: FaceSettings, worker_encoder) -> ImageFaces:
    """The faces of ``decoded.image`` from the network's ``score_map`` of it
    (:class:`~dlibplus.cnn_detector.ScoreMap`, or ``None``): dlib's detections and boxes, landmarks, chips,
    and encodings when ``worker_encoder`` is given: what the per-worker path returns for the image."""
    from .cnn_detector import detections

    boxes = cnn_boxes(decoded.image, detections(score_map))
    found, chips = faces_in_boxes(decoded.image, boxes, settings, decoded.scale, decoded.shape)
    return faces_result(decoded.path, found, chips, worker_encoder)


# --- this process ---------------------------------------------------------------------------------------

class _Done:
    """A finished task, for running without worker processes (the pool's AsyncResult interface)."""

    def __init__(self, value: Any):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self) -> Any:
        return self.value


class _Inline:
    """``pool.apply_async`` run at once in this process (``jobs=1``)."""

    def apply_async(self, func, args: tuple) -> _Done:
        return _Done(func(*args))


def parent_detection_stream(tasks: Sequence[tuple[Path, FaceSettings, Any]], pool=None, *,
                            batch_images: int | None = None,
                            batch_pixels: int | None = None) -> Iterator[ImageFaces]:
    """One :class:`~dlibplus.image_result.ImageFaces` per task ``(path, settings, worker_encoder)``, in order, as
    :func:`dlibplus.data.iter_images`' workers compute them, with the CNN detection batched here.

    ``pool``: a ``multiprocessing`` pool whose workers read and align (``None``: all in this process). Every
    task has the same ``settings`` (detector ``"cnn"``). A batch for the detector closes at ``batch_images``
    images or ``batch_pixels`` decoded pixels (default :data:`DETECT_IMAGES`, :data:`DETECT_PIXELS`); about two
    batches more are being read meanwhile.
    """
    if not tasks:
        return
    batch_images = batch_images or DETECT_IMAGES
    batch_pixels = batch_pixels or DETECT_PIXELS
    runner = pool if pool is not None else _Inline()
    settings, worker_encoder = tasks[0][1], tasks[0][2]
    reading = _Reader(runner, (path for path, _, _ in tasks), settings.max_side, 2 * batch_images, batch_pixels)
    done: deque = deque()  # in input order: ImageFaces, or a worker's AsyncResult of one
    while reading.pending():
        items = reading.take(batch_images, batch_pixels)
        readable = [item for item in items if isinstance(item, Decoded)]
        scored = iter(_score(readable, settings.upsample))
        for item in items:
            score_map = item if isinstance(item, ImageFaces) else next(scored)
            if isinstance(score_map, ImageFaces):
                done.append(score_map)
            else:
                args = (item.path, _align, item, score_map, settings, worker_encoder)
                done.append(runner.apply_async(guarded, args))
        yield from _finished(done, wait_beyond=2 * batch_images)
    yield from _finished(done, wait_beyond=0)


class _Reader:
    """Reads images in workers ahead of the detector, in input order, holding about ``ahead`` of them (fewer
    when they are large: about two batches of pixels)."""

    def __init__(self, runner, paths: Iterable[Path], max_side: int, ahead: int, batch_pixels: int):
        self.runner, self.paths, self.max_side = runner, iter(paths), max_side
        self.ahead, self.batch_pixels = ahead, batch_pixels
        self.queue: deque = deque()
        self.seen_pixels, self.seen = 0, 0
        self._fill()

    def _limit(self) -> int:
        """How many reads to keep in flight: ``ahead``, or about two batches' pixels of images this size."""
        if not self.seen_pixels:
            return self.ahead
        mean = self.seen_pixels / self.seen
        return max(2, min(self.ahead, int(2 * self.batch_pixels / mean)))

    def _fill(self) -> None:
        while len(self.queue) < self._limit():
            path = next(self.paths, None)
            if path is None:
                return
            self.queue.append(self.runner.apply_async(guarded, (path, _decode, path, self.max_side)))

    def pending(self) -> bool:
        return bool(self.queue)

    def take(self, images: int, pixels: int) -> list[Decoded | ImageFaces]:
        """The next images read, in input order: at most ``images`` readable ones, or fewer once they hold
        ``pixels`` pixels (at least one); a file that could not be read is its result with the reason."""
        items: list[Decoded | ImageFaces] = []
        count = total = 0
        while self.queue and count < images and (not count or total < pixels):
            value = self.queue.popleft().get()
            items.append(value)
            if isinstance(value, Decoded):
                size = int(value.image.shape[0]) * int(value.image.shape[1])
                count, total = count + 1, total + size
                self.seen, self.seen_pixels = self.seen + 1, self.seen_pixels + size
            self._fill()
        return items


def _score(batch: list[Decoded], upsample: int) -> list:
    """The CNN's :class:`~dlibplus.cnn_detector.ScoreMap` (or ``None``) of every image of ``batch``, in one
    call on ``faces.CNN_DEVICE``; when that call fails, each image alone, so that only a failing image gets an
    error (the one the per-worker path would give it: the same code fails there)."""
    if not batch:
        return []
    try:
        return cnn_score_maps([d.image for d in batch], upsample)
    except DlibplusError:
        raise
    except Exception:  # noqa: BLE001 -- redone image by image: the failing one gets the error
        return [_score_one(d, upsample) for d in batch]


def _score_one(decoded: Decoded, upsample: int):
    found = guarded(decoded.path, cnn_score_maps, [decoded.image], upsample)
    return found if isinstance(found, ImageFaces) else found[0]


def _finished(done: deque, wait_beyond: int) -> Iterator[ImageFaces]:
    """Pop and yield, in order, the results at the head of ``done`` (ImageFaces or AsyncResults of them) that
    are finished, and wait for more while over ``wait_beyond`` are queued."""
    while done and (len(done) > wait_beyond or _ready(done[0])):
        item = done.popleft()
        yield item if isinstance(item, ImageFaces) else item.get()


def _ready(item: Any) -> bool:
    return isinstance(item, ImageFaces) or item.ready()
