"""The ``dlibplus`` command: train-knn, predict, encode, finetune, evaluate.

Each command parses its options, calls the library, and prints: data on stdout, progress and
warnings on stderr. Errors a user can cause exit with status 1 and one clear line; bad usage
(an empty or missing folder included) exits with status 2.
"""
from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import DataFolderError, DlibplusError
from .train_config import HEAD_NAMES as _TRAIN_HEADS
from .train_config import FinetuneConfig as _FT


def _face_options(f):
    """Options that decide how faces are found and aligned (shared by every command that scans)."""
    options = [
        click.option("--detector", type=click.Choice(["hog", "cnn"]), default="hog", show_default=True,
                     help="Face detector: hog (fast on CPU) or cnn (dlib's MMOD, more accurate, slow on CPU)."),
        click.option("--upsample", type=click.IntRange(0, 4), default=1, show_default=True,
                     help="Times to upsample each image before detection (finds smaller faces)."),
        click.option("--landmarks", type=click.Choice(["small", "large"]), default="small", show_default=True,
                     help="Landmark model for alignment: small (5 points, face_recognition's default) or large (68)."),
        click.option("--face-box", type=click.Choice(["detect", "whole"]), default="detect", show_default=True,
                     help="'whole' uses the whole image as the face box: for folders of tight face crops."),
        click.option("--max-side", type=click.IntRange(0), default=0, show_default=True,
                     help="Shrink images longer than this many pixels before detection (0: never)."),
        click.option("--jobs", "-j", type=click.IntRange(0), default=0,
                     help="Worker processes for detection and encoding (default: all cores)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _settings(detector, upsample, landmarks, face_box, max_side):
    from .data import FaceSettings

    return FaceSettings(detector=detector, upsample=upsample, landmarks=landmarks, face_box=face_box,
                        max_side=max_side)


def _user_errors(f):
    """Turn dlibplus's own errors into click's: one line, exit 1 (2 for an unusable folder)."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except DataFolderError as exc:
            raise click.UsageError(str(exc)) from None
        except DlibplusError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


ENCODER_HELP = "Encoder: dlib (face_recognition's), torch (the exact PyTorch replica), a .dat file or a " \
               "`dlibplus finetune` output folder; append +flip (e.g. dlib+flip) to average each face with " \
               "its mirror image (test-time flip: better accuracy, twice the encoding time)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlibplus")
def main():
    """face_recognition's tools on dlib, and a dlib face model you can retrain on your own people."""


# --- train-knn ---------------------------------------------------------------------------------------

@main.command("train-knn")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Model file to write (.npz).")
@click.option("--n-neighbors", default="auto", show_default=True,
              help="k: 'auto' (leave-one-out choice), 'sqrt' (the example's round(sqrt(n))) or a number.")
@click.option("--algorithm", type=click.Choice(["ball_tree", "kd_tree", "brute", "auto"]), default="ball_tree",
              show_default=True, help="scikit-learn neighbour search.")
@click.option("--threshold", type=float, default=0.6, show_default=True,
              help="Distance beyond which a face is 'unknown' (stored in the model).")
@click.option("--jitters", type=click.IntRange(1), default=1, show_default=True,
              help="Jittered copies averaged per face (1 = none; 100 is 100x slower).")
@click.option("--encoder", default="dlib", show_default=True, help=ENCODER_HELP)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write what was used and skipped, per person, as JSON.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the encoding cache.")
@_face_options
@_user_errors
def train_knn(folder, output, n_neighbors, algorithm, threshold, jitters, encoder, report, no_cache,
              detector, upsample, landmarks, face_box, max_side, jobs):
    """Train a k-NN face classifier on FOLDER/<person>/<image>.

    Images with no face or several faces are skipped and listed at the end.
    """
    from .fileio import write_json
    from .knn import FaceKNN
    from .people import load_people

    if n_neighbors not in ("auto", "sqrt"):
        try:
            n_neighbors = int(n_neighbors)
        except ValueError:
            raise click.BadParameter("must be 'auto', 'sqrt' or a whole number", param_hint="--n-neighbors")
    people = load_people(folder, settings=_settings(detector, upsample, landmarks, face_box, max_side),
                         encoder=encoder, num_jitters=jitters, jobs=jobs, use_cache=not no_cache)
    for line in people.report_lines():
        click.echo(line, err=True)
    if report:
        write_json(report, people.report())
    model = FaceKNN(n_neighbors, algorithm, threshold).fit(people.encodings, people.labels, people.metadata())
    model.save(output)
    click.echo(f"trained on {len(people.labels)} faces of {len(model.classes_)} people, k={model.k_} "
               f"({model.n_neighbors}); model written to {output}", err=True)


# --- predict --------------------------------------------------------------------------------------------

FIELDS = ("path", "name", "top", "right", "bottom", "left", "distance")


@main.command()
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
@_user_errors
def predict(model, paths, threshold, as_json, annotate, encoder, classifier, jobs):
    """Name the faces in PATHS (image files or folders) with a model from train-knn (or finetune).

    One line per face: path,name,top,right,bottom,left,distance. "unknown" beyond the threshold,
    "no_persons_found" for an image without faces.
    """
    from .data import image_paths
    from .knn import FaceKNN, predict_images

    if classifier == "head":
        from .head_classifier import HeadClassifier

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
        from .annotate import annotate_image

        for path, preds, error in results:
            if error is None:
                out = annotate_image(path, preds, annotate)
                click.echo(f"annotated {out}", err=True)


# --- encode -------------------------------------------------------------------------------------------

@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .npz of encodings.")
@click.option("--encoder", default="dlib", show_default=True, help=ENCODER_HELP)
@click.option("--jitters", type=click.IntRange(1), default=1, show_default=True, help="Jittered copies per face.")
@_face_options
@_user_errors
def encode(paths, output, encoder, jitters, detector, upsample, landmarks, face_box, max_side, jobs):
    """Write the encoding of every face in PATHS (files or folders) to an .npz.

    Arrays: encodings (n x 128 float32), paths (n), boxes (n x 4: top, right, bottom, left).
    """
    import numpy as np

    from .data import image_paths, process_images
    from .fileio import atomic_path
    from .people import resolve_encoder

    files = image_paths(paths)
    if not files:
        raise click.UsageError("no image files found in the given paths")
    enc, _ = resolve_encoder(encoder)
    results = process_images(files, _settings(detector, upsample, landmarks, face_box, max_side), encoder=enc,
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


# --- evaluate ---------------------------------------------------------------------------------------------

@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--encoder", "encoders", multiple=True, default=("dlib",), show_default=True,
              help=ENCODER_HELP + " Repeat to compare encoders; the first is the baseline.")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write report.md, metrics.json and the PNG charts into.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Share of each person's images used as probes; the rest is the gallery.")
@click.option("--test-folder", type=click.Path(file_okay=False, path_type=Path),
              help="A people folder of probes; FOLDER is then the whole gallery (--test-fraction is ignored).")
@click.option("--holdout-people", type=click.IntRange(0), default=0, show_default=True,
              help="People (chosen by --seed) left out of the gallery: their probes are strangers (open set).")
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False, path_type=Path),
              help="LFW pairs.txt or CSV path1,path2,same (paths relative to the file or FOLDER): "
                   "adds the LFW 10-fold verification protocol.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the split, the held-out people and the bootstrap.")
@click.option("--n-boot", type=click.IntRange(1), default=1000, show_default=True,
              help="Bootstrap draws for the confidence intervals of the differences from the baseline.")
@_face_options
@_user_errors
def evaluate(folder, encoders, report, test_fraction, test_folder, holdout_people, pairs_file, seed, n_boot,
             detector, upsample, landmarks, face_box, max_side, jobs):
    """Compare encoders on FOLDER/<person>/<image>: identification, open set, verification, per person.

    Every encoder is measured on the same images and split; each is compared with the first (dlib by
    default), with bootstrap-over-people confidence intervals. Writes report.md, metrics.json and PNG
    charts into --report.
    """
    from .evaluate import console_table, evaluate_folder, write_report

    result = evaluate_folder(folder, encoders, settings=_settings(detector, upsample, landmarks, face_box, max_side),
                             test_fraction=test_fraction, test_folder=test_folder, holdout_people=holdout_people,
                             pairs_file=pairs_file, seed=seed, jobs=jobs, n_boot=n_boot)
    click.echo(console_table(result))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    files = write_report(result, report)
    click.echo(f"report written to {files['report']} (metrics.json and charts in {report})", err=True)


# --- finetune ------------------------------------------------------------------------------------------

@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the fine-tuned model into (model.dat, model.pt, head.pt, metadata.json).")
@click.option("--head", type=click.Choice(list(_TRAIN_HEADS)),
              default=_FT.head, show_default=True, help="Classification head and margin.")
@click.option("--margin", type=float, default=None,
              help="Head margin: radians for arcface, cosine units for cosface, integer m for sphereface.")
@click.option("--scale", type=float, default=None, help="Head logit scale s (arcface, cosface, combined).")
@click.option("--center-loss", type=float, default=_FT.center_loss, show_default=True, help="Weight of the center loss.")
@click.option("--triplet", type=float, default=_FT.triplet, show_default=True,
              help="Weight of the triplet loss (batch semi-hard mining).")
@click.option("--metric-loss", type=float, default=_FT.metric_loss, show_default=True,
              help="Weight of dlib's own pairwise hinge loss around distance 0.6 (loss_metric).")
@click.option("--epochs", type=click.IntRange(1), default=_FT.epochs, show_default=True)
@click.option("--batch-people", type=click.IntRange(2), default=_FT.people_per_batch, show_default=True, help="P in P x K batches.")
@click.option("--batch-images", type=click.IntRange(1), default=_FT.images_per_person, show_default=True, help="K in P x K batches.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default=_FT.optimizer, show_default=True)
@click.option("--lr", type=float, default=_FT.lr, show_default=True, help="Learning rate of the network.")
@click.option("--head-lr", type=float, default=_FT.head_lr, show_default=True, help="Learning rate of the head.")
@click.option("--weight-decay", type=float, default=_FT.weight_decay, show_default=True)
@click.option("--anchor", type=float, default=_FT.anchor, show_default=True,
              help="Pull towards dlib's weights each step (L2-SP; 0: off). Keeps the model good on people "
                   "it was not trained on; lower it to adapt more to yours.")
@click.option("--warmup-epochs", type=float, default=_FT.warmup_epochs, show_default=True)
@click.option("--grad-clip", type=float, default=_FT.grad_clip, show_default=True, help="Max gradient norm (0: off).")
@click.option("--freeze", type=click.IntRange(0, 7), default=_FT.freeze, show_default=True,
              help="Stages to freeze from the input (stem, layer1..layer5, fc).")
@click.option("--no-augment", is_flag=True, help="Turn off dlib's jitter and colour augmentation.")
@click.option("--val-fraction", type=float, default=_FT.val_fraction, show_default=True,
              help="Share of each person's photos kept for validation.")
@click.option("--val-folder", type=click.Path(file_okay=False, path_type=Path),
              help="Validate on this people folder instead of a split.")
@click.option("--patience", type=click.IntRange(0), default=_FT.patience, show_default=True,
              help="Stop after this many epochs without a better validation accuracy (0: never).")
@click.option("--seed", type=int, default=_FT.seed, show_default=True)
@click.option("--device", default=_FT.device, show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-amp", is_flag=True, help="No mixed precision on CUDA.")
@click.option("--target-far", type=float, default=_FT.target_far, show_default=True,
              help="False-accept rate at which distance 0.6 is calibrated.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint.pt.")
@_face_options
@_user_errors
def finetune(folder, output, head, margin, scale, center_loss, triplet, metric_loss, epochs, batch_people, batch_images,
             optimizer, lr, head_lr, weight_decay, anchor, warmup_epochs, grad_clip, freeze, no_augment, val_fraction,
             val_folder, patience, seed, device, no_amp, target_far, resume,
             detector, upsample, landmarks, face_box, max_side, jobs):
    """Fine-tune dlib's face network on FOLDER/<person>/<image> and write it to OUTPUT.

    Afterwards use it anywhere with --encoder OUTPUT (train-knn, predict, encode, evaluate) or
    dlibplus.load_encoder(OUTPUT); OUTPUT/model.dat also loads in dlib and face_recognition.
    Under torchrun it trains on several GPUs (DDP).
    """
    from . import train as tr
    from .data import split_per_person

    head_options = {k: v for k, v in (("margin", margin), ("scale", scale)) if v is not None}
    if head == "sphereface" and "margin" in head_options:
        head_options["margin"] = int(head_options["margin"])
    try:
        config = tr.FinetuneConfig(head=head, head_options=head_options, center_loss=center_loss, triplet=triplet,
                                   metric_loss=metric_loss,
                                   epochs=epochs, people_per_batch=batch_people, images_per_person=batch_images,
                                   optimizer=optimizer, lr=lr, head_lr=head_lr, weight_decay=weight_decay, anchor=anchor,
                                   warmup_epochs=warmup_epochs, grad_clip=grad_clip, freeze=freeze,
                                   augment=not no_augment, val_fraction=val_fraction, patience=patience,
                                   seed=seed, device=device, amp=not no_amp, target_far=target_far)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings(detector, upsample, landmarks, face_box, max_side)
    dist_info = tr.init_distributed(device)  # under torchrun: rank 0 aligns and caches, the others read
    is_main = dist_info.main
    with tr.main_process_first(dist_info):
        data, people = tr.load_chipset(folder, settings, jobs=jobs, progress=is_main)
        val_data = tr.load_chipset(val_folder, settings, jobs=jobs, progress=is_main)[0] if val_folder else None
    if is_main:
        for line in people.report_lines():
            click.echo(line, err=True)
    if val_data is not None:
        train_set, dropped = tr.drop_small_classes(data, 1)
        val_set, unknown = tr.restrict_to_classes(val_data, train_set.classes)
        for name in unknown:
            click.echo(f"warning: validation person {name} is not in the training folder and is left out", err=True)
    else:
        data, dropped = tr.drop_small_classes(data, 2)
        train_idx, val_idx = split_per_person(data.labels, val_fraction, seed)
        train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    for name in dropped:
        click.echo(f"warning: {name} has fewer than 2 usable photos and is left out", err=True)
    try:
        result = tr.finetune(train_set, val_set, output, config, resume=resume,
                             echo=lambda m: click.echo(m, err=True),
                             extra_metadata={"face_settings": settings.to_dict(), "trained_on": str(folder)})
    except KeyboardInterrupt:
        sys.exit(130)
    if is_main:
        for line in tr.summary_lines(result, target_far):
            click.echo(line, err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
