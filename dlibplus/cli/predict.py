"""``dlibplus predict``: name the faces in photos with a train-knn model or a fine-tuned head."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from .options import user_errors


FIELDS = ("path", "name", "top", "right", "bottom", "left", "distance")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threshold", type=float, default=None,
              help="Distance beyond which a face is 'unknown' [default: the model's, 0.6].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of CSV lines.")
@click.option("--annotate", type=click.Path(file_okay=False, path_type=Path),
              help="Write copies of the images with boxes and names drawn into this folder.")
@click.option("--encoder", default=None, help="Override the encoder recorded in the model (must match training).")
@click.option("--classifier", type=click.Choice(["knn", "head"]), default="knn", show_default=True,
              help="knn: MODEL is a train-knn .npz. head: MODEL is a `dlibplus finetune` folder, whose own "
                   "head names the faces (distance = 1 - cosine; strangers rejected at its calibrated threshold).")
@click.option("--jobs", "-j", type=click.IntRange(0), default=0, help="Worker processes (default: all cores).")
@user_errors
def predict(model, paths, threshold, as_json, annotate, encoder, classifier, jobs):
    """Name the faces in PATHS (image files or folders) with a model from train-knn (or finetune).

    One line per face: path,name,top,right,bottom,left,distance. "unknown" beyond the threshold,
    "no_persons_found" for an image without faces.
    """
    from ..data import image_paths
    from ..knn import FaceKNN, predict_images

    if classifier == "head":
        from ..head_classifier import HeadClassifier

        knn = HeadClassifier.load(model)
    else:
        knn = FaceKNN.load(model)
    files = image_paths(paths)
    if not files:
        raise click.UsageError("no image files found in the given paths")
    results = predict_images(files, knn, threshold=threshold, encoder=encoder, jobs=jobs)
    rows = []
    for path, preds, error in results:
        if error is not None:
            click.echo(f"warning: skipped {path}: {error}", err=True)
            rows.append({"path": str(path), "error": error})
        elif not preds:
            rows.append({"path": str(path), "name": "no_persons_found"})
        for p in preds:
            top, right, bottom, left = p.box
            rows.append({"path": str(path), "name": p.name, "top": top, "right": right, "bottom": bottom,
                         "left": left, "distance": round(p.distance, 6)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        for row in rows:
            if "error" not in row:
                writer.writerow([row.get(f, "") for f in FIELDS])
    if annotate:
        from ..annotate import annotate_image

        for path, preds, error in results:
            if error is None:
                out = annotate_image(path, preds, annotate)
                click.echo(f"annotated {out}", err=True)
