"""Ray against the single-process pipeline: encoding throughput, Ray's start-up cost, the break-even size.

For each size, the first N photos of lfw_dev (sorted) go through ``process_images`` (``--jobs`` worker
processes, no cache) and through ``ray_process_images`` on a local Ray of ``--jobs`` CPUs, alternately,
in the same run; both results are checked equal (paths, errors, boxes, encodings, in order). Ray's
start-up cost is ``ray.init`` plus its first small job (workers and actors starting), measured once.

The break-even size is where Ray's total time (start-up + N / its rate) falls below the single
process's (N / its rate): start-up / (1/rate_single - 1/rate_ray), when Ray's rate is the higher.

    python benchmarks/bench_ray.py --sizes 1000 5000     # lfw_dev holds 4387 photos: 5000 takes them all

(When Ray is up in the process, the pool workers process_images ends print Ray's SIGTERM stack traces:
noise, not failures.)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from benchlib import REPO, faces_root

sys.path.insert(0, str(REPO))

from dlibplus.data import process_images  # noqa: E402
from dlibplus.faces import FaceSettings  # noqa: E402
from dlibplus.encoders import resolve_encoder  # noqa: E402
from dlibplus.ray_encode import ray_cluster, ray_process_images  # noqa: E402


def lfw_photos(n: int) -> list:
    root = faces_root() / "lfw_dev"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".png"))[:n]


def check_same(a, b) -> None:
    assert [str(r.path) for r in a] == [str(r.path) for r in b], "order differs"
    for x, y in zip(a, b):
        assert x.error == y.error, (x.path, x.error, y.error)
        if x.error is None:
            assert np.array_equal(x.boxes, y.boxes), x.path
            assert np.allclose(x.encodings, y.encodings, atol=1e-6, rtol=0), x.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="photos per run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes / Ray CPUs (default all)")
    parser.add_argument("--encoder", default="dlib", help="encoder spec (default dlib, as dlibplus encode)")
    args = parser.parse_args()

    import ray

    settings = FaceSettings()
    t0 = time.perf_counter()
    cluster = ray_cluster(None, args.jobs)  # what `dlibplus encode --ray` starts
    cluster.__enter__()
    init_s = time.perf_counter() - t0
    warm = lfw_photos(8)
    t0 = time.perf_counter()
    ray_process_images(warm, settings, encoder=args.encoder, progress=False)
    first_job_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    process_images(warm, settings, encoder=resolve_encoder(args.encoder)[0], jobs=args.jobs, use_cache=False,
                   progress=False)
    warm_single_s = time.perf_counter() - t0
    startup = init_s + max(first_job_s - warm_single_s, 0.0)
    print(f"{os.cpu_count()} CPUs, {args.jobs} processes / Ray CPUs, encoder {args.encoder}, ray {ray.__version__}")
    print(f"Ray start-up: ray.init {init_s:.1f} s + first 8-photo job {first_job_s:.1f} s "
          f"(single process: {warm_single_s:.1f} s) -> start-up cost {startup:.1f} s")
    print(f"{'photos':>6s} {'faces':>6s} {'single s':>9s} {'single img/s':>13s} {'ray s':>8s} {'ray img/s':>10s} "
          f"{'ray/single':>10s}")
    rates = []
    for n in args.sizes:
        paths = lfw_photos(n)
        t0 = time.perf_counter()
        single = process_images(paths, settings, encoder=resolve_encoder(args.encoder)[0], jobs=args.jobs,
                                use_cache=False, progress=False)
        single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        on_ray = ray_process_images(paths, settings, encoder=args.encoder, progress=False)
        ray_s = time.perf_counter() - t0
        check_same(single, on_ray)
        faces = sum(r.n_faces for r in single)
        rates.append((len(paths) / single_s, len(paths) / ray_s))
        print(f"{len(paths):6d} {faces:6d} {single_s:9.1f} {len(paths) / single_s:13.2f} {ray_s:8.1f} "
              f"{len(paths) / ray_s:10.2f} {single_s / ray_s:9.2f}x", flush=True)
    cluster.__exit__(None, None, None)
    single_rate, ray_rate = rates[-1]
    if ray_rate > single_rate:
        print(f"break-even: {startup / (1 / single_rate - 1 / ray_rate):.0f} photos (rates of the largest run)")
    else:
        print("break-even: none on this machine: Ray's rate does not beat the single process's, so its start-up "
              "cost is never repaid; Ray pays with more machines (or GPUs) than one process can use")


if __name__ == "__main__":
    main()
