"""``dlibplus predict``: name the faces in photos with a train-knn model or a fine-tuned head."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import click

from .options import BadInput, check_output_folder, jobs_option, user_errors

FIELDS = ("path", "name", "top", "right", "bottom", "left", "distance", "error")
VIDEO_FIELDS = ("frame", "time")  # appended when videos are among the inputs
NO_FACE = "no_persons_found"  # the example's name for an image without faces
UNREADABLE = "error"  # the name column of an input that could not be read


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threshold", type=click.FloatRange(0), default=None,
              help="Distance beyond which a face is 'unknown' (default: the model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of rows instead of CSV.")
@click.option("--annotate", type=click.Path(file_okay=False, path_type=Path),
              help="Write copies of the images with boxes and names drawn into this folder (never over an "
                   "input; sub-folders mirror the inputs').")
@click.option("--encoder", default=None, metavar="PATH",
              help="The model's own encoder (fine-tuned folder or .dat) when it was moved apart from the model "
                   "file; it must be the very network the model was trained with (checked).")
@click.option("--classifier", type=click.Choice(["knn", "head"]), default="knn", show_default=True,
              help="knn: MODEL is a train-knn model folder. head: MODEL is a `dlibplus finetune` folder, whose own "
                   "head names the faces (distance = 1 - cosine; strangers rejected at its calibrated threshold).")
@click.option("--detector", type=click.Choice(["hog", "cnn"]), default=None,
              help="Override the model's face detector (hog: fast on CPU; cnn: dlib's MMOD, slow on CPU).")
@click.option("--upsample", type=click.IntRange(0, 4), default=None,
              help="Override the model's upsampling before detection (higher finds smaller faces).")
@click.option("--face-box", type=click.Choice(["detect", "whole"]), default=None,
              help="Override the model's face box: 'detect' to find faces in ordinary photos with a model "
                   "trained on tight crops, 'whole' to take each image as one face.")
@click.option("--max-side", type=click.IntRange(0), default=None,
              help="Override the model's --max-side: shrink longer images before detection (0: never).")
@click.option("--every", type=click.IntRange(1), default=1, show_default=True,
              help="For video files: name the faces of one frame in every N.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the encoding cache.")
@jobs_option()
@user_errors
def predict(model, paths, threshold, as_json, annotate, encoder, classifier, detector, upsample, face_box,
            max_side, every, no_cache, jobs):
    """Name the faces in PATHS (image files or folders) with a model from train-knn (or finetune).

    CSV with a header row: path,name,top,right,bottom,left,distance,error. One row per face; "unknown"
    beyond the threshold, "no_persons_found" for an image without faces, "error" (with the reason) for
    an input that could not be read. Rows are written as each image is done. Exit status 1 when any
    input could not be read.

    Video files given as PATHS (mp4, avi, mov, mkv, ...) get one row per face per sampled frame (--every),
    with two more columns: frame (0-based) and time (seconds); --annotate writes an annotated video.
    """
    from ..predict import predict_images
    from ..video import is_video_file

    clf = _load_classifier(model, classifier)
    recipe = _recipe(clf, model, encoder, detector=detector, upsample=upsample, face_box=face_box,
                     max_side=max_side)
    files = _inputs(paths)
    if annotate is not None:  # an earlier run's annotated copies are not inputs
        from ..annotate import earlier_copies

        copies = earlier_copies(annotate)
        files = [f for f in files if Path(os.path.abspath(f)) not in copies]
    if not files:
        raise click.UsageError("no image files found in the given paths")
    videos = [f for f in files if is_video_file(f)]
    images = [f for f in files if not is_video_file(f)]
    plan = None
    if annotate is not None:
        from ..annotate import AnnotationPlan

        check_output_folder(annotate, "--annotate")
        plan = AnnotationPlan(files, annotate)
    n_failed = 0
    writer = _RowWriter(as_json, FIELDS + (VIDEO_FIELDS if videos else ()))
    try:
        if images:
            for result in predict_images(images, clf, threshold=threshold, recipe=recipe, jobs=jobs,
                                         use_cache=not no_cache):
                if result.error is not None:
                    n_failed += 1
                    click.echo(f"warning: skipped {result.path}: {result.error}", err=True)
                writer.image(result)
                if plan is not None and result.error is None:
                    plan.write(result.path, result.faces)
        for video in videos:
            n_failed += not _predict_video(video, clf, writer, threshold=threshold, recipe=recipe, every=every,
                                           plan=plan)
    finally:
        writer.close()
    if n_failed:
        raise click.ClickException(f"{n_failed} of {len(files)} inputs could not be read (rows with name "
                                   f"'{UNREADABLE}')")


def _predict_video(path: Path, clf, writer: "_RowWriter", *, threshold, recipe, every: int, plan) -> bool:
    """Rows for every face of every sampled frame of one video; False (and an error row) when it cannot
    be read."""
    from ..video import VideoError, predict_video

    target = plan.target(path) if plan is not None else None
    try:
        for face in predict_video(path, clf, every=every, threshold=threshold, recipe=recipe, annotate_to=target):
            writer.row(face.to_dict())
    except VideoError as exc:
        click.echo(f"warning: skipped {path}: {exc.reason}", err=True)
        writer.row({"path": str(path), "name": UNREADABLE, "error": exc.reason})
        return False
    if plan is not None:
        plan.record(path)
        click.echo(f"annotated video written to {target}", err=True)
    return True


def _inputs(paths) -> list[Path]:
    """The image files of ``paths``; a folder without any is pointed out (a typo, or the wrong folder)."""
    from ..data import image_paths

    files: list[Path] = []
    for path in paths:
        found = image_paths([path])
        if path.is_dir() and not found:
            click.echo(f"warning: no image file in {path}", err=True)
        files += found
    return files


def _load_classifier(model: Path, classifier: str):
    if classifier == "head":
        from ..head_classifier import HeadClassifier

        return HeadClassifier.load(model)
    from ..knn import FaceKNN

    return FaceKNN.load(model)


def _recipe(clf, model: Path, encoder: str | None, **face_overrides):
    """The classifier's recipe with the user's overrides; a different encoder is refused, and a
    tight-crop model used on ordinary photos is pointed out."""
    import dataclasses

    from ..encoders import encoder_sha256, resolve_encoder, split_flip

    recipe = clf.recipe
    if encoder is not None:
        resolved = resolve_encoder(encoder)[1]
        same_weights = encoder_sha256(resolved) == encoder_sha256(recipe.encoder)
        if not same_weights or split_flip(resolved)[1] != split_flip(recipe.encoder)[1]:
            raise BadInput(f"--encoder {encoder}: {model} was trained with encoder {recipe.encoder}, whose "
                           "encodings differ; distances would be meaningless (retrain with train-knn --encoder)")
        recipe = recipe.with_encoder(resolved)
    overrides = {k: v for k, v in face_overrides.items() if v is not None}
    if overrides:
        recipe = recipe.with_face_settings(dataclasses.replace(recipe.face_settings, **overrides))
    if recipe.face_settings.face_box == "whole" and "face_box" not in overrides:
        click.echo(f"note: {model} was trained on tight face crops (--face-box whole): each image is taken as "
                   "one face. For ordinary photos pass --face-box detect.", err=True)
    return recipe


class _RowWriter:
    """CSV (header first) or a JSON list on stdout, flushed per image so results stream."""

    def __init__(self, as_json: bool, fields: tuple[str, ...] = FIELDS):
        self.csv = None if as_json else csv.DictWriter(sys.stdout, fields, lineterminator="\n",
                                                       extrasaction="ignore")
        self.n_rows = 0
        if self.csv is not None:
            self.csv.writeheader()
        else:
            sys.stdout.write("[")

    def close(self) -> None:
        if self.csv is None:
            sys.stdout.write("\n]\n" if self.n_rows else "]\n")
        sys.stdout.flush()

    def image(self, result) -> None:
        path = str(result.path)
        if result.error is not None:
            rows = [{"path": path, "name": UNREADABLE, "error": result.error}]
        elif not result.faces:
            rows = [{"path": path, "name": NO_FACE}]
        else:
            rows = [{"path": path, "name": p.name, "top": p.box[0], "right": p.box[1], "bottom": p.box[2],
                     "left": p.box[3], "distance": round(p.distance, 6)} for p in result.faces]
        for row in rows:
            self.row(row, flush=False)
        sys.stdout.flush()

    def row(self, row: dict, flush: bool = True) -> None:
        if self.csv is not None:
            self.csv.writerow(row)
        else:
            sys.stdout.write(("," if self.n_rows else "") + "\n  " + json.dumps(row))
        self.n_rows += 1
        if flush:
            sys.stdout.flush()
