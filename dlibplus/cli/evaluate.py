"""``dlibplus evaluate``: compare encoders on a people folder."""
from __future__ import annotations

from pathlib import Path

import click

from .options import (ENCODER_HELP, BadInput, check_output_folder, face_options, face_settings, multiple_faces_option,
                      user_errors)


@click.command()
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
@click.option("--pairs", "pairs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="LFW pairs.txt or CSV path1,path2,same (paths relative to the file or FOLDER): "
                   "adds the LFW 10-fold verification protocol.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the split, the held-out people and the bootstrap.")
@click.option("--n-boot", type=click.IntRange(1), default=1000, show_default=True,
              help="Bootstrap draws for the confidence intervals of the differences from the baseline.")
@click.option("--jitters", type=click.IntRange(1), default=1, show_default=True,
              help="Above 1, also measure each encoder with dlib's jitter (each face the mean of N jittered copies, "
                   "what train-knn --jitters N gives; 10x slower to encode), shown as 'NAME jitterN': with few "
                   "photos per person it may name more faces than fine-tuning (README).")
@multiple_faces_option()
@face_options
@user_errors
def evaluate(folder, encoders, report, test_fraction, test_folder, holdout_people, pairs_file, seed, n_boot,
             jitters, multiple_faces, detector, upsample, landmarks, face_box, max_side, jobs):
    """Compare encoders on FOLDER/<person>/<image>: identification, open set, verification, per person.

    Every encoder is measured on the same images and split; each is compared with the first (dlib by
    default), with bootstrap-over-people confidence intervals. Writes report.md, metrics.json and PNG
    charts into --report.
    """
    from ..evaluate import evaluate_folder, evaluated_encoders
    from ..report import check_report_folder, console_table, write_report

    _check_report_outside(report, [folder] + ([test_folder] if test_folder else []))
    check_output_folder(report, "--report")
    check_report_folder(report, evaluated_encoders(encoders, jitters)[2])
    settings = face_settings(detector, upsample, landmarks, face_box, max_side)
    result = evaluate_folder(folder, encoders, settings=settings,
                             test_fraction=test_fraction, test_folder=test_folder, holdout_people=holdout_people,
                             pairs_file=pairs_file, seed=seed, jobs=jobs, n_boot=n_boot, jitters=jitters,
                             multiple_faces=multiple_faces)
    click.echo(console_table(result))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    files = write_report(result, report)
    click.echo(f"report written to {files['report']} (metrics.json and charts in {report})", err=True)


def _check_report_outside(report: Path, people_folders: list[Path]) -> None:
    """The report must not go into a people folder: its PNG charts would become someone's photos."""
    out = report.resolve()
    for folder in people_folders:
        root = folder.resolve()
        if out == root or root in out.parents:
            raise BadInput(f"--report {report} is inside the people folder {folder}: its charts would be taken for "
                           "photos next time; choose a folder outside it")
