"""``dlibplus cluster``: group the faces of unlabelled photos by person."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import click

from ..cluster import DEFAULT_THRESHOLDS, METHODS, UNCLUSTERED
from .options import ENCODER_HELP, face_options, face_settings, ray_option, user_errors

CSV_NAME = "clusters.csv"
FIELDS = ("path", "top", "right", "bottom", "left", "cluster")
UNCLUSTERED_NAME = "unclustered"


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help=f"Folder to write {CSV_NAME} (and, with --folders, the cluster folders) into.")
@click.option("--method", type=click.Choice(METHODS), default="chinese-whispers", show_default=True,
              help="chinese-whispers (dlib's face clustering, votes weighted by distance), average "
                   "(agglomerative, average linkage) or dbscan (scikit-learn's density clustering).")
@click.option("--threshold", type=click.FloatRange(0, min_open=True), default=None,
              help="Faces closer than this (Euclidean distance between encodings) are linked [default: "
                   + ", ".join(f"{v} for {k}" for k, v in DEFAULT_THRESHOLDS.items())
                   + "]; suits dlib's encodings and fine-tuned models (calibrated so that 0.6 keeps dlib's "
                     "meaning). Lower it if different people share clusters, raise it if one person is split.")
@click.option("--folders", is_flag=True,
              help="Also write one folder of face crops per cluster (cluster_001, ... and unclustered): rename "
                   "them to people's names and train on them with `dlibplus train-knn OUTPUT --face-box whole`.")
@click.option("--encoder", default="dlib", show_default=True, help=ENCODER_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of chinese whispers' node order.")
@ray_option
@click.option("--no-cache", is_flag=True, help="Do not read or write the encoding cache.")
@face_options
@user_errors
def cluster(paths, output, method, threshold, folders, encoder, seed, ray_address, no_cache,
            detector, upsample, landmarks, face_box, max_side, jobs):
    """Find every face in PATHS (image files or folders), group them by person, and write
    OUTPUT/clusters.csv: path,top,right,bottom,left,cluster (cluster_001, cluster_002, ... by decreasing
    size; "unclustered" for faces like no other).
    """
    from ..data import process_images
    from ..encoders import resolve_encoder

    output = output.resolve()
    files, unreadable = _input_files(paths, output)
    _check_output(output, folders)
    settings = face_settings(detector, upsample, landmarks, face_box, max_side)
    enc, _ = resolve_encoder(encoder)
    for path, reason in unreadable:
        click.echo(f"warning: skipped {path}: {reason}", err=True)
    if ray_address is not None:
        from ..ray_encode import ray_process_images, require_ray

        require_ray()
        results = ray_process_images(files, settings, encoder=resolve_encoder(encoder)[1], num_cpus=jobs or None,
                                     address=None if ray_address == "local" else ray_address)
    else:
        results = process_images(files, settings, encoder=enc, jobs=jobs, use_cache=not no_cache, progress=True)
    faces, encodings, failed, no_face = _collect_faces(results)
    labels = _cluster(encodings, method, threshold, seed)
    names = _cluster_names(labels)
    _write_csv(output / CSV_NAME, faces, names)
    if folders:
        _write_folders(output, faces, names)
    n_clusters = len({n for n in names if n != UNCLUSTERED_NAME})
    click.echo(f"{len(faces)} faces in {len(files) - failed} images ({no_face} without a face, "
               f"{failed + len(unreadable)} skipped): {n_clusters} clusters, {names.count(UNCLUSTERED_NAME)} "
               f"unclustered; written to {output / CSV_NAME}", err=True)


def _collect_faces(results) -> tuple[list, list, int, int]:
    """``(path, box)`` and encoding of every face, in input order; images that failed (reported
    here) and images without a face, counted."""
    faces, encodings, failed, no_face = [], [], 0, 0
    for r in results:
        if r.error is not None:
            click.echo(f"warning: skipped {r.path}: {r.error}", err=True)
            failed += 1
            continue
        no_face += r.n_faces == 0
        faces += [(r.path, tuple(int(v) for v in box)) for box in r.boxes]
        encodings += list(r.encodings)
    return faces, encodings, failed, no_face


def _input_files(paths, output: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files to cluster, and the unreadable ones with why. Files under ``output`` (crops of an
    earlier run) are left out. :raises click.UsageError: a path that does not exist, the output CSV
    given as an input, or no readable image at all."""
    from ..data import image_paths

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise click.UsageError(f"not found: {', '.join(map(str, missing))}")
    if any(Path(p).resolve() == output / CSV_NAME for p in paths):
        raise click.UsageError(f"{output / CSV_NAME} is one of the inputs; choose another --output")
    files, unreadable, inside = [], [], 0
    for f in image_paths(paths):
        if _is_under(f.resolve(), output):
            inside += 1
            continue
        reason = _unreadable(f)
        if reason:
            unreadable.append((f, reason))
        else:
            files.append(f)
    if inside:
        click.echo(f"warning: ignoring {inside} image files inside the output folder {output}", err=True)
    if not files:
        what = "no readable image files" if unreadable else "no image files (jpg, jpeg, png, bmp, webp)"
        raise click.UsageError(f"{what} found in the given paths")
    return files, unreadable


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not an image file we can open (its header only: milliseconds), or ``None``."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file() or not os.access(path, os.R_OK):
        return "not a readable file"
    try:
        with Image.open(path):
            return None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"not an image ({type(exc).__name__})"


def _is_under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_output(output: Path, folders: bool) -> None:
    """Refuse, before any work, an output that would write over an input or mix with an earlier run."""
    if output.exists() and not output.is_dir():
        raise click.UsageError(f"--output {output} is a file, not a folder")
    if folders and output.is_dir():
        old = sorted(p.name for p in output.iterdir()
                     if p.is_dir() and (p.name.startswith("cluster_") or p.name == UNCLUSTERED_NAME))
        if old:
            raise click.UsageError(f"{output} already holds cluster folders ({', '.join(old[:3])}"
                                   f"{', ...' if len(old) > 3 else ''}) from an earlier run: choose an empty "
                                   f"--output or remove them")


def _cluster(encodings: list, method: str, threshold: float, seed: int):
    """Labels (n,) of the faces; a bar shows the neighbour search (the long part)."""
    import numpy as np
    from tqdm.auto import tqdm

    from ..cluster import cluster_faces

    if not encodings:
        return np.zeros(0, np.int64)
    X = np.asarray(encodings, np.float32)
    with tqdm(total=len(X), desc="neighbours", unit="face", leave=False) as bar:
        return cluster_faces(X, method, threshold, seed=seed, progress=bar.update)


def _cluster_names(labels) -> list[str]:
    """``cluster_001`` … (as wide as the count needs, at least 3 digits) or ``unclustered``."""
    n = int(labels.max(initial=-1)) + 1
    width = max(3, len(str(n)))
    return [UNCLUSTERED_NAME if lab == UNCLUSTERED else f"cluster_{lab + 1:0{width}d}" for lab in labels.tolist()]


def _write_csv(path: Path, faces: list, names: list[str]) -> None:
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(FIELDS)
            for (image, (top, right, bottom, left)), name in zip(faces, names):
                writer.writerow([str(image), top, right, bottom, left, name])


def _write_folders(output: Path, faces: list, names: list[str]) -> None:
    """One JPEG per face, cropped to its face box from the pixels it was found in, into its cluster's
    folder. Files are created exclusively: nothing existing is ever written over."""
    from PIL import Image
    from tqdm.auto import tqdm

    from ..errors import ImageReadError
    from ..images import load_image_file

    by_image: dict[Path, list[int]] = {}
    for i, (image, _) in enumerate(faces):
        by_image.setdefault(image, []).append(i)
    used: dict[str, set[str]] = {}
    for image, rows in tqdm(by_image.items(), desc="crops", unit="img", leave=False):
        try:
            pixels = load_image_file(image)
        except ImageReadError as exc:
            click.echo(f"warning: no crops from {image}: {exc.reason}", err=True)
            continue
        for face_no, i in enumerate(rows, 1):
            top, right, bottom, left = faces[i][1]
            crop = pixels[max(top, 0):max(bottom, top + 1), max(left, 0):max(right, left + 1)]
            folder = output / names[i]
            folder.mkdir(parents=True, exist_ok=True)
            stem = image.stem if len(rows) == 1 else f"{image.stem}_face{face_no}"
            target = _free_name(folder, stem, used.setdefault(names[i], set()))
            with open(target, "xb") as f:
                Image.fromarray(crop).save(f, format="JPEG", quality=95)


def _free_name(folder: Path, stem: str, used: set[str]) -> Path:
    """``folder/stem.jpg``, or ``stem_2.jpg``, ``stem_3.jpg`` … when taken (two photos with one name)."""
    name, n = f"{stem}.jpg", 1
    while name in used or (folder / name).exists():
        n += 1
        name = f"{stem}_{n}.jpg"
    used.add(name)
    return folder / name
