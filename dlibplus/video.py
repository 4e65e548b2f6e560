"""Name the faces in a video file: face_recognition's most copied example, as a library function.

:func:`predict_video` reads a video with OpenCV's ``VideoCapture``, runs the face pipeline
(:func:`dlibplus.faces.image_faces`: detect → landmarks → aligned chips, then the encoder) on every
``every``-th frame,
classifies the faces with a model that has ``predict_with_distance`` (a
:class:`~dlibplus.knn.FaceKNN`, or a fine-tuned folder's :class:`~dlibplus.head_classifier.HeadClassifier`)
and yields one :class:`VideoFace` per face per sampled frame. With ``annotate_to`` it also writes a copy
of the video with boxes and names drawn.

Each sampled frame goes through exactly what :func:`dlibplus.data.process_images` does to a photo (same
settings, same encoder, same dlib calls), so a frame gives the predictions a still image of it gives.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import DlibplusError
from .faces import FaceSettings, image_faces
from .fileio import atomic_path
from .predict import UNKNOWN

if TYPE_CHECKING:
    from .recipe import Recipe

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".3gp", ".ts", ".mts", ".m2ts", ".ogv"})
# what the annotated copy can be written as (OpenCV's FFmpeg backend and its built-in MJPG writer)
WRITE_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
FIELDS = ("path", "frame", "time", "name", "top", "right", "bottom", "left", "distance")


class VideoError(DlibplusError):
    """A video file that cannot be read, or an annotated copy that cannot be written."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"video {self.path}: {reason}")


def is_video_file(path: os.PathLike | str) -> bool:
    """Whether ``path`` names a video file, by its extension (any case): ``.mp4``, ``.avi``, ``.mov``, ..."""
    path = Path(path)
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.is_dir()


@dataclass(frozen=True)
class VideoFace:
    """One face in one sampled frame.

    :ivar path: the video file.
    :ivar frame: 0-based index of the frame in the video.
    :ivar time: seconds from the start: ``frame / fps`` (the container's nominal frame rate; NaN when it
        gives none).
    :ivar name: the predicted person, or ``"unknown"`` beyond the model's threshold.
    :ivar box: ``(top, right, bottom, left)`` in the frame's pixels.
    :ivar distance: to the predicted person (the model's measure: Euclidean for a KNN).
    :ivar person: the predicted person even when ``name`` is ``"unknown"``.
    """

    path: str
    frame: int
    time: float
    name: str
    box: tuple[int, int, int, int]
    distance: float
    person: str

    def to_dict(self) -> dict[str, Any]:
        """The :data:`FIELDS` as a flat dict (``time`` in seconds, rounded to microseconds)."""
        top, right, bottom, left = self.box
        return {"path": self.path, "frame": self.frame, "time": round(self.time, 6), "name": self.name,
                "top": top, "right": right, "bottom": bottom, "left": left, "distance": round(self.distance, 6)}


@dataclass(frozen=True)
class VideoInfo:
    """:ivar fps: nominal frames per second (0 when the container does not say).
    :ivar frame_count: the container's frame count (an estimate for some formats). :ivar width, height: pixels."""

    fps: float
    frame_count: int
    width: int
    height: int


def _open(path: Path):
    import cv2

    if not path.is_file():
        raise VideoError(path, "file not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError(path, "OpenCV cannot open it as a video")
    return cap


def _info(cap) -> VideoInfo:
    import cv2

    fps = cap.get(cv2.CAP_PROP_FPS)
    return VideoInfo(float(fps) if fps and fps > 0 else 0.0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
                     int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))


def video_info(path: os.PathLike | str) -> VideoInfo:
    """Frame rate, frame count and size of a video. :raises VideoError: it cannot be opened."""
    cap = _open(Path(path))
    try:
        return _info(cap)
    finally:
        cap.release()


def read_frames(path: os.PathLike | str, every: int = 1, *, all_frames: bool = False
                ) -> Iterator[tuple[int, np.ndarray, bool]]:
    """``(index, bgr_frame, sampled)`` for the frames of a video, in order.

    A frame is sampled when ``index % every == 0``. Without ``all_frames`` only sampled frames are
    yielded (the others are skipped without being converted); with it every frame is, decoded.

    :raises VideoError: the file cannot be opened, or not even its first frame decoded.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, not {every}")
    path = Path(path)
    cap = _open(path)
    try:
        index = 0
        while True:
            sampled = index % every == 0
            if sampled or all_frames:
                ok, frame = cap.read()
            else:
                ok, frame = cap.grab(), None
            if not ok:
                if index == 0:
                    raise VideoError(path, "no frame could be decoded")
                return
            if sampled or all_frames:
                yield index, frame, sampled
            index += 1
    finally:
        cap.release()


def encode_frame(rgb: np.ndarray, settings: FaceSettings, encoder) -> tuple[np.ndarray, np.ndarray]:
    """The faces of one RGB frame (H, W, 3) uint8, as :func:`dlibplus.data.process_images` does a photo.

    :param encoder: an encoder object (jitter included: :func:`~dlibplus.encoders.with_jitter`).
    :return: boxes (n, 4) int32 ``(top, right, bottom, left)`` in the frame's pixels, encodings (n, 128) float64.
    """
    boxes, chips = image_faces(rgb, settings)
    return boxes, np.asarray(encoder.encode(chips), np.float64).reshape(len(chips), 128)


def resolve_usage(classifier, encoder=None, settings: FaceSettings | None = None, num_jitters: int | None = None,
                  recipe: "Recipe | None" = None):
    """``(encoder object, face settings)`` to predict with: ``recipe`` (default the classifier's own), with
    ``encoder`` (a spec or an encoder object), ``settings`` and ``num_jitters`` overriding it where given."""
    from dataclasses import replace

    from .encoders import resolve_encoder, with_jitter
    from .recipe import Recipe

    recipe = recipe or getattr(classifier, "recipe", None) or Recipe()
    if isinstance(encoder, (str, os.PathLike)):
        recipe = recipe.with_encoder(str(encoder))
    if settings is not None:
        recipe = recipe.with_face_settings(settings)
    if num_jitters is not None and num_jitters != recipe.num_jitters:  # the recipe's scale was for its own jitter
        recipe = replace(recipe, num_jitters=max(num_jitters, 1), jitter_scale=1.0)
    base = encoder if encoder is not None and not isinstance(encoder, (str, os.PathLike)) \
        else resolve_encoder(recipe.encoder)[0]
    return with_jitter(base, recipe.num_jitters, recipe.jitter_scale), recipe.face_settings


def draw_faces(bgr: np.ndarray, faces: list[VideoFace]) -> np.ndarray:
    """Boxes and ``name (distance)`` labels drawn on a BGR frame, in place (green known, red unknown)."""
    import cv2

    h, w = bgr.shape[:2]
    thickness = max(2, round(max(h, w) / 400))
    font_scale = max(0.5, max(h, w) / 1200)
    for f in faces:
        top, right, bottom, left = f.box
        colour = (40, 40, 220) if f.name == UNKNOWN else (80, 200, 40)
        cv2.rectangle(bgr, (left, top), (right, bottom), colour, thickness)
        label = f"{f.name} ({f.distance:.2f})"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        y = bottom if bottom + th + base + 6 <= h else max(top - th - base - 6, 0)
        cv2.rectangle(bgr, (left, y), (left + tw + 6, y + th + base + 6), colour, cv2.FILLED)
        cv2.putText(bgr, label, (left + 3, y + th + 3), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return bgr


def annotated_path(video: os.PathLike | str, annotate_to: os.PathLike | str) -> Path:
    """Where the annotated copy goes: ``annotate_to`` itself, or ``annotate_to/<video name>`` for an
    existing folder (as ``.avi`` when the video's own extension is not one OpenCV can write).

    :raises VideoError: the result is the input video itself, or has an extension it cannot write.
    """
    video, out = Path(video), Path(annotate_to)
    if out.is_dir():
        out = out / (video.name if video.suffix.lower() in WRITE_FOURCC else video.stem + ".avi")
    if out.suffix.lower() not in WRITE_FOURCC:
        raise VideoError(out, f"cannot write an annotated video with this extension; use one of {sorted(WRITE_FOURCC)}")
    if out.exists() and video.exists() and out.samefile(video):
        raise VideoError(out, "is the input video; the annotated copy must go elsewhere")
    return out


@contextlib.contextmanager
def _video_writer(out: Path, fps: float, size: tuple[int, int]):
    """A ``cv2.VideoWriter`` whose file replaces ``out`` only when the block completes (atomic)."""
    import cv2

    with atomic_path(out) as tmp:
        staging = tmp.with_name(tmp.name + out.suffix)  # OpenCV picks the container by extension
        writer = cv2.VideoWriter(str(staging), cv2.VideoWriter_fourcc(*WRITE_FOURCC[out.suffix.lower()]),
                                 fps, size)
        try:
            if not writer.isOpened():
                raise VideoError(out, "OpenCV cannot write a video there")
            yield writer
            writer.release()
            os.replace(staging, tmp)
        finally:
            writer.release()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)


def predict_video(path: os.PathLike | str, model, *, every: int = 1, encoder=None,
                  settings: FaceSettings | None = None, annotate_to: os.PathLike | str | None = None,
                  threshold: float | None = None, num_jitters: int | None = None,
                  recipe: "Recipe | None" = None) -> Iterator[VideoFace]:
    """Yield one :class:`VideoFace` per face per sampled frame (frames 0, every, 2·every, ...), in order.

    :param model: a classifier (:class:`dlibplus.predict.Classifier`: a :class:`~dlibplus.knn.FaceKNN` or
        :class:`~dlibplus.head_classifier.HeadClassifier`): ``predict_with_distance(encodings, threshold)
        -> (names, distances, people)`` and the ``recipe`` its training encodings were made with.
    :param every: sample one frame in ``every``.
    :param recipe: how to find and encode faces; default the model's own.
    :param encoder: ``None``: the recipe's; else a spec (``"dlib"``, ``"torch"``, a fine-tuned folder,
        ``+flip``) or an encoder object. It must give the encodings the model was trained on.
    :param settings: how faces are found; ``None``: the recipe's.
    :param annotate_to: write a copy of the video with boxes and names (a file, or an existing folder to
        put ``<video name>`` in; ``.mp4``/``.mov``/``.mkv``/``.m4v`` as mp4v, ``.avi`` as MJPG). Every
        frame is written, at the video's frame rate, showing the faces of the latest sampled frame. The
        file appears (atomically) when the iteration completes; never over the input.
    :param threshold: the model's "unknown" threshold, overridden. :param num_jitters: default the recipe's.
    :raises VideoError: the video cannot be read, or the annotated copy cannot be written.
    """
    path = Path(path)
    encoder, settings = resolve_usage(model, encoder, settings, num_jitters, recipe)
    out = annotated_path(path, annotate_to) if annotate_to is not None else None
    info = video_info(path)
    frames = read_frames(path, every, all_frames=out is not None)
    if out is None:
        for index, bgr, _ in frames:
            yield from _frame_predictions(path, index, info.fps, bgr, model, encoder, settings, threshold)
        return
    with contextlib.ExitStack() as stack:
        writer, faces = None, []
        for index, bgr, sampled in frames:
            if writer is None:
                size = (bgr.shape[1], bgr.shape[0])
                writer = stack.enter_context(_video_writer(out, info.fps or 25.0, size))
            if sampled:
                faces = list(_frame_predictions(path, index, info.fps, bgr, model, encoder, settings, threshold))
                yield from faces
            writer.write(draw_faces(bgr, faces))


def _frame_predictions(path: Path, index: int, fps: float, bgr: np.ndarray, model, encoder,
                       settings: FaceSettings, threshold: float | None) -> Iterator[VideoFace]:
    """The predictions of one sampled BGR frame."""
    boxes, encodings = encode_frame(np.ascontiguousarray(bgr[:, :, ::-1]), settings, encoder)
    if not len(boxes):
        return
    names, dist, people = model.predict_with_distance(encodings, threshold)
    time = index / fps if fps else float("nan")
    for name, box, d, person in zip(names, boxes, dist, people):
        yield VideoFace(str(path), index, time, str(name), tuple(int(v) for v in box), float(d), str(person))
