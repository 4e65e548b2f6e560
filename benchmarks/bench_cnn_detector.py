"""Photos per second: dlib's CNN face detector vs TorchCnnDetector, same run, same photos; and parity.

Timing: LFW photos (250x250, upsample 1 by default, face_recognition's default for ``model="cnn"``)
and 1-2 Mpixel photos (deepface_tests / face_recognition, upsample 0 by default). dlib detects one
photo at a time (``cnn_face_detection_model_v1(path)(image, upsample)``); torch takes the whole list
in one call (batched forward passes), after one warm-up call on the first photo. Wall seconds and
process CPU seconds are both reported, so load from other processes shows.

Parity: every photo timed, plus ``--parity`` small photos from every set at upsample 0 and 1:
the share of dlib's rectangles that torch returns identically (same place in the best-first list),
the largest confidence difference, and each differing case.

    python benchmarks/bench_cnn_detector.py                       # CPU, modest sample
    python benchmarks/bench_cnn_detector.py --lfw 64 --large 6 --parity 200
    python benchmarks/bench_cnn_detector.py --device cuda --precision fast
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import REPO, faces_root

sys.path.insert(0, str(REPO))

import dlib  # noqa: E402
from PIL import Image  # noqa: E402

from dlibplus import models  # noqa: E402
from dlibplus.cnn_detector import TorchCnnDetector  # noqa: E402

SMALL_SETS = ("lfw_dev", "yale_faces", "orl_att", "kpop_idols15", "glint360k_celeb24", "five_celebrity",
              "dlib_johns", "face_recognition", "deepface_tests")


def load(path: Path) -> np.ndarray:
    """RGB uint8, as face_recognition.load_image_file gives it."""
    return np.asarray(Image.open(path).convert("RGB"))


def photos(set_name: str) -> list[Path]:
    """Every photo of a set, people in turn (first photo of everyone, then the second, ...)."""
    people = [sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() != ".csv")
              for d in sorted((faces_root() / set_name).iterdir()) if d.is_dir()]
    return [files[i] for i in range(max(map(len, people))) for files in people if i < len(files)]


def large_photos(count: int) -> list[Path]:
    """``count`` photos of 1 to 2.2 Mpixel."""
    found = []
    for set_name in ("deepface_tests", "face_recognition"):
        for path in photos(set_name):
            with Image.open(path) as im:
                if 1.0e6 <= im.size[0] * im.size[1] <= 2.2e6:
                    found.append(path)
    return found[:count]


def small_photos(count: int) -> list[Path]:
    """``count`` photos under 0.3 Mpixel, spread over every set."""
    per_set = {name: [p for p in photos(name) if _pixels(p) <= 3e5] for name in SMALL_SETS}
    picked: list[Path] = []
    while len(picked) < count and any(per_set.values()):
        for files in per_set.values():
            if files and len(picked) < count:
                picked.append(files.pop(0))
    return picked


def _pixels(path: Path) -> int:
    with Image.open(path) as im:
        return im.size[0] * im.size[1]


def dlib_boxes(detector, images: list[np.ndarray], upsample: int):
    return [[((r.rect.top(), r.rect.right(), r.rect.bottom(), r.rect.left()), r.confidence)
             for r in detector(image, upsample)] for image in images]


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


class Parity:
    """Running comparison of dlib's and torch's detections."""

    def __init__(self):
        self.faces = self.identical = 0
        self.max_diff = 0.0
        self.cases: list[str] = []

    def add(self, name: str, upsample: int, ref, got) -> None:
        self.faces += len(ref)
        for (box, conf), det in zip(ref, got):
            if det.box == box:
                self.identical += 1
            self.max_diff = max(self.max_diff, abs(det.confidence - conf))
        if [b for b, _ in ref] != [d.box for d in got]:
            self.cases.append(f"{name} upsample {upsample}: dlib {[(b, round(c, 4)) for b, c in ref]} "
                              f"torch {[(d.box, round(d.confidence, 4)) for d in got]}")

    def report(self) -> str:
        share = self.identical / self.faces if self.faces else 1.0
        lines = [f"parity: {self.identical}/{self.faces} dlib rectangles identical ({100 * share:.2f} %), "
                 f"max |confidence diff| {self.max_diff:.2e}, {len(self.cases)} photo(s) differ"]
        return "\n".join(lines + [f"  {case}" for case in self.cases])


def run_case(label: str, paths: list[Path], upsample: int, dlib_det, torch_det, parity: Parity) -> str:
    images = [load(p) for p in paths]
    mpix = sum(im.shape[0] * im.shape[1] for im in images) / len(images) / 1e6
    torch_det(images[:1], upsample)  # warm-up: torch's first call, resize tables of this size
    ref, d_wall, d_cpu = timed(lambda: dlib_boxes(dlib_det, images, upsample))
    got, t_wall, t_cpu = timed(lambda: torch_det(images, upsample))
    for path, r, g in zip(paths, ref, got):
        parity.add(f"{path.parent.parent.name}/{path.parent.name}/{path.name}", upsample, r, g)
    n = len(images)
    return (f"| {label} | {n} | {mpix:.2f} | {upsample} | {n / d_wall:.2f} ({d_cpu / n:.2f} cpu-s/photo) | "
            f"{n / t_wall:.2f} ({t_cpu / n:.2f} cpu-s/photo) | **{d_wall / t_wall:.1f}x** |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=int, default=24, help="LFW photos timed (default 24)")
    parser.add_argument("--lfw-upsample", type=int, default=1, help="upsample for LFW (default 1)")
    parser.add_argument("--large", type=int, default=3, help="1-2 Mpixel photos timed (default 3)")
    parser.add_argument("--large-upsample", type=int, default=0, help="upsample for large photos (default 0)")
    parser.add_argument("--parity", type=int, default=40,
                        help="extra small photos from every set checked at upsample 0 and 1 (default 40)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--precision", default="exact", choices=("exact", "fast"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = str(models.model_path(models.CNN_DETECTOR))
    dlib_det = dlib.cnn_face_detection_model_v1(path)
    torch_det = TorchCnnDetector(path, device=args.device, precision=args.precision)
    print(f"# bench_cnn_detector: {platform.processor() or platform.machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, {torch_det.device}, {args.precision}), dlib {dlib.__version__} "
          f"(CUDA: {dlib.DLIB_USE_CUDA})")
    parity = Parity()
    print("| photos | n | Mpixel | upsample | dlib photos/s | torch photos/s | torch / dlib |")
    print("|---|---|---|---|---|---|---|")
    if args.lfw:
        print(run_case("LFW 250x250", photos("lfw_dev")[:args.lfw], args.lfw_upsample, dlib_det, torch_det, parity),
              flush=True)
    if args.large:
        print(run_case("1-2 Mpixel", large_photos(args.large), args.large_upsample, dlib_det, torch_det, parity),
              flush=True)
    if args.parity:
        for upsample in (0, 1):
            for p in small_photos(args.parity):
                image = load(p)
                parity.add(f"{p.parent.parent.name}/{p.parent.name}/{p.name}", upsample,
                           dlib_boxes(dlib_det, [image], upsample)[0], torch_det([image], upsample)[0])
    print(parity.report())


if __name__ == "__main__":
    main()
