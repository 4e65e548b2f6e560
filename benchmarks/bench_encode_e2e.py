"""`dlibplus encode` end to end on whole photos: where the time goes, and what the parallel pipeline gains.

1. Stages, one process, models loaded beforehand, on every image: image decode
   (``dlibplus.images.load_image_file``), HOG detection (``api.face_locations``), 5-point landmarks,
   chip extraction (``dlib.get_face_chip``, what the pipeline hands to a non-dlib encoder) and the
   network: dlib's ``compute_face_descriptor`` on each chip, and the torch replica on all chips in
   batches (``--batch-size``). For dlib, the pipeline actually makes one call per face that extracts
   the chip and encodes it (``compute_face_descriptor(img, shape)``); that call is timed as well.
2. Totals: ``process_images`` (the pipeline behind ``dlibplus encode``, cache off) with jobs = all
   cores and jobs = 1, for both encoders; and, unless ``--no-cli``, the command itself
   (``python -m dlibplus.cli encode``, fresh empty ``DLIBPLUS_CACHE``, jobs = all).

Default photos: the first ``--limit-people`` people of ``lfw_dev`` (250x250) plus the whole
``face_recognition`` set (320x240 ... 2000x2333, some with several faces).

    python benchmarks/bench_encode_e2e.py --limit-people 10 --out /tmp/bench-e2e-tiny.json  # smoke test
    python benchmarks/bench_encode_e2e.py --out /tmp/bench-e2e.json                         # default: 50 people
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import faces_root, run_dlibplus

STAGES = ("decode", "detect", "landmarks", "chips", "encode")
STAGE_NAMES = {"decode": "image decode", "detect": "HOG detection", "landmarks": "landmarks (5 points)",
               "chips": "chip extraction", "encode": "network encode"}


def default_sources(limit_people: int, with_fr: bool) -> list[Path]:
    """The default photo folders: lfw_dev (or its first ``limit_people`` people) and face_recognition."""
    lfw = faces_root() / "lfw_dev"
    if limit_people:
        folders = sorted(p for p in lfw.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))[:limit_people]
    else:
        folders = [lfw]
    return folders + ([faces_root() / "face_recognition"] if with_fr else [])


class Clock:
    """Wall and CPU seconds summed per stage."""

    def __init__(self):
        self.wall = dict.fromkeys(STAGES + ("dlib_chip_and_encode",), 0.0)
        self.cpu = dict(self.wall)

    def run(self, stage, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall[stage] += time.perf_counter() - w
        self.cpu[stage] += time.process_time() - c
        return out


def stage_pass(paths, settings, torch_encoder, batch_size: int) -> dict:
    """Every stage on every image, one process; returns per-stage seconds, faces and encodings."""
    import dlib

    from dlibplus import api, faces, models
    from dlibplus.images import load_image_file

    t0 = time.perf_counter()
    net = models.face_recognition_model()
    models.hog_detector()
    models.shape_predictor(settings.landmarks)
    load_s = time.perf_counter() - t0
    # first calls allocate (dlib's network, the detector's buffers); paid once per process, not per image
    net.compute_face_descriptor(np.zeros((150, 150, 3), np.uint8))
    api.face_locations(np.zeros((250, 250, 3), np.uint8), settings.upsample, settings.detector)

    clock = Clock()
    chips, dlib_enc, dlib_combined, n_faces, pixels = [], [], [], 0, 0
    for path in paths:
        img = clock.run("decode", load_image_file, path)
        pixels += img.shape[0] * img.shape[1]
        boxes = clock.run("detect", api.face_locations, img, settings.upsample, settings.detector)
        shapes = clock.run("landmarks", faces.landmark_shapes, img, boxes, settings.landmarks)
        n_faces += len(shapes)
        for shape in shapes:
            chip = clock.run("chips", dlib.get_face_chip, img, shape, 150, 0.25)
            chips.append(chip)
            dlib_enc.append(np.array(clock.run("encode", net.compute_face_descriptor, chip)))
            # the pipeline's own dlib call: chip extraction and network in one
            dlib_combined.append(np.array(clock.run("dlib_chip_and_encode", net.compute_face_descriptor, img, shape)))

    chips = np.stack(chips) if chips else np.zeros((0, 150, 150, 3), np.uint8)
    warm_s = 0.0
    if len(chips):  # first forward pass: allocator and kernel selection, paid once per process
        t0 = time.perf_counter()
        torch_encoder.encode(chips[:batch_size])
        warm_s = time.perf_counter() - t0
    w, c = time.perf_counter(), time.process_time()
    torch_enc = torch_encoder.encode(chips)
    torch_wall, torch_cpu = time.perf_counter() - w, time.process_time() - c

    shared = {s: (clock.wall[s], clock.cpu[s]) for s in ("decode", "detect", "landmarks", "chips")}
    dlib_stages = {**shared, "encode": (clock.wall["encode"], clock.cpu["encode"])}
    torch_stages = {**shared, "encode": (torch_wall, torch_cpu)}
    dlib_enc = np.array(dlib_enc).reshape(-1, 128)
    dlib_combined = np.array(dlib_combined).reshape(-1, 128)
    return {"n_images": len(paths), "n_faces": n_faces, "megapixels_per_image": pixels / max(len(paths), 1) / 1e6,
            "model_load_s": load_s, "torch_first_batch_s": warm_s,
            "dlib": dlib_stages, "torch": torch_stages,
            "dlib_chip_and_encode": (clock.wall["dlib_chip_and_encode"], clock.cpu["dlib_chip_and_encode"]),
            "max_abs_diff_split_vs_combined_dlib": float(np.abs(dlib_enc - dlib_combined).max()) if n_faces else 0.0,
            "max_abs_diff_torch_vs_dlib": float(np.abs(torch_enc - dlib_enc).max()) if n_faces else 0.0}


def pipeline_total(paths, settings, encoder, jobs: int) -> tuple[float, int]:
    from dlibplus.data import process_images

    t0 = time.perf_counter()
    results = process_images(paths, settings, encoder=encoder, jobs=jobs, use_cache=False, progress=False)
    return time.perf_counter() - t0, sum(r.n_faces for r in results)


def cli_total(sources, encoder: str, tmp: Path, upsample: int, jobs: int) -> tuple[float, str, int]:
    """Wall seconds of ``dlibplus encode SOURCES`` with a fresh cache, the command, and faces written."""
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{encoder}-", dir=tmp))
    out = tmp / f"{encoder}.npz"
    wall, _, cmd = run_dlibplus(["encode", *map(str, sources), "--output", str(out), "--encoder", encoder,
                                 "--upsample", str(upsample), "--jobs", str(jobs)], cache)
    with np.load(out, allow_pickle=False) as z:
        n_faces = len(z["encodings"])
    shown = cmd if len(sources) <= 4 else cmd[:6] + [f"... ({len(sources)} folders)"] + cmd[4 + len(sources):]
    return wall, f"DLIBPLUS_CACHE=$(mktemp -d) {shlex.join(shown)}", n_faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, help="image files or folders (default: see above)")
    ap.add_argument("--limit-people", type=int, default=50, metavar="N",
                    help="lfw_dev people in the default photo set (default 50; 0 = all 860)")
    ap.add_argument("--no-fr-set", action="store_true", help="leave the face_recognition set out of the default")
    ap.add_argument("--upsample", type=int, default=1, help="HOG upsampling (default 1, face_recognition's)")
    ap.add_argument("--jobs", type=int, default=0, help="parallel jobs for the pipeline totals (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=64, help="torch encoder batch size (default 64)")
    ap.add_argument("--device", default="cpu", help="torch encoder device (default cpu)")
    ap.add_argument("--no-cli", action="store_true", help="skip timing the `dlibplus encode` command itself")
    ap.add_argument("--out", type=Path, default=Path("/tmp/dlibplus-bench-encode-e2e.json"),
                    help="JSON results (default /tmp/dlibplus-bench-encode-e2e.json)")
    args = ap.parse_args()

    import torch

    import dlibplus
    from dlibplus.data import image_paths, resolve_jobs
    from dlibplus.faces import FaceSettings
    from dlibplus.encoders import TorchEncoder

    bench_cmd = shlex.join([sys.executable, *sys.argv])
    sources = args.paths or default_sources(args.limit_people, not args.no_fr_set)
    paths = image_paths(sources)
    if not paths:
        sys.exit("no image files found")
    settings = FaceSettings(upsample=args.upsample)
    jobs = resolve_jobs(args.jobs)
    load_before = os.getloadavg()
    torch_encoder = TorchEncoder(device=args.device, batch_size=args.batch_size)

    stages = stage_pass(paths, settings, torch_encoder, args.batch_size)
    totals = {}
    for name, enc in (("dlib", None), ("torch", torch_encoder)):
        for j in sorted({jobs, 1}, reverse=True):
            wall, faces = pipeline_total(paths, settings, enc, j)
            totals[f"{name} jobs={j}"] = {"wall_s": wall, "n_faces": faces}
    cli = {}
    if not args.no_cli:
        with tempfile.TemporaryDirectory(prefix="dlibplus-bench-e2e-") as tmp:
            for name in ("dlib", "torch"):
                wall, cmd, faces = cli_total(sources, name, Path(tmp), args.upsample, jobs)
                cli[name] = {"wall_s": wall, "command": cmd, "n_faces": faces}

    import dlib

    n = stages["n_images"]
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "dlib": dlib.__version__, "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "dlibplus": dlibplus.__version__,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    results = {"command": bench_cmd, "n_images": n, "settings": settings.to_dict(), "jobs": jobs,
               "torch_device": args.device, "batch_size": args.batch_size, "machine": machine,
               "stages": stages, "pipeline": totals, "cli": cli,
               "paths": [str(p) for p in paths]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    # --- report ---
    ms = lambda s: 1000 * s / n  # noqa: E731
    print(f"## dlibplus encode, end to end: {n} images ({stages['megapixels_per_image']:.2f} Mpx on average), "
          f"{stages['n_faces']} faces; HOG upsample {args.upsample}\n")
    print(f"{machine['processor']}, {machine['cpus']} CPUs, load average before/after {load_before[0]:.2f}/"
          f"{machine['loadavg_after'][0]:.2f}; dlib {dlib.__version__}, torch {torch.__version__} "
          f"({machine['torch_threads']} threads, {args.device}, batch {args.batch_size}), dlibplus {dlibplus.__version__}\n")
    print("Stages, one process (wall ms per image; CPU ms per image in brackets):\n")
    print("| stage | dlib encoder | torch encoder |")
    print("|---|---:|---:|")
    for s in STAGES:
        d, t = stages["dlib"][s], stages["torch"][s]
        print(f"| {STAGE_NAMES[s]} | {ms(d[0]):.1f} ({ms(d[1]):.1f}) | {ms(t[0]):.1f} ({ms(t[1]):.1f}) |")
    dsum = sum(v[0] for v in stages["dlib"].values())
    tsum = sum(v[0] for v in stages["torch"].values())
    print(f"| **sum of stages** | **{ms(dsum):.1f}** | **{ms(tsum):.1f}** |")
    comb = stages["dlib_chip_and_encode"]
    print(f"| chip + encode in one dlib call, as the pipeline makes it | {ms(comb[0]):.1f} ({ms(comb[1]):.1f}) | |")
    print()
    nf = max(stages["n_faces"], 1)
    print(f"Network encode per face: dlib {1000 * stages['dlib']['encode'][0] / nf:.1f} ms, torch "
          f"{1000 * stages['torch']['encode'][0] / nf:.1f} ms (batches of up to {args.batch_size}).\n")
    print(f"One-off costs, not in the table: dlib models loaded in {stages['model_load_s']:.2f} s; torch's first "
          f"batch {stages['torch_first_batch_s']:.2f} s. Checks: dlib chip-then-encode vs one call, max|d| "
          f"{stages['max_abs_diff_split_vs_combined_dlib']:.2g}; torch vs dlib max|d| {stages['max_abs_diff_torch_vs_dlib']:.2g}.\n")
    print("Totals (wall):\n")
    print("| run | seconds | ms/image | images/s | faces | speedup vs jobs=1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("dlib", "torch"):
        one = totals[f"{name} jobs=1"]["wall_s"]
        for j in sorted({jobs, 1}, reverse=True):
            r = totals[f"{name} jobs={j}"]
            print(f"| process_images, {name} encoder, jobs={j}, no cache | {r['wall_s']:.2f} | {ms(r['wall_s']):.1f} | "
                  f"{n / r['wall_s']:.2f} | {r['n_faces']} | {one / r['wall_s']:.2f}x |")
        if name in cli:
            w = cli[name]["wall_s"]
            print(f"| `dlibplus encode --encoder {name}` (whole command, jobs={jobs}, fresh cache) | {w:.2f} | "
                  f"{ms(w):.1f} | {n / w:.2f} | {cli[name]['n_faces']} | {one / w:.2f}x |")
    print()
    print(f"benchmark command: `{bench_cmd}`")
    for name in cli:
        print(f"encode command ({name}): `{cli[name]['command']}`")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
