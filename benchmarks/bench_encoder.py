"""Faces per second: TorchEncoder (batched PyTorch replica) vs dlib's compute_face_descriptor.

Both encode the same aligned 150x150 chips (tight crops, whole image as the face box, 5-point
alignment as face_recognition does). Rounds alternate between the encoders so that load from other
processes hits all alike; the best round of each is reported, with faces per CPU-second beside it
(dlib runs on one thread, torch on ``--threads``). Parity is max |torch - dlib| over all components.
TorchEncoder runs at ``precision="exact"`` (float32, TF32 off whatever the global settings); ``--fast``
adds ``precision="fast"`` (bfloat16 autocast on CPU, float16 on CUDA) and, on CUDA, bfloat16.

    python benchmarks/bench_encoder.py                      # CPU, exact, the encoder's default batch
    python benchmarks/bench_encoder.py --fast               # also the fast precisions
    python benchmarks/bench_encoder.py --batch-sizes 32 64 128   # exact at several batch sizes
    python benchmarks/bench_encoder.py --device cuda --fast --compile
    python benchmarks/bench_encoder.py --baseline b99eb52   # also the TorchEncoder of a git revision
"""
from __future__ import annotations

import argparse
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


def baseline_encoder(revision: str, device: str):
    """A TorchEncoder (default options) from ``dlibplus/encoders.py`` as it was at a git revision, loaded
    as a module of today's package (its relative imports resolve there)."""
    import importlib.util
    import subprocess
    import tempfile

    source = subprocess.run(["git", "show", f"{revision}:dlibplus/encoders.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "encoders.py")
    with open(path, "w") as fh:
        fh.write(source)
    spec = importlib.util.spec_from_file_location("dlibplus._baseline_encoders", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "dlibplus"
    spec.loader.exec_module(module)
    return module.TorchEncoder(device=device)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="kpop_idols15", help="tight-crop photo set (default kpop_idols15)")
    parser.add_argument("-n", type=int, default=256, help="number of chips (default 256)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="torch batch sizes for exact (default: the encoder's default for the device)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each encoder (default 3)")
    parser.add_argument("--fast", action="store_true", help="also precision='fast' (and bfloat16 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="also the fast precision through torch.compile")
    parser.add_argument("--baseline", metavar="REV", help="also the TorchEncoder of this git revision (defaults)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    chips = aligned_chips(args.set, args.n)
    default_batch = TorchEncoder(device=args.device).batch_size
    variants = {f"torch exact, batch {b}": TorchEncoder(device=args.device, batch_size=b)
                for b in (args.batch_sizes or [default_batch])}
    if args.fast:
        fast = TorchEncoder(device=args.device, precision="fast")
        variants[f"torch fast ({fast.precision})"] = fast
        if fast.device.type == "cuda":
            variants["torch bfloat16"] = TorchEncoder(device=args.device, precision="bfloat16")
    if args.compile:
        compiled = TorchEncoder(device=args.device, precision="fast", compile=True)
        variants[f"torch fast ({compiled.precision}) compiled"] = compiled
    if args.baseline:
        variants[f"torch at {args.baseline}"] = baseline_encoder(args.baseline, args.device)
    dlib_encoder = DlibEncoder()

    for encoder in variants.values():  # warm-up: kernels, allocator, autotuning, compilation
        encoder.encode(chips[:encoder.batch_size])
    results = {name: [] for name in ["dlib compute_face_descriptor", *variants]}
    outputs = {}
    for _ in range(args.repeats):
        outputs["dlib compute_face_descriptor"], wall, cpu = timed(lambda: dlib_encoder.encode(chips))
        results["dlib compute_face_descriptor"].append((wall, cpu))
        for name, encoder in variants.items():
            outputs[name], wall, cpu = timed(lambda: encoder.encode(chips))
            results[name].append((wall, cpu))

    reference = outputs["dlib compute_face_descriptor"]
    dlib_best = min(w for w, _ in results["dlib compute_face_descriptor"])
    cpus = os.cpu_count()
    print(f"{len(chips)} aligned chips from {args.set}; {platform.processor() or platform.machine()}, "
          f"{cpus} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), dlib {dlib.__version__}, "
          f"device {args.device}; load average {os.getloadavg()[0]:.1f}; best of {args.repeats} rounds")
    print(f"{'encoder':34s} {'faces/s':>9s} {'faces/CPU-s':>12s} {'vs dlib':>8s} {'max|d| vs dlib':>15s} "
          f"{'max L2 vs dlib':>15s}")
    for name, rounds in results.items():
        wall, cpu = min(rounds)
        diff = outputs[name] - reference
        print(f"{name:34s} {len(chips) / wall:9.1f} {len(chips) / cpu:12.1f} {dlib_best / wall:7.1f}x "
              f"{np.abs(diff).max():15.2e} {np.linalg.norm(diff, axis=1).max():15.2e}")


if __name__ == "__main__":
    main()
