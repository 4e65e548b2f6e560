"""Video frames per second of ``dlibplus.video.predict_video`` on CPU.

Builds a clip from face_recognition's example photos (each photo letterboxed to ``--size``, held for
``--hold`` frames, mp4v at 25 fps) in a temporary folder, trains a FaceKNN on the example's training
photos, and times predict_video with every frame sampled and with ``--every`` N, with and without an
annotated copy, for dlib's encoder and the torch replica. Reports video frames/s (frames of the video
got through per second) and sampled frames/s (frames that went through the face pipeline per second).

    python benchmarks/bench_video.py                     # 640x480, 40 frames, every 1 and 5
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import REPO, faces_root

sys.path.insert(0, str(REPO))

import cv2  # noqa: E402

from dlibplus.data import process_images  # noqa: E402
from dlibplus.faces import FaceSettings  # noqa: E402
from dlibplus.images import load_image_file  # noqa: E402
from dlibplus.knn import FaceKNN  # noqa: E402
from dlibplus.recipe import Recipe  # noqa: E402
from dlibplus.video import predict_video  # noqa: E402

SCENES = [("obama", "examples__knn_examples__test__obama1.jpg"), ("biden", "examples__biden.jpg"),
          ("kit_harington", "examples__knn_examples__test__johnsnow_test1.jpg"),
          ("obama", "examples__obama-720p.jpg")]
TRAIN = [("obama", "examples__knn_examples__train__obama__obama.jpg"),
         ("obama", "examples__knn_examples__train__obama__obama2.jpg"),
         ("biden", "examples__knn_examples__train__biden__biden2.jpg"),
         ("kit_harington", "examples__knn_examples__train__kit_harington__john1.jpeg"),
         ("rose_leslie", "examples__knn_examples__train__rose_leslie__img1.jpg")]


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    scale = min(w / rgb.shape[1], h / rgb.shape[0])
    small = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return np.ascontiguousarray(out[:, :, ::-1])


def build_clip(path: Path, size: tuple[int, int], frames: int) -> None:
    root = faces_root() / "face_recognition"
    stills = [letterbox(load_image_file(root / p / n), size) for p, n in SCENES]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, size)
    for i in range(frames):
        writer.write(stills[(i * len(stills)) // frames])
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x480", help="frame size WxH (default 640x480)")
    parser.add_argument("--frames", type=int, default=40, help="frames in the clip (default 40)")
    parser.add_argument("--every", type=int, default=5, help="the sparser sampling timed (default 5)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    root = faces_root() / "face_recognition"
    results = process_images([root / p / n for p, n in TRAIN], FaceSettings(), jobs=1, use_cache=False, progress=False)
    knn = FaceKNN(1, recipe=Recipe()).fit(np.concatenate([r.encodings for r in results]), [p for p, _ in TRAIN])
    print(f"clip: {args.frames} frames {args.size}, mp4v; {os.cpu_count()} CPUs; one process (HOG, 5-point alignment)")
    print(f"{'encoder':8s} {'every':>5s} {'annotate':>8s} {'faces':>6s} {'seconds':>8s} {'video frames/s':>15s} "
          f"{'sampled frames/s':>17s}")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        build_clip(clip, size, args.frames)
        for encoder in ("dlib", "torch"):
            list(predict_video(clip, knn, every=args.frames, encoder=encoder))  # warm-up: models loaded
            for every, annotate in ((1, False), (args.every, False), (args.every, True)):
                out = Path(tmp) / "annotated.mp4" if annotate else None
                t0 = time.perf_counter()
                rows = list(predict_video(clip, knn, every=every, encoder=encoder, annotate_to=out))
                wall = time.perf_counter() - t0
                sampled = len(range(0, args.frames, every))
                print(f"{encoder:8s} {every:5d} {str(annotate):>8s} {len(rows):6d} {wall:8.2f} "
                      f"{args.frames / wall:15.1f} {sampled / wall:17.1f}")


if __name__ == "__main__":
    main()
