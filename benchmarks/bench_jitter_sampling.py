"""dlib-exact bilinear sampling, the host jitter's main cost: this checkout's ``_sample_bilinear`` against
a git revision's, interleaved, on the same 150x150x3 chip and rotated grid; checks both give the same bytes.

    python benchmarks/bench_jitter_sampling.py            # against bc40c14, before the flat-gather version
    python benchmarks/bench_jitter_sampling.py REV
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from benchlib import REPO
from dlibplus import align


def sampler_of(rev: str):
    """``_sample_bilinear`` as it was at ``rev`` (the function alone, executed with numpy)."""
    source = subprocess.run(["git", "show", f"{rev}:dlibplus/align.py"], capture_output=True, text=True,
                            check=True, cwd=REPO).stdout
    namespace = {"np": np}
    exec(source[source.index("def _sample_bilinear("):source.index("def _check_image(")], namespace)
    return namespace["_sample_bilinear"]


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else "bc40c14"
    old, new = sampler_of(rev), align._sample_bilinear
    src = (np.random.default_rng(0).random((150, 150, 3)) * 255).astype(np.uint8)
    angle = np.deg2rad(2.0)  # a jitter-like turn and zoom, some points falling outside the chip
    yy, xx = np.mgrid[0:150, 0:150].astype(float)
    px = 2 + xx * np.cos(angle) * 0.98 - yy * np.sin(angle)
    py = -1 + xx * np.sin(angle) + yy * np.cos(angle) * 0.98
    assert np.array_equal(old(src, px, py), new(src, px, py)), "the two versions differ"
    best = {rev: np.inf, "now": np.inf}
    for _ in range(5):
        for name, sample in ((rev, old), ("now", new)):
            t = time.perf_counter()
            for _ in range(100):
                sample(src, px, py)
            best[name] = min(best[name], (time.perf_counter() - t) * 10)
    print(f"{rev} {best[rev]:.2f} ms, now {best['now']:.2f} ms per 150x150x3 chip (best of 5 x 100): "
          f"{best[rev] / best['now']:.2f}x; same bytes")


if __name__ == "__main__":
    main()
