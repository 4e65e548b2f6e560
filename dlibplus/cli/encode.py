"""``dlibplus encode``: the encodings of every face in some photos, as an .npz."""
from __future__ import annotations

from pathlib import Path

import click

from .options import ENCODER_HELP, face_options, face_settings, user_errors


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .npz of encodings.")
@click.option("--encoder", default="dlib", show_default=True, help=ENCODER_HELP)
@click.option("--jitters", type=click.IntRange(1), default=1, show_default=True, help="Jittered copies per face.")
@face_options
@user_errors
def encode(paths, output, encoder, jitters, detector, upsample, landmarks, face_box, max_side, jobs):
    """Write the encoding of every face in PATHS (files or folders) to an .npz.

    Arrays: encodings (n x 128 float32), paths (n), boxes (n x 4: top, right, bottom, left).
    """
    import numpy as np

    from ..data import image_paths, process_images
    from ..fileio import atomic_path
    from ..people import resolve_encoder

    files = image_paths(paths)
    if not files:
        raise click.UsageError("no image files found in the given paths")
    enc, _ = resolve_encoder(encoder)
    results = process_images(files, face_settings(detector, upsample, landmarks, face_box, max_side), encoder=enc,
                             num_jitters=jitters, jobs=jobs)
    encs, names, boxes = [], [], []
    for r in results:
        if r.error is not None:
            click.echo(f"warning: skipped {r.path}: {r.error}", err=True)
            continue
        if not r.n_faces:
            click.echo(f"warning: no face in {r.path}", err=True)
        encs.append(r.encodings)
        names += [str(r.path)] * r.n_faces
        boxes.append(r.boxes)
    encodings = np.concatenate(encs).astype(np.float32) if encs else np.zeros((0, 128), np.float32)
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, encodings=encodings, paths=np.array(names, dtype=str),
                     boxes=np.concatenate(boxes).astype(np.int32) if boxes else np.zeros((0, 4), np.int32))
    click.echo(f"{len(names)} faces from {len(files)} images written to {output}", err=True)
