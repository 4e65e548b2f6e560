"""The one prepared check to run on a lent GPU machine (issue 12); it also runs on a CPU with ``--quick``.

Checks and measures, in this order, and writes one markdown table (plus the same rows as JSON):

1. **Parity** with dlib (``compute_face_descriptor`` on real aligned chips) of every TorchEncoder precision:
   ``exact`` with TF32 globally off and globally on (bound 1e-5), ``float16`` / ``bfloat16`` (the fast
   modes), and ``exact`` / ``fast`` through ``torch.compile``; that the global float32 settings are
   restored; that device augmentation on the GPU equals the CPU's and the numpy path's.
2. **Inference**: end-to-end ``encode()`` from uint8 chips in host memory (4096 chips) per precision, at
   the encoder's default batch size and at 4096; the network alone on chips already on the device.
3. **Training step** on device-resident chips (the network in train mode + ArcFace head + AdamW), at
   batch 32, 128, 512 and 1024: float32 exact, AMP (as ``dlibplus finetune`` on CUDA) and AMP with device
   augmentation in the step.
4. **Augmentation**: ``device_augment.augment_on_device`` images/s (on the device, batch 1024) against
   the numpy ``augment.augment_batch`` (one CPU core).
5. **The 0.6 decision** on lfw_dev: for each reduced precision, the share of pairs (all pairs, and
   same-person pairs) whose same/different decision at distance 0.6 differs from exact's.
6. Optional, on CUDA by default: **the CNN detector** (issue 13): its network alone on decoded lfw_dev photos;
   on 300 lfw_dev people, the pipeline with the detector batched in the main process
   (:mod:`dlibplus.device_pipeline`) in-process with and without the cache, and ``dlibplus encode --detector
   cnn --encoder torch`` with ``--detect-on auto`` against ``workers`` (the same output file? photos/s of
   each); then that command end to end on every lfw_dev photo (target: >= 1,000 photos/s on an H200 with 16
   cores) when the time left allows it at the rate measured;
   ``dlibplus finetune`` on kpop_idols15 (images/s, seconds), ``dlibplus encode`` of lfw_dev photos with
   ``--encoder dlib`` and ``torch``, and the CUDA tests.

Sized to finish in under 8 minutes on one H200 with 16 cores (``--budget-s``: later optional parts are
skipped, and say so, when time runs short); only the installed torch is used. Photos are read from
``../shared/data/faces`` (or ``$DLIBPLUS_FACES``), never copied. Output: ``--out`` (default
``$OUT/device_check.md`` when ``$OUT`` is set, else ``/tmp/device-check/device_check.md``).

    python benchmarks/device_check.py                 # on the GPU machine
    python benchmarks/device_check.py --quick         # CPU smoke run: small sizes, no compile
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchlib import REPO, faces_root, run_dlibplus

sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dlibplus import augment, device_augment  # noqa: E402
from dlibplus.encoders import DlibEncoder, TorchEncoder  # noqa: E402
from dlibplus.precision import exact_float32, float32_settings  # noqa: E402

TOLERANCE = 0.6
BOUNDS = {"exact": 1e-5, "float16": 2e-2, "bfloat16": 3e-2}  # max |d| per component vs dlib


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each part does (full run on a GPU, or ``--quick``)."""

    parity_per_person: int  # aligned kpop_idols15 / glint360k_celeb24 photos per person besides dlib_johns
    e2e_chips: int
    train_batches: tuple[int, ...]
    train_steps: int
    augment_batch: int
    numpy_augment: int
    lfw_people: int | None  # None: every lfw_dev person
    repeats: int


FULL = Sizes(3, 4096, (32, 128, 512, 1024), 10, 1024, 256, None, 3)
QUICK = Sizes(0, 64, (8, 16), 2, 64, 16, 20, 1)


class Report:
    """Rows of the one table: section, what, setting, value, note."""

    def __init__(self):
        self.rows: list[dict[str, str]] = []

    def add(self, section: str, what: str, setting: str, value: str, note: str = "") -> None:
        row = {"section": section, "what": what, "setting": setting, "value": value, "note": note}
        self.rows.append(row)
        print(" | ".join(row.values()), flush=True)

    def markdown(self, title: str) -> str:
        lines = [f"### {title}", "", "| section | what | setting | value | note |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r.values()) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


class Clock:
    """Seconds since the start, against the budget."""

    def __init__(self, budget_s: float):
        self.start, self.budget = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, seconds: float) -> bool:
        return self.elapsed() + seconds <= self.budget


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(fn: Callable[[], object], items: int, repeats: int, device: torch.device) -> float:
    """Items per second of ``fn`` (one warm-up call, then the best of ``repeats`` timed calls)."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return items / best


def rate(value: float) -> str:
    return f"{value / 1000:.1f}k/s" if value >= 10_000 else f"{value:.1f}/s"


# --- chips ------------------------------------------------------------------------------------------------

def folder_chips(root: Path, per_person: int | None) -> np.ndarray:
    """Images of ``root/<person>/`` as they are (150x150 aligned chips in dlib_johns)."""
    paths = [p for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith("_")
             for p in sorted(d.iterdir())[:per_person] if p.is_file()]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def aligned_chips(root: Path, per_person: int) -> np.ndarray:
    """Chips of tight crops, aligned as face_recognition does (whole image as the face box, 5 points)."""
    import dlib

    from dlibplus import models

    predictor = models.shape_predictor("small")
    out = []
    for person in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("_")):
        for path in sorted(p for p in person.iterdir() if p.is_file())[:per_person]:
            image = np.asarray(Image.open(path).convert("RGB"))
            h, w = image.shape[:2]
            out.append(dlib.get_face_chip(image, predictor(image, dlib.rectangle(0, 0, w, h)), 150, 0.25))
    return np.stack(out)


def parity_chips(faces: Path, sizes: Sizes) -> np.ndarray:
    parts = [folder_chips(faces / "dlib_johns", None)]
    if sizes.parity_per_person:
        parts += [aligned_chips(faces / name, sizes.parity_per_person)
                  for name in ("kpop_idols15", "glint360k_celeb24")]
    return np.concatenate(parts)


def lfw_chips(faces: Path, people: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One chip per lfw_dev photo (the detected face nearest the centre; HOG, 5 points) and its person."""
    from dlibplus.data import process_images
    from dlibplus.faces import FaceSettings

    folders = sorted(d for d in (faces / "lfw_dev").iterdir() if d.is_dir())[:people]
    paths = [(i, p) for i, d in enumerate(folders) for p in sorted(d.iterdir()) if p.is_file()]
    results = process_images([p for _, p in paths], FaceSettings(), want="chips", use_cache=False, progress=False)
    chips, labels = [], []
    for (label, _), result in zip(paths, results):
        if result.chips is None or not len(result.chips):
            continue
        centres = np.stack([(result.boxes[:, 0] + result.boxes[:, 2]) / 2, (result.boxes[:, 1] + result.boxes[:, 3]) / 2], 1)
        chips.append(result.chips[np.argmin(np.abs(centres - 125).sum(axis=1))])
        labels.append(label)
    return np.stack(chips), np.array(labels)


# --- parts ------------------------------------------------------------------------------------------------

def variants(device: torch.device, compile_too: bool) -> dict[str, Callable[[], TorchEncoder]]:
    """Encoder makers by name: every precision on this device (compiled ones if asked)."""
    out: dict[str, Callable[[], TorchEncoder]] = {"exact": lambda: TorchEncoder(device=str(device))}
    if device.type == "cuda":
        out["float16 (fast)"] = lambda: TorchEncoder(device=str(device), precision="float16")
    out["bfloat16" + ("" if device.type == "cuda" else " (fast)")] = \
        lambda: TorchEncoder(device=str(device), precision="bfloat16")
    if compile_too:
        out["exact, compiled"] = lambda: TorchEncoder(device=str(device), compile=True)
        out["fast, compiled"] = lambda: TorchEncoder(device=str(device), precision="fast", compile=True)
    return out


def tf32_globally(on: bool) -> None:
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")


def check_parity(report: Report, encoders: dict[str, TorchEncoder], chips: np.ndarray, reference: np.ndarray,
                 clock: Clock) -> None:
    section = "parity vs dlib"
    for name, encoder in encoders.items():
        settings = ["TF32 off", "TF32 globally on"] if name == "exact" else ["TF32 globally on"]
        for setting in settings:
            tf32_globally(setting != "TF32 off")
            before = float32_settings()
            t0 = time.perf_counter()
            out = encoder.encode(chips)
            seconds = time.perf_counter() - t0
            restored = float32_settings() == before
            error = np.abs(out - reference)
            bound = BOUNDS[encoder.precision]
            verdict = "PASS" if error.max() <= bound and restored else "FAIL"
            report.add(section, f"{len(chips)} chips, max abs diff (max L2)", f"{name}, {setting}",
                       f"{error.max():.2e} ({np.linalg.norm(out - reference, axis=1).max():.2e})",
                       f"{verdict}: bound {bound:g}; settings restored: {restored}"
                       + (f"; first call {seconds:.0f} s (compile)" if encoder.compiled else ""))
    tf32_globally(False)
    report.add(section, "elapsed", "", f"{clock.elapsed():.0f} s")


def check_augment_parity(report: Report, chips: np.ndarray, device: torch.device) -> None:
    section = "parity of device augmentation"
    x = torch.from_numpy(chips)
    slots = np.arange(len(chips))
    here = device_augment.augment_on_device(x.to(device), 1, 2, 3, slots)
    on_cpu = device_augment.augment_on_device(x, 1, 2, 3, slots)
    report.add(section, f"{len(chips)} chips, values differing", f"{device.type} vs cpu",
               f"{int((here.cpu() != on_cpu).sum())}", "expected 0 (float64 points and blend, same order)")
    n = min(len(chips), 16)
    ours = device_augment.augment_on_device(x[:n].to(device), 1, 2, 3, slots[:n], draws="dlib")
    theirs = augment.augment_batch(chips[:n], 1, 2, 3, slots[:n])
    difference = np.abs(ours.permute(0, 2, 3, 1).cpu().numpy() - theirs)
    report.add(section, f"{n} chips vs numpy augment_batch (same draws)", device.type,
               f"max {difference.max():.0f}, mean {difference.mean():.2e}", "expected 0")


def measure_inference(report: Report, encoders: dict[str, TorchEncoder], chips: np.ndarray, sizes: Sizes,
                      device: torch.device) -> None:
    section = "inference"
    tf32_globally(True)  # as PyTorch users often run: exact must not depend on it
    resident = torch.from_numpy(chips).to(device)
    for name, encoder in encoders.items():
        batches = [encoder.batch_size] + ([len(chips)] if device.type == "cuda" and len(chips) != encoder.batch_size
                                          and not encoder.compiled else [])
        default = encoder.batch_size
        for batch in batches:
            encoder.batch_size = batch
            speed = best_rate(lambda: encoder.encode(chips), len(chips), sizes.repeats, device)
            report.add(section, f"encode() of {len(chips)} uint8 chips in host memory, faces/s",
                       f"{name}, batch {batch}", rate(speed))
        encoder.batch_size = default
        speed = best_rate(lambda: encoder.embed(resident), len(chips), sizes.repeats, device)
        report.add(section, f"network alone on {len(chips)} device-resident uint8 chips, faces/s",
                   f"{name}, batch {encoder.batch_size}", rate(speed))
    tf32_globally(False)


def training_step(device: torch.device, batch: int, mode: str, chips: torch.Tensor, classes: int,
                  steps: int, repeats: int) -> float:
    """Images/s of training steps on device-resident chips (network in train mode + ArcFace + AdamW).

    ``mode``: ``"exact"`` (float32, TF32 off), ``"amp"`` (autocast as ``dlibplus finetune`` on CUDA:
    bfloat16 where supported), ``"amp+augment"`` (plus device augmentation of each batch)."""
    import torch.nn.functional as F

    from dlibplus.dlibnet import load_dat
    from dlibplus.heads import ArcFaceHead

    model = load_dat().to(device).to(memory_format=torch.channels_last).train()
    head = ArcFaceHead(classes).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-5)
    use_amp = mode != "exact" and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    counter = [0]

    def step() -> None:
        idx = torch.randint(len(chips), (batch,), device=device)  # drawn on the device: no host sync
        labels = idx % classes
        counter[0] += 1
        if mode.endswith("augment"):
            x = device_augment.augment_on_device(chips[idx], 0, 0, counter[0], np.arange(batch))
        else:
            x = chips[idx].permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = head(model(x).float(), labels)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def run() -> None:
        for _ in range(steps):
            step()

    if mode == "exact":
        with exact_float32():
            return best_rate(run, batch * steps, repeats, device)
    return best_rate(run, batch * steps, repeats, device)


def measure_training(report: Report, chips: np.ndarray, sizes: Sizes, device: torch.device, clock: Clock) -> None:
    section = "training step"
    resident = torch.from_numpy(chips).to(device)
    modes = ["exact", "amp", "amp+augment"] if device.type == "cuda" else ["exact", "exact+augment"]
    for batch in sizes.train_batches:
        for mode in modes:
            if not clock.allows(30):
                report.add(section, "images/s", f"batch {batch}, {mode}", "skipped", "time budget")
                continue
            speed = training_step(device, batch, mode, resident, classes=min(1000, len(chips)),
                                  steps=sizes.train_steps, repeats=max(1, sizes.repeats - 1))
            report.add(section, "network + ArcFace + AdamW, images/s", f"batch {batch}, {mode}", rate(speed))
            if device.type == "cuda":
                torch.cuda.empty_cache()


def measure_augmentation(report: Report, chips: np.ndarray, sizes: Sizes, device: torch.device) -> None:
    section = "augmentation"
    resident = torch.from_numpy(chips[:sizes.augment_batch]).to(device)
    slots = np.arange(len(resident))
    speed = best_rate(lambda: device_augment.augment_on_device(resident, 0, 0, 1, slots), len(resident),
                      sizes.repeats, device)
    report.add(section, "augment_on_device (jitter + colours), images/s",
               f"{device.type}, batch {len(resident)}, {torch.get_num_threads()} CPU threads", rate(speed))
    subset = chips[:sizes.numpy_augment]
    numpy_speed = best_rate(lambda: augment.augment_batch(subset, 0, 0, 1, np.arange(len(subset))), len(subset),
                            1, torch.device("cpu"))
    report.add(section, "numpy augment_batch, images/s", f"cpu, one core, {len(subset)} chips", rate(numpy_speed),
               f"device/numpy: {speed / numpy_speed:.1f}x")
    params_speed = best_rate(lambda: device_augment.sample_params(0, 0, 1, slots), len(slots), sizes.repeats,
                             torch.device("cpu"))
    report.add(section, "parameter draws on the host (torch.Generator per slot), samples/s", "cpu",
               rate(params_speed))


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Euclidean distances of every pair i < j (float64)."""
    e = torch.from_numpy(np.asarray(embeddings, np.float64))
    d = torch.cdist(e, e).numpy()
    return d[np.triu_indices(len(e), 1)]


def measure_decisions(report: Report, encoders: dict[str, TorchEncoder], chips: np.ndarray, labels: np.ndarray) -> None:
    section = f"decision at {TOLERANCE} (lfw_dev)"
    i, j = np.triu_indices(len(labels), 1)
    same = labels[i] == labels[j]
    exact = encoders["exact"].encode(chips)
    exact_d = pair_distances(exact)
    report.add(section, "faces, pairs (same-person pairs)", "", f"{len(chips)}, {len(exact_d)} ({int(same.sum())})",
               f"exact accepts {np.mean(exact_d[same] <= TOLERANCE):.3f} of same, "
               f"{np.mean(exact_d[~same] <= TOLERANCE):.4f} of different pairs")
    for name, encoder in encoders.items():
        if name == "exact":
            continue
        out = encoder.encode(chips)
        d = pair_distances(out)
        flips = (d <= TOLERANCE) != (exact_d <= TOLERANCE)
        report.add(section, "pairs whose decision differs from exact: all (same-person)", name,
                   f"{flips.mean():.2e} ({flips[same].mean():.2e})",
                   f"{int(flips.sum())} pairs; max abs diff vs exact {np.abs(out - exact).max():.1e}, "
                   f"max distance change {np.abs(d - exact_d).max():.1e}")


def measure_finetune(report: Report, faces: Path, device: torch.device, epochs: int, extra: list[str],
                     out_dir: Path) -> None:
    section = "finetune (CLI)"
    cache = Path(tempfile.mkdtemp(prefix="dlibplus-cache-"))
    args = ["finetune", str(faces / "kpop_idols15"), "--face-box", "whole", "--epochs", str(epochs),
            "--device", device.type, "-o", str(out_dir / f"ft-{device.type}"), *extra]
    cmd = [sys.executable, "-m", "dlibplus.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "DLIBPLUS_CACHE": str(cache)}, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    speeds = re.findall(r"img_s=(\d+)", proc.stderr + proc.stdout)
    report.add(section, f"kpop_idols15, {epochs} epochs", f"{device.type} {' '.join(extra)}".strip(),
               f"{wall:.0f} s" + (f", last img_s {speeds[-1]}" if speeds else ""),
               f"exit {proc.returncode}" + ("" if proc.returncode == 0 else f": {proc.stderr.strip()[-200:]}"))


def measure_cli_encode(report: Report, faces: Path, people: int, jobs: int) -> None:
    section = "encode (CLI)"
    folders = sorted(d for d in (faces / "lfw_dev").iterdir() if d.is_dir())[:people]
    photos = sum(1 for d in folders for p in d.iterdir() if p.is_file())
    for encoder in ("dlib", "torch"):
        with tempfile.TemporaryDirectory() as tmp:
            wall, _, _ = run_dlibplus(["encode", *map(str, folders), "-o", f"{tmp}/out.npz", "--encoder", encoder,
                                       "--jobs", str(jobs)], Path(tmp) / "cache")
        report.add(section, f"{photos} lfw_dev photos, HOG, {jobs} workers", f"--encoder {encoder}", f"{wall:.1f} s",
                   f"{photos / wall:.0f} photos/s")


def lfw_folders(faces: Path, people: int | None) -> tuple[list[Path], list[Path]]:
    """The first ``people`` lfw_dev person folders (``None``: all) and their photos, sorted."""
    folders = sorted(d for d in (faces / "lfw_dev").iterdir() if d.is_dir())[:people]
    return folders, [p for d in folders for p in sorted(d.iterdir()) if p.is_file()]


CNN_SECTION = "CNN detector (issue 13)"


def measure_cnn_detector(report: Report, faces: Path, device: torch.device, jobs: int, people: int,
                         clock: Clock) -> None:
    """Issue 13 on this device: the CNN detector's network alone; the pipeline that batches it in the main
    process, in-process, with and without the cache, on ``people`` lfw_dev people; ``dlibplus encode --detector
    cnn --encoder torch`` with ``--detect-on auto`` and ``workers`` on them (the same .npz?); then the same
    command end to end on every lfw_dev photo when the time left allows it at the rate measured."""
    from dlibplus.device_pipeline import uses_parent_detection
    from dlibplus.faces import FaceSettings
    from dlibplus.images import load_image_file

    _, every_photo = lfw_folders(faces, None)
    measure_cnn_network(report, [load_image_file(p) for p in every_photo[:512]], device)
    auto = "main process" if uses_parent_detection(FaceSettings(detector="cnn")) else "workers"
    _, photos = lfw_folders(faces, people)
    speed = measure_cnn_pipeline(report, photos, device, jobs, auto)
    main = cnn_cli_encode(report, faces, people, "auto", auto, jobs)
    workers = cnn_cli_encode(report, faces, people, "workers", auto, jobs)
    same = main.keys() == workers.keys() and all(np.array_equal(main[k], workers[k]) for k in main)
    report.add(CNN_SECTION, "--detect-on auto vs workers: the same .npz", f"{len(photos)} photos",
               "PASS" if same else "FAIL", f"{len(main['encodings'])} faces")
    if clock.allows(30 + 1.5 * len(every_photo) / speed):
        cnn_cli_encode(report, faces, None, "auto", auto, jobs)
    else:
        report.add(CNN_SECTION, f"encode of all {len(every_photo)} lfw_dev photos", "", "skipped",
                   f"time budget at {rate(speed)}")


def measure_cnn_network(report: Report, images: list[np.ndarray], device: torch.device) -> None:
    """Photos/s of the detector's network alone on decoded photos, and with dlib's to_label after it."""
    from dlibplus.cnn_detector import cnn_detector

    detector = cnn_detector(device.type)
    for what, call in (("network (score_maps)", detector.score_maps), ("network + dlib's to_label", detector)):
        speed = best_rate(lambda call=call: call(images, 1), len(images), 2, device)
        report.add(CNN_SECTION, f"{what} on {len(images)} decoded lfw_dev photos, upsample 1, photos/s",
                   f"{device.type}, {detector.precision}", rate(speed))


def measure_cnn_pipeline(report: Report, photos: list[Path], device: torch.device, jobs: int, auto: str) -> float:
    """Photos/s of ``process_images`` with the CNN detector and the torch encoder in this process (no start-up),
    with the cache off and on (a fresh one); returns the latter."""
    from dlibplus.data import process_images
    from dlibplus.faces import FaceSettings

    settings = FaceSettings(detector="cnn")
    encoder = TorchEncoder(device=str(device))
    process_images(photos[:64], settings, encoder=encoder, jobs=jobs, use_cache=False, progress=False)  # warm
    speed = 0.0
    for cached in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            results = process_images(photos, settings, encoder=encoder, jobs=jobs, use_cache=cached,
                                     cache_dir=Path(tmp) if cached else None, progress=False)
            wall = time.perf_counter() - t0
        speed = len(photos) / wall
        report.add(CNN_SECTION, f"process_images of {len(photos)} lfw_dev photos (torch encoder, upsample 1), "
                   "photos/s", f"auto ({auto}), {jobs} workers, cache {'on' if cached else 'off'}", rate(speed),
                   f"{wall:.1f} s, {sum(r.n_faces for r in results)} faces; no process start-up")
    return speed


def cnn_cli_encode(report: Report, faces: Path, people: int | None, where: str, auto: str,
                   jobs: int) -> dict[str, np.ndarray]:
    """``dlibplus encode --detector cnn --encoder torch --detect-on WHERE`` of ``people`` lfw_dev people (``None``:
    all), a fresh cache: photos/s with the start-up; returns the .npz's arrays."""
    folders, photos = lfw_folders(faces, people)
    with tempfile.TemporaryDirectory() as tmp:
        wall, _, _ = run_dlibplus(["encode", *map(str, folders), "-o", f"{tmp}/out.npz", "--detector", "cnn",
                                   "--encoder", "torch", "--detect-on", where, "--jobs", str(jobs)],
                                  Path(tmp) / "cache")
        with np.load(f"{tmp}/out.npz") as z:
            arrays = {k: z[k] for k in z.files}
    report.add(CNN_SECTION, f"dlibplus encode --detector cnn --encoder torch, {len(photos)} lfw_dev photos",
               f"--detect-on {where}" + (f" ({auto})" if where == "auto" else "") + f", {jobs} workers",
               rate(len(photos) / wall),
               f"{wall:.1f} s with start-up" + ("; target >= 1000 photos/s" if people is None else ""))
    return arrays


def run_cuda_tests(report: Report) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests/test_encoders.py",
                           "tests/test_device_augment.py", "tests/test_device_pipeline.py"], cwd=REPO,
                          capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    report.add("CUDA tests", "pytest -k cuda (encoders, device_augment, device_pipeline)", "", summary,
               f"exit {proc.returncode}")


# --- main -------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CPU smoke run")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--out", type=Path, help="markdown file to write (a .json of the rows goes beside it)")
    parser.add_argument("--budget-s", type=float, default=400,
                        help="seconds after which later parts are skipped (default 400: ends within ~8 min)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile variants (default: on CUDA without --quick)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="dlibplus finetune epochs on kpop_idols15 (default 3 on CUDA, 0 = skip)")
    parser.add_argument("--finetune-args", default="", help="extra finetune options, e.g. '--augment device'")
    parser.add_argument("--cli-people", type=int, default=None,
                        help="lfw_dev people for the dlibplus encode timing (default 300 on CUDA, 0 = skip)")
    parser.add_argument("--cnn-people", type=int, default=None,
                        help="CNN detector part (issue 13): lfw_dev people for the in-process pipeline and "
                             "--detect-on auto vs workers (default 300 on CUDA, 0 = skip the part); then every "
                             "lfw_dev photo through encode when time allows")
    parser.add_argument("--pytest", action=argparse.BooleanOptionalAction, default=None,
                        help="run the CUDA tests (default: on CUDA)")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    sizes = QUICK if args.quick else FULL
    compile_too = args.compile if args.compile is not None else (cuda and not args.quick)
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (3 if cuda and not args.quick else 0)
    cli_people = args.cli_people if args.cli_people is not None else (300 if cuda and not args.quick else 0)
    cnn_people = args.cnn_people if args.cnn_people is not None else (300 if cuda and not args.quick else 0)
    run_pytest = args.pytest if args.pytest is not None else cuda
    out = args.out or Path(os.environ.get("OUT") or "/tmp/device-check") / "device_check.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    faces = faces_root()
    clock = Clock(args.budget_s)
    report = Report()

    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    report.add("machine", "device", device.type, name,
               f"torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPUs, "
               f"{torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.1f}"
               + (", --quick" if args.quick else ""))

    chips = parity_chips(faces, sizes)
    reference = DlibEncoder().encode(chips)
    encoders = {label: make() for label, make in variants(device, compile_too).items()}
    report.add("machine", "chips ready", "", f"{clock.elapsed():.0f} s",
               f"{len(chips)} parity chips; default batch {encoders['exact'].batch_size}")
    check_parity(report, encoders, chips, reference, clock)
    check_augment_parity(report, chips[:64], device)

    tiled = np.ascontiguousarray(np.resize(chips, (sizes.e2e_chips, *chips.shape[1:])))
    measure_inference(report, encoders, tiled, sizes, device)
    measure_augmentation(report, tiled, sizes, device)
    measure_training(report, tiled, sizes, device, clock)

    if clock.allows(60):
        lfw, labels = lfw_chips(faces, sizes.lfw_people)
        measure_decisions(report, encoders, lfw, labels)
    else:
        report.add("decision", "lfw_dev", "", "skipped", "time budget")
    if cnn_people and clock.allows(120):
        measure_cnn_detector(report, faces, device, os.cpu_count() or 1, cnn_people, clock)
    elif cnn_people:
        report.add("CNN detector (issue 13)", "lfw_dev", "", "skipped", "time budget")
    if finetune_epochs and clock.allows(120):
        measure_finetune(report, faces, device, finetune_epochs, args.finetune_args.split(), out.parent)
    if cli_people and clock.allows(60):
        measure_cli_encode(report, faces, cli_people, os.cpu_count() or 1)
    if run_pytest and clock.allows(90):
        run_cuda_tests(report)
    report.add("machine", "total", "", f"{clock.elapsed():.0f} s")

    title = f"device_check.py{' --quick' if args.quick else ''} on {name} ({time.strftime('%Y-%m-%d')})"
    out.write_text(report.markdown(title))
    out.with_suffix(".json").write_text(json.dumps(report.rows, indent=1))
    print(f"\nwrote {out}\n")
    print(report.markdown(title))


if __name__ == "__main__":
    main()
