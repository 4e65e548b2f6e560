"""``dlibplus encode``: the encodings of every face in some photos, as an .npz (or Parquet shards)."""
from __future__ import annotations

from pathlib import Path

import click

from .options import BadInput, ENCODER_HELP, face_options, face_settings, ray_option, user_errors


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the .npz of encodings (required unless --parquet).")
@click.option("--parquet", type=click.Path(file_okay=False, path_type=Path),
              help="Write Parquet shards (path, image, box, encoding per face) into this folder instead of one "
                   ".npz: for large jobs; a re-run skips the shards already written (resumes).")
@click.option("--shard-size", type=click.IntRange(1), default=10_000, show_default=True,
              help="Images per Parquet shard.")
@ray_option
@click.option("--encoder", default="dlib", show_default=True, help=ENCODER_HELP)
@click.option("--jitters", type=click.IntRange(1), default=1, show_default=True, help="Jittered copies per face.")
@click.option("--precision", type=click.Choice(["exact", "fast"]), default="exact", show_default=True,
              help="For a torch encoder: exact (float32, within 1e-5 of dlib on any device) or fast (float16 on "
                   "CUDA, bfloat16 on CPU: descriptors move by ~3e-3; see README).")
@click.option("--detect-on", type=click.Choice(["auto", "main", "workers"]), default="auto", show_default=True,
              help="Where --detector cnn runs: main (this process, many photos per batch, on the GPU when there is "
                   "one, while the workers read photos and align faces), workers (each worker, one photo at a time, "
                   "on the CPU), auto (main when there is a GPU). Same results either way.")
@face_options
@user_errors
def encode(paths, output, parquet, shard_size, ray_address, encoder, jitters, precision, detect_on, detector, upsample,
           landmarks, face_box, max_side, jobs):
    """Write the encoding of every face in PATHS (files or folders) to an .npz.

    Arrays: encodings (n x 128 float32), paths (n), boxes (n x 4: top, right, bottom, left), and the
    inputs that could not be read with why (failed_paths, failed_reasons). Exit status 1 when any input
    could not be read; nothing is written when none could.

    """
    from ..data import image_paths
    from ..optional import MissingDependencyError

    if (output is None) == (parquet is None):
        raise click.UsageError("give --output FILE.npz or --parquet DIR (one of them)")
    if precision != "exact" and (encoder.split("+")[0] == "dlib" or ray_address is not None or parquet is not None):
        raise click.BadParameter("fast needs a torch encoder (--encoder torch or a fine-tuned folder) and "
                                 "the in-process .npz output", param_hint="--precision")
    _check_detect_on(detect_on, detector, face_box, ray_address, parquet)
    files = image_paths(paths)
    if not files:
        raise click.UsageError("no image files found in the given paths")
    settings = face_settings(detector, upsample, landmarks, face_box, max_side)
    try:
        if parquet is not None:
            _encode_parquet(files, parquet, settings, encoder, jitters, shard_size, ray_address, jobs)
        else:
            _encode_npz(files, output, settings, encoder, jitters, ray_address, jobs, precision,
                        {"auto": None, "main": True, "workers": False}[detect_on])
    except MissingDependencyError as exc:
        raise BadInput(str(exc)) from None


def _check_detect_on(detect_on, detector, face_box, ray_address, parquet) -> None:
    """``--detect-on main|workers`` is a choice for the CNN detector in the in-process .npz output only."""
    if detect_on == "auto":
        return
    if detector != "cnn" or face_box != "detect":
        raise click.BadParameter(f"{detect_on} is a choice for --detector cnn (with --face-box detect) only",
                                 param_hint="--detect-on")
    if ray_address is not None or parquet is not None:
        raise click.BadParameter(f"{detect_on} is a choice for the in-process .npz output (not --ray or --parquet)",
                                 param_hint="--detect-on")


def _encode_npz(files, output, settings, encoder, jitters, ray_address, jobs, precision="exact",
                detect_in_parent=None) -> None:
    import numpy as np

    from ..fileio import atomic_path

    if ray_address is not None:
        from ..ray_encode import ray_process_images, require_ray

        require_ray()
        results = ray_process_images(files, settings, encoder=encoder, num_jitters=jitters,
                                     address=None if ray_address == "local" else ray_address, num_cpus=jobs or None)
    else:
        from ..data import process_images
        from ..encoders import resolve_encoder

        options = {"precision": precision} if precision != "exact" else {}
        results = process_images(files, settings, encoder=resolve_encoder(encoder, **options)[0],
                                 num_jitters=jitters, jobs=jobs, detect_in_parent=detect_in_parent)
    encs, names, boxes, failed, reasons = [], [], [], [], []
    for r in results:
        if r.error is not None:
            click.echo(f"warning: skipped {r.path}: {r.error}", err=True)
            failed.append(str(r.path))
            reasons.append(r.error)
            continue
        if not r.n_faces:
            click.echo(f"warning: no face in {r.path}", err=True)
        encs.append(r.encodings)
        names += [str(r.path)] * r.n_faces
        boxes.append(r.boxes)
    if len(failed) == len(files):
        raise click.ClickException(f"none of the {len(files)} inputs could be read; {output} was not written")
    encodings = np.concatenate(encs).astype(np.float32) if encs else np.zeros((0, 128), np.float32)
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, encodings=encodings, paths=np.array(names, dtype=str),
                     boxes=np.concatenate(boxes).astype(np.int32) if boxes else np.zeros((0, 4), np.int32),
                     failed_paths=np.array(failed, dtype=str), failed_reasons=np.array(reasons, dtype=str))
    click.echo(f"{len(names)} faces from {len(files)} images written to {output}", err=True)
    _fail_if_skipped(len(failed), len(files))


def _encode_parquet(files, folder, settings, encoder, jitters, shard_size, ray_address, jobs) -> None:
    from ..ray_encode import encode_to_parquet

    options = {} if ray_address is not None else {"jobs": jobs}
    result = encode_to_parquet(files, folder, settings, encoder=encoder, num_jitters=jitters, shard_size=shard_size,
                               use_ray=ray_address is not None,
                               address=None if ray_address in (None, "local") else ray_address,
                               num_cpus=jobs or None, **options)
    for path, error in result.failures:
        click.echo(f"warning: skipped {path}: {error}", err=True)
    if result.failures and len(result.failures) == len(files):
        raise click.ClickException(f"none of the {len(files)} inputs could be read")
    for path in result.no_face:
        click.echo(f"warning: no face in {path}", err=True)
    shards = f"{len(result.shards)} shard{'' if len(result.shards) == 1 else 's'}"
    click.echo(f"{result.n_faces} faces from {len(files)} images in {shards} in {folder} "
               f"({result.written} written, {result.skipped} already there)", err=True)
    _fail_if_skipped(len(result.failures), len(files))


def _fail_if_skipped(n_failed: int, n_files: int) -> None:
    """Exit status 1 when some inputs could not be read (listed above, and in the output's failed_paths)."""
    if n_failed:
        raise click.ClickException(f"{n_failed} of {n_files} inputs could not be read (the rest was written)")
