"""Faces per second: TorchEncoder (batched PyTorch replica) vs dlib's compute_face_descriptor.

Both encode the same aligned 150x150 chips (tight crops, whole image as the face box, 5-point
alignment as face_recognition does). Rounds alternate between the two so that load from other
processes hits both alike; the best round of each is reported, with faces per CPU-second beside it
(dlib runs on one thread, torch on ``--threads``). Parity is max |torch - dlib| over all components.

    python benchmarks/bench_encoder.py                      # CPU, float32, batch 64
    python benchmarks/bench_encoder.py --bf16               # also torch.autocast bfloat16
    python benchmarks/bench_encoder.py --device cuda        # GPU, batch 256 (adds half)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import numpy as np

from benchlib import REPO, faces_root

sys.path.insert(0, str(REPO))

import dlib  # noqa: E402
from PIL import Image  # noqa: E402

from dlibplus import models  # noqa: E402
from dlibplus.encoders import DlibEncoder, TorchEncoder  # noqa: E402


def aligned_chips(set_name: str, count: int) -> np.ndarray:
    """``count`` chips from a tight-crop set, people in turn so that every one is represented."""
    predictor = models.shape_predictor("small")
    people = [sorted(p for p in d.iterdir() if p.is_file())
              for d in sorted((faces_root() / set_name).iterdir()) if d.is_dir() and not d.name.startswith("_")]
    paths = [files[i] for i in range(max(map(len, people))) for files in people if i < len(files)][:count]
    chips = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        chips.append(dlib.get_face_chip(image, predictor(image, dlib.rectangle(0, 0, w, h)), 150, 0.25))
    return np.stack(chips)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="kpop_idols15", help="tight-crop photo set (default kpop_idols15)")
    parser.add_argument("-n", type=int, default=256, help="number of chips (default 256)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, help="torch batch size (default 64 on CPU, 256 on CUDA)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each encoder (default 3)")
    parser.add_argument("--bf16", action="store_true", help="also time torch under autocast bfloat16")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (256 if args.device.startswith("cuda") else 64)
    chips = aligned_chips(args.set, args.n)
    device_type = torch.device(args.device).type

    variants = {"torch float32": (TorchEncoder(device=args.device, batch_size=batch), contextlib.nullcontext)}
    if args.bf16:
        variants["torch bf16 autocast"] = (variants["torch float32"][0],
                                           lambda: torch.autocast(device_type, dtype=torch.bfloat16))
    if device_type == "cuda":
        variants["torch float16"] = (TorchEncoder(device=args.device, batch_size=batch, half=True),
                                     contextlib.nullcontext)
    dlib_encoder = DlibEncoder()

    for encoder, context in variants.values():  # warm-up: kernels, allocator, autotuning
        with context():
            encoder.encode(chips[:batch])
    results = {name: [] for name in ["dlib compute_face_descriptor", *variants]}
    outputs = {}
    for _ in range(args.repeats):
        outputs["dlib compute_face_descriptor"], wall, cpu = timed(lambda: dlib_encoder.encode(chips))
        results["dlib compute_face_descriptor"].append((wall, cpu))
        for name, (encoder, context) in variants.items():
            with context():
                outputs[name], wall, cpu = timed(lambda: encoder.encode(chips))
            results[name].append((wall, cpu))

    reference = outputs["dlib compute_face_descriptor"]
    dlib_best = min(w for w, _ in results["dlib compute_face_descriptor"])
    cpus = os.cpu_count()
    print(f"{len(chips)} aligned chips from {args.set}; {platform.processor() or platform.machine()}, "
          f"{cpus} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), dlib {dlib.__version__}, "
          f"device {args.device}, batch {batch}; best of {args.repeats} rounds")
    print(f"{'encoder':30s} {'faces/s':>9s} {'faces/CPU-s':>12s} {'vs dlib':>8s} {'max|d| vs dlib':>15s} "
          f"{'max L2 vs dlib':>15s}")
    for name, rounds in results.items():
        wall, cpu = min(rounds)
        diff = outputs[name] - reference
        print(f"{name:30s} {len(chips) / wall:9.1f} {len(chips) / cpu:12.1f} {dlib_best / wall:7.1f}x "
              f"{np.abs(diff).max():15.2e} {np.linalg.norm(diff, axis=1).max():15.2e}")


if __name__ == "__main__":
    main()
