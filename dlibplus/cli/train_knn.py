"""``dlibplus train-knn``: encode a people folder and fit a k-NN."""
from __future__ import annotations

from pathlib import Path

import click

from .options import (ENCODER_HELP, BadInput, check_output_file, face_options, face_settings, multiple_faces_option,
                      ray_option, user_errors)

@click.command("train-knn")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Model folder to write (replaced if it holds a train-knn model; with --add, extended).")
@click.option("--add", is_flag=True,
              help="Add FOLDER's people and photos to the model at --output: nothing in it is encoded again, "
                   "photos already in it (same content) are skipped, and its encoder, face settings, k rule, "
                   "method and threshold are kept.")
@click.option("--n-neighbors", default="auto", show_default=True, metavar="K|auto|sqrt",
              help="k: 'auto' (leave-one-out choice), 'sqrt' (the example's round(sqrt(n))) or a whole number >= 1.")
@click.option("--algorithm", type=click.Choice(["auto", "exact", "hnsw", "ivf", "ball_tree", "kd_tree", "brute"]),
              default="auto", show_default=True,
              help="Neighbour search: exact up to 100,000 faces, then HNSW (auto); exact (scikit-learn's "
                   "ball_tree, kd_tree and brute mean exact too: the same neighbours); hnsw or ivf "
                   "(approximate, faiss; the recall measured at build is printed).")
@click.option("--method", type=click.Choice(["auto", "knn", "prototype", "svm"]), default="auto", show_default=True,
              help="Who a face is: knn (the example's vote of the k nearest photos), prototype (the nearest "
                   "person's mean encoding), svm (a linear SVM), or auto: prototype when leave-one-out over "
                   "the training photos says it names as many rightly as knn, else knn. 'unknown' is always "
                   "decided on the distance to the nearest photo of the predicted person (README).")
@click.option("--threshold", type=click.FloatRange(0), default=0.6, show_default=True,
              help="Distance beyond which a face is 'unknown' (stored in the model).")
@click.option("--jitters", type=click.IntRange(1), default=1, show_default=True,
              help="Jittered copies averaged per face, here and in predict (1 = none; N is N times slower; 10 named "
                   "more faces on the labelled sets with few photos a person, see README). The jittered encodings "
                   "are scaled so that the threshold lets as many different people through as without jitter.")
@click.option("--encoder", default="dlib", show_default=True, help=ENCODER_HELP)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write what was used and skipped, per person, as JSON.")
@ray_option
@click.option("--no-cache", is_flag=True, help="Do not read or write the encoding cache.")
@multiple_faces_option()
@face_options
@user_errors
def train_knn(folder, output, add, n_neighbors, algorithm, method, threshold, jitters, encoder, report,
              ray_address, no_cache, multiple_faces, detector, upsample, landmarks, face_box, max_side, jobs):
    """Train a k-NN face classifier on FOLDER/<person>/<image>.

    Images with no face or several faces are skipped and listed at the end (--multiple-faces largest keeps a
    clearly largest face).
    """
    from ..fileio import write_json
    from ..knn import FaceKNN
    from ..people import counted, load_people, scale_jitter

    n_neighbors = _n_neighbors(n_neighbors)
    _check_outputs(output, report, add)
    settings = face_settings(detector, upsample, landmarks, face_box, max_side)
    base = None
    if add:
        base = FaceKNN.load(output)
        _check_same_settings(base, settings, encoder, n_neighbors=n_neighbors, algorithm=algorithm, method=method,
                             threshold=threshold, jitters=jitters)
        settings, encoder, jitters = base.recipe.face_settings, base.recipe.encoder, base.recipe.num_jitters
    people = load_people(folder, settings=settings, encoder=encoder, num_jitters=jitters, jobs=jobs,
                         use_cache=not no_cache, ray_address=ray_address, multiple_faces=multiple_faces,
                         skip_sources=set(base.sources_.tolist()) if base is not None and base.sources_ is not None
                         else None)
    for line in people.report_lines():
        click.echo(line, err=True)
    if report:
        write_json(report, people.report())
    if base is not None:
        _add(base, scale_jitter(people, base.recipe.jitter_scale), output)
        return
    if method == "svm" and len(set(people.labels.tolist())) < 2:
        raise BadInput(f"--method svm needs at least 2 people with a usable photo; {folder} has 1 "
                       "(--method knn or prototype work with one)")
    # jittered encodings sit closer together: scaled so that 0.6 lets as many strangers through as without
    people = scale_jitter(people, jobs=jobs, use_cache=not no_cache)
    model = FaceKNN(n_neighbors, algorithm, threshold, people.recipe, method).fit(
        people.encodings, people.labels, sources=people.sources)
    model.save(output, info=people.info())
    click.echo(f"trained on {counted(len(people.labels), 'face')} of {counted(len(model.classes_), 'person')}, "
               f"{_method_line(model)}; {_search_line(model)}; model written to {output}", err=True)
    if people.num_jitters > 1:
        click.echo(f"jitter {people.num_jitters}: encodings scaled by {people.jitter_scale:.3f}, measured on a sample "
                   "of these photos, so the threshold lets as many different people through as without jitter",
                   err=True)
    tip = _jitter_tip(model, jitters)
    if tip:
        click.echo(tip, err=True)


def _n_neighbors(value: str) -> int | str:
    if value in ("auto", "sqrt"):
        return value
    try:
        k = int(value)
    except ValueError:
        raise click.BadParameter("must be 'auto', 'sqrt' or a whole number", param_hint="--n-neighbors")
    if k < 1:
        raise click.BadParameter("must be at least 1", param_hint="--n-neighbors")
    return k


def _add(model, people, output: Path) -> None:
    """Append ``people`` to ``model`` and write it back to ``output``; say what changed."""
    from ..people import counted

    if people.n_already_known:
        click.echo(f"{counted(people.n_already_known, 'photo')} already in the model (same content): skipped",
                   err=True)
    if not len(people.labels):
        click.echo(f"nothing new to add; {output} is unchanged", err=True)
        return
    before = set(model.classes_.tolist())
    model.add(people.encodings, people.labels, sources=people.sources)
    new_people = len(set(people.labels.tolist()) - before)
    info = dict(model.info_)
    info.update(n_images=int(len(model.labels_)), n_people=int(len(model.classes_)),
                added_from=[*info.get("added_from", []), str(people.folder)])
    model.save(output, info=info)
    click.echo(f"added {counted(len(people.labels), 'face')} ({counted(new_people, 'new person')}); the model now "
               f"holds {counted(len(model.labels_), 'face')} of {counted(len(model.classes_), 'person')}, "
               f"{_method_line(model)}; {_search_line(model)}; written to {output}", err=True)


def _jitter_tip(model, jitters: int) -> str | None:
    """A line suggesting ``--jitters 10`` when the model's network was measured to name more with it (dlib's own,
    or a ``finetune`` folder's; not ``+flip``, not a bare ``.dat``), no jitter was asked for, and its median
    person has at most :data:`~dlibplus.encoders.FEW_PHOTOS_FOR_JITTER` photos; ``None`` otherwise."""
    import numpy as np

    from ..encoders import FEW_PHOTOS_FOR_JITTER

    median = float(np.median(np.unique(np.asarray(model.labels_), return_counts=True)[1]))
    network = _network_kind(model.recipe.encoder)
    if jitters > 1 or median > FEW_PHOTOS_FOR_JITTER or network is None:
        return None
    # BENCHMARKS.md, the jitter scale: 26 suite splits at 2 and 4 photos a person, jitter scaled as train-knn does
    if network == "dlib":
        gain = ("named 1.8 points more faces at 2 photos a person and 1.1 at 4 on the labelled sets (README); it "
                "encodes 10x slower here and in predict, 1.7x dlib's plain time with --encoder torch (dlib's network "
                "in PyTorch, the same encodings)")
    else:  # the 15 of those splits where finetune kept a fine-tuned or interpolated network
        gain = ("named 0.5 point more faces with fine-tuned networks at 2-4 photos a person on the labelled sets, "
                "never fewer (README); it encodes about 7x slower here and in predict")
    return (f"tip: your median person has {median:g} photos; with so few, --jitters 10 (each face the mean of 10 "
            f"jittered copies) {gain}")


def _network_kind(encoder: str) -> str | None:
    """``"dlib"`` for dlib's own network (``dlib``, ``torch``, or a ``finetune`` folder that kept it),
    ``"fine-tuned"`` for another ``finetune`` folder, ``None`` for anything else (``+flip``, a ``.dat`` file)."""
    from .. import model_folder
    from ..encoders import split_flip
    from ..errors import ModelFileError

    if encoder in ("dlib", "torch"):
        return "dlib"
    base, flip = split_flip(encoder)
    if flip or not model_folder.is_model_folder(base):
        return None
    try:
        return "dlib" if model_folder.read_metadata(base).holds_dlib else "fine-tuned"
    except ModelFileError:
        return None


def _method_line(model) -> str:
    """Who names a face: the method (and why, under auto) and k."""
    k = f"k={model.k_} ({model.n_neighbors})"
    if model.method != "auto":
        return f"method {model.method_}, {k}"
    scores = model.method_scores_
    return (f"method {model.method_} (auto; leave-one-out: prototype {scores['prototype']:.3f}, knn "
            f"{scores['knn']:.3f}), {k}")


def _search_line(model) -> str:
    """How the model searches: exact, or the approximate index and its recall measured at build."""
    info = model.index_.info
    if info["kind"] == "exact":
        return "exact search"
    return (f"{info['kind']} search, recall@1 {info['recall_at_1']:.3f} against exact on "
            f"{info.get('recall_queries', '?')} faces")


def _check_same_settings(model, settings, encoder: str, **options) -> None:
    """With --add, an option given on the command line must agree with the model's own setting."""
    ctx = click.get_current_context()
    recipe = model.recipe
    stored = {"n_neighbors": model.n_neighbors, "algorithm": model.algorithm, "method": model.method,
              "threshold": model.threshold, "jitters": recipe.num_jitters, **recipe.face_settings.to_dict()}
    for name, value in {**options, **settings.to_dict()}.items():
        if _from_command_line(ctx, name) and value != stored[name]:
            raise BadInput(f"--add keeps the model's settings: --{name.replace('_', '-')} {value} differs from "
                           f"the model's {stored[name]}")
    if _from_command_line(ctx, "encoder") and not _same_encoder(encoder, recipe.encoder):
        raise BadInput(f"--add keeps the model's encoder: --encoder {encoder} is not its {recipe.encoder}")


def _from_command_line(ctx: click.Context, param: str) -> bool:
    return ctx.get_parameter_source(param) == click.core.ParameterSource.COMMANDLINE


def _same_encoder(spec: str, recorded: str) -> bool:
    from ..encoders import encoder_sha256, resolve_encoder, split_flip

    resolved = resolve_encoder(spec)[1]
    if resolved == recorded:
        return True
    # the same weights at another path (a copied folder) are the same encoder; dlib and torch are not
    builtin = {"dlib", "torch"}
    return (split_flip(resolved)[0] not in builtin and split_flip(recorded)[0] not in builtin
            and encoder_sha256(resolved) == encoder_sha256(recorded)
            and split_flip(resolved)[1] == split_flip(recorded)[1])


def _check_outputs(output: Path, report: Path | None, add: bool) -> None:
    """Before any work: the model can be written, and nothing train-knn did not write is replaced."""
    from ..knn_store import is_leftover_folder, is_legacy_model_file, is_model_folder

    check_output_file(output, "--output")
    if add:
        if is_legacy_model_file(output):
            raise BadInput(f"--add: {output} is a single-file model of an older dlibplus: train it again into a "
                           "folder (the encoding cache makes that fast), then add to it")
        if not is_model_folder(output):
            raise BadInput(f"--add: {output} is not a train-knn model folder to add to"
                           + ("" if output.exists() else " (it does not exist)"))
    elif output.exists():
        if is_legacy_model_file(output):
            raise BadInput(f"--output {output} is a single-file model of an older dlibplus; models are folders "
                           "now: choose a new name, or delete the old file first")
        if not (is_model_folder(output) or is_leftover_folder(output)):
            raise BadInput(f"--output {output} exists and is not a train-knn model: choose another name "
                           "(train-knn replaces only its own models)")
    if report is None:
        return
    check_output_file(report, "--report")
    if report.exists() and not _is_people_report(report):
        raise BadInput(f"--report {report} exists and is not a train-knn report: choose another file name")


def _is_people_report(path: Path) -> bool:
    """Whether ``path`` holds a report train-knn --report wrote (a JSON object with its keys)."""
    import json

    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and {"folder", "people", "used"} <= report.keys()
