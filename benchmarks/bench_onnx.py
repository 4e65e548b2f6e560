"""Faces per second on CPU: the exported ONNX model in ONNX Runtime (and OpenCV's DNN) vs TorchEncoder.

All encode the same aligned 150x150 chips (bench_encoder's: a tight-crop set, 5-point alignment), in
batches of ``--batch-size``, in the same run; rounds alternate between them so that load from other
processes hits all alike, and the best round of each is reported with faces per CPU-second beside it
(every runtime on its default threads: all cores). Parity is max |d| against the torch replica.

    python benchmarks/bench_onnx.py                 # 256 chips, batch 64, 3 rounds
    python benchmarks/bench_onnx.py --no-opencv     # ONNX Runtime and torch only
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_encoder import aligned_chips
from benchlib import REPO

sys.path.insert(0, str(REPO))

from dlibplus.encoders import TorchEncoder  # noqa: E402
from dlibplus.export import export_onnx  # noqa: E402


def batched(fn, chips: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(chips[i:i + batch]) for i in range(0, len(chips), batch)])


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="kpop_idols15", help="tight-crop photo set (default kpop_idols15)")
    parser.add_argument("-n", type=int, default=256, help="number of chips (default 256)")
    parser.add_argument("--batch-size", type=int, default=64, help="chips per call (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each runtime (default 3)")
    parser.add_argument("--no-opencv", action="store_true", help="leave OpenCV's DNN out")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    chips = aligned_chips(args.set, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "dlib.onnx"
        t0 = time.perf_counter()
        export_onnx("dlib", model)
        export_s = time.perf_counter() - t0
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        torch_encoder = TorchEncoder(device="cpu", batch_size=args.batch_size)
        variants = {"torch float32 (TorchEncoder)": lambda c: torch_encoder.encode(c),
                    "onnxruntime uint8": lambda c: batched(lambda b: session.run(None, {"chips": b})[0], c,
                                                           args.batch_size)}
        if not args.no_opencv:
            import cv2

            net = cv2.dnn.readNetFromONNX(str(model))

            def opencv(b: np.ndarray) -> np.ndarray:
                net.setInput(b)
                return net.forward().copy()

            variants["opencv dnn uint8"] = lambda c: batched(opencv, c, args.batch_size)
        for fn in variants.values():  # warm-up
            fn(chips[:args.batch_size])
        rounds = {name: [] for name in variants}
        outputs = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                outputs[name], wall, cpu = timed(lambda: fn(chips))
                rounds[name].append((wall, cpu))

    reference = outputs["torch float32 (TorchEncoder)"]
    torch_best = min(w for w, _ in rounds["torch float32 (TorchEncoder)"])
    print(f"{len(chips)} aligned chips from {args.set}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{ort.__version__}; batch {args.batch_size}; best of {args.repeats} rounds; export took {export_s:.1f} s")
    print(f"{'runtime':30s} {'faces/s':>9s} {'faces/CPU-s':>12s} {'vs torch':>9s} {'max|d| vs torch':>16s}")
    for name, timings in rounds.items():
        wall, cpu = min(timings)
        print(f"{name:30s} {len(chips) / wall:9.1f} {len(chips) / cpu:12.1f} {torch_best / wall:8.2f}x "
              f"{np.abs(outputs[name] - reference).max():16.2e}")


if __name__ == "__main__":
    main()
