"""Options and error handling shared by every ``dlibplus`` command."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import click

from ..errors import DataFolderError, DlibplusError, ImageReadError, ModelFileError

ENCODER_HELP = "Encoder: dlib (face_recognition's), torch (the exact PyTorch replica), a .dat file or a " \
               "`dlibplus finetune` output folder; append +flip (e.g. dlib+flip) to average each face with " \
               "its mirror image (test-time flip: better accuracy, twice the encoding time)."


JOBS_HELP = "Worker processes for detection and encoding (0: all cores)."


def jobs_option():
    """``--jobs/-j``: 0 (the default) means all cores, in every command."""
    return click.option("--jobs", "-j", type=click.IntRange(0), default=0, show_default=True, help=JOBS_HELP)


def face_options(f):
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
        jobs_option(),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def multiple_faces_option():
    """``--multiple-faces``: what a training photo with several faces gives (:func:`dlibplus.people.pick_face`)."""
    return click.option("--multiple-faces", type=click.Choice(["skip", "largest"]), default="skip", show_default=True,
                        help="A photo in a person's folder with several faces: skip it (as face_recognition's KNN "
                             "example does), or use its largest face when that is at least 1.5 times the area of "
                             "the next (the others are still skipped); the photos so used are listed in train-knn's "
                             "--report, evaluate's metrics.json and finetune's metadata.json.")


def face_settings(detector, upsample, landmarks, face_box, max_side):
    """The :class:`~dlibplus.faces.FaceSettings` of the options :func:`face_options` added."""
    from ..faces import FaceSettings

    return FaceSettings(detector=detector, upsample=upsample, landmarks=landmarks, face_box=face_box,
                        max_side=max_side)


class BadInput(click.ClickException):
    """A problem with what the user gave (a file, a folder, a model): one line, exit 2."""

    exit_code = 2


def user_errors(f):
    """Turn dlibplus's own errors into one clear line: exit 2 for bad input (a folder, an image, a model
    or a pairs file that cannot be used), 1 for anything else dlibplus reports."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (DataFolderError, ModelFileError, ImageReadError) as exc:
            raise BadInput(_with_models_hint(exc)) from None
        except DlibplusError as exc:
            if _is_bad_input(exc):
                raise BadInput(str(exc)) from None
            raise click.ClickException(str(exc)) from None
    return wrapper


def _is_bad_input(exc: DlibplusError) -> bool:
    """A pairs file that cannot be read, or an option that needs an extra that is not installed."""
    from ..optional import MissingDependencyError
    from ..pairs_file import PairsFileError

    return isinstance(exc, (PairsFileError, MissingDependencyError))


def _with_models_hint(exc: Exception) -> str:
    """The error, plus where DLIBPLUS_MODELS points when the bad model file is one of dlib's found there."""
    message = str(exc)
    models = os.environ.get("DLIBPLUS_MODELS")
    path = getattr(exc, "path", None)
    if isinstance(exc, ModelFileError) and models and path and Path(path).parent == Path(models):
        message += (f" (DLIBPLUS_MODELS is set to {models}: point it at a folder holding dlib's .dat files, "
                    "or unset it to use face_recognition_models')")
    return message


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file whose folder cannot be created or written to."""
    from ..data import unwritable_reason

    reason = unwritable_reason(Path(path).parent)
    if reason:
        raise BadInput(f"{option} {path}: its folder {reason}")


def check_output_folder(path: Path, option: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written to."""
    from ..data import unwritable_reason

    reason = unwritable_reason(path)
    if reason:
        raise BadInput(f"{option} {path}: the folder {reason}")


def ray_address_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--ray``'s value: ``None`` (no Ray), ``"local"`` or an address. ``--ray photos/`` takes the folder as
    the address (click's optional values): refused, before the paths are found missing."""
    from pathlib import Path

    if value is None or value == "local":
        return value
    if Path(value).exists() and "://" not in value:
        raise click.BadParameter(f"{value!r} is a file or folder, not a cluster address: write the paths "
                                 "before --ray, or --ray local", ctx=ctx, param=param)
    return value


def ray_option(f):
    """``--ray [ADDRESS]``: run the encoding step on Ray (a new local cluster, or the one at ADDRESS)."""
    return click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                        callback=ray_address_option,
                        help="Encode on Ray: a new local cluster (--jobs CPUs) when given alone, or the cluster at "
                             "ADDRESS (auto, host:6379, ray://host:10001). Needs pip install dlibplus[ray].")(f)
