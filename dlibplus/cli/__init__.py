"""The ``dlibplus`` command: train-knn, predict, encode, finetune, evaluate, cluster, export.

Each command lives in its own module of this package; each parses its options, calls the library,
and prints: data on stdout, progress and warnings on stderr. Errors a user can cause exit with status
1 and one clear line; bad usage (an empty or missing folder included) exits with status 2.
"""
from __future__ import annotations

import click

from .._version import __version__
from .cluster import cluster
from .encode import encode
from .evaluate import evaluate
from .export import export
from .finetune import finetune
from .predict import predict
from .train_knn import train_knn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlibplus")
def main():
    """face_recognition's tools on dlib, and a dlib face model you can retrain on your own people."""


for _command in (train_knn, predict, encode, finetune, evaluate, cluster, export):
    main.add_command(_command)
