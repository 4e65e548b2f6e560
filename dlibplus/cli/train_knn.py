"""``dlibplus train-knn``: encode a people folder and fit a k-NN."""
from __future__ import annotations

from pathlib import Path

import click

from .options import (ENCODER_HELP, BadInput, check_output_file, face_options, face_settings, ray_option,
                      user_errors)


@click.command("train-knn")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Model file to write (.npz).")
@click.option("--n-neighbors", default="auto", show_default=True, metavar="K|auto|sqrt",
              help="k: 'auto' (leave-one-out choice), 'sqrt' (the example's round(sqrt(n))) or a whole number >= 1.")
@click.option("--algorithm", type=click.Choice(["ball_tree", "kd_tree", "brute", "auto"]), default="ball_tree",
              show_default=True, help="scikit-learn's neighbour search (same answers, different speed).")
@click.option("--method", type=click.Choice(["knn", "prototype", "svm"]), default="knn", show_default=True,
              help="Who a face is: knn (the example's vote of the k nearest photos), prototype (the nearest "
                   "person's mean encoding) or svm (a linear SVM); 'unknown' is always decided on the distance "
                   "to the nearest photo of the predicted person. With few photos per person prototype and svm "
                   "name more faces rightly (README).")
@click.option("--threshold", type=click.FloatRange(0), default=0.6, show_default=True,
              help="Distance beyond which a face is 'unknown' (stored in the model).")
@click.option("--jitters", type=click.IntRange(1), default=1, show_default=True,
              help="Jittered copies averaged per face (1 = none; 100 is 100x slower).")
@click.option("--encoder", default="dlib", show_default=True, help=ENCODER_HELP)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write what was used and skipped, per person, as JSON.")
@ray_option
@click.option("--no-cache", is_flag=True, help="Do not read or write the encoding cache.")
@face_options
@user_errors
def train_knn(folder, output, n_neighbors, algorithm, method, threshold, jitters, encoder, report, ray_address, no_cache,
              detector, upsample, landmarks, face_box, max_side, jobs):
    """Train a k-NN face classifier on FOLDER/<person>/<image>.

    Images with no face or several faces are skipped and listed at the end.
    """
    from ..fileio import write_json
    from ..knn import FaceKNN
    from ..people import counted, load_people

    if n_neighbors not in ("auto", "sqrt"):
        try:
            n_neighbors = int(n_neighbors)
        except ValueError:
            raise click.BadParameter("must be 'auto', 'sqrt' or a whole number", param_hint="--n-neighbors")
        if n_neighbors < 1:
            raise click.BadParameter("must be at least 1", param_hint="--n-neighbors")
    _check_outputs(output, report)
    people = load_people(folder, settings=face_settings(detector, upsample, landmarks, face_box, max_side),
                         encoder=encoder, num_jitters=jitters, jobs=jobs, use_cache=not no_cache,
                         ray_address=ray_address)
    for line in people.report_lines():
        click.echo(line, err=True)
    if report:
        write_json(report, people.report())
    model = FaceKNN(n_neighbors, algorithm, threshold, people.recipe, method).fit(people.encodings, people.labels)
    model.save(output, info=people.info())
    click.echo(f"trained on {counted(len(people.labels), 'face')} of {counted(len(model.classes_), 'person')}, "
               f"k={model.k_} "
               f"({model.n_neighbors}); model written to {output}", err=True)


def _check_outputs(output: Path, report: Path | None) -> None:
    """Before any work: both files can be written, and neither replaces a file train-knn did not write."""
    from ..knn import is_model_file

    check_output_file(output, "--output")
    if output.exists() and not is_model_file(output):
        raise BadInput(f"--output {output} exists and is not a train-knn model: choose another file name "
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
