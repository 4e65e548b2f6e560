"""Draw boxes and names on copies of images, never over anything dlibplus did not write.

:class:`AnnotationPlan` decides every output path before any work: each input keeps its path
relative to the inputs' common folder (``a/x.jpg`` and ``b/x.jpg`` stay apart), an output that would
land on an input file is refused, and a file already in the output folder is replaced only when an
earlier annotation run wrote it (recorded in the folder's manifest).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .errors import DataFolderError
from .fileio import atomic_path, write_json
from .images import load_image_file
from .predict import UNKNOWN

MANIFEST = ".dlibplus-annotated.json"  # the files this folder's annotation runs wrote


class AnnotationPlan:
    """Where the annotated copy of each input goes, checked before any image is processed.

    Paths are taken as given (made absolute, symlinks not followed), so a folder of links to photos
    elsewhere is mirrored as it looks; the checks compare both the paths and what they point at.

    :raises DataFolderError: the output folder holds an input photo, or an output would replace a file
        dlibplus did not write.
    """

    def __init__(self, inputs: Sequence[os.PathLike | str], out_dir: os.PathLike | str):
        self.out_dir = Path(out_dir)
        self._out = _absolute(out_dir)
        paths = [_absolute(p) for p in inputs]
        root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path.cwd()
        self._targets = {p: self._out / p.relative_to(root) for p in paths}
        self._written = read_manifest(self.out_dir)
        self._check_inputs_outside(paths)
        self._check_targets_free()

    def _check_inputs_outside(self, paths: Sequence[Path]) -> None:
        """The output folder must not hold any input: the copies would land among (or on) the photos."""
        out_real = Path(os.path.realpath(self._out))
        for p in paths:
            if _inside(p, self._out) or _inside(Path(os.path.realpath(p)), out_real):
                raise DataFolderError(f"--annotate {self.out_dir} holds the input photo {p}: the annotated copies "
                                      "would land among (or on) the photos; choose an output folder outside them")

    def _check_targets_free(self) -> None:
        """Replace only what an earlier annotation run wrote."""
        for out in self._targets.values():
            rel = out.relative_to(self._out).as_posix()
            if (out.exists() or out.is_symlink()) and rel not in self._written:
                raise DataFolderError(f"--annotate {self.out_dir}: {out} exists and was not written by dlibplus; "
                                      "choose an empty or new folder")

    def target(self, path: os.PathLike | str) -> Path:
        return self._targets[_absolute(path)]

    def write(self, path: os.PathLike | str, predictions: Sequence) -> Path:
        """Write the annotated copy of ``path`` and record it in the manifest; returns where."""
        draw_predictions(path, predictions, self.target(path))
        return self.record(path)

    def record(self, path: os.PathLike | str) -> Path:
        """Record in the manifest that the copy of ``path`` (written here, or by the video writer) is
        dlibplus's, so a later run may replace it; returns where it is."""
        out = self.target(path)
        self._written.add(out.relative_to(self._out).as_posix())
        write_json(self.out_dir / MANIFEST, sorted(self._written))
        return out


def read_manifest(out_dir: os.PathLike | str) -> set[str]:
    """The files (relative paths) earlier annotation runs wrote into ``out_dir``."""
    try:
        names = json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(names, list):
        return set()
    return {n for n in names if isinstance(n, str) and n and not Path(n).is_absolute() and ".." not in Path(n).parts}


def earlier_copies(out_dir: os.PathLike | str) -> set[Path]:
    """The annotated copies earlier runs wrote into ``out_dir`` (absolute paths): never inputs."""
    out = _absolute(out_dir)
    return {out / name for name in read_manifest(out_dir)}


def _absolute(path: os.PathLike | str) -> Path:
    """``path`` absolute and normalised, symlinks not followed."""
    return Path(os.path.abspath(path))


def _inside(path: Path, folder: Path) -> bool:
    return folder == path or folder in path.parents


def draw_predictions(path: os.PathLike | str, predictions: Sequence, out: os.PathLike | str) -> None:
    """Write to ``out`` a copy of the image at ``path`` with each prediction's box and
    ``name (distance)`` drawn (Pillow >= 10: no ``textsize``).

    :param predictions: objects with ``name``, ``box`` (top, right, bottom, left) and ``distance``.
    """
    im = Image.fromarray(load_image_file(path))  # the pixels the faces were found in (EXIF, alpha, 16-bit)
    draw = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 400))
    font = ImageFont.load_default(size=max(12, 7 * width))
    for p in predictions:
        top, right, bottom, left = p.box
        colour = (220, 40, 40) if p.name == UNKNOWN else (40, 200, 80)
        draw.rectangle(((left, top), (right, bottom)), outline=colour, width=width)
        label = f"{p.name} ({p.distance:.2f})"
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
        h = y1 - y0 + 6
        y = bottom if bottom + h <= im.height else max(top - h, 0)
        draw.rectangle(((left, y), (left + x1 - x0 + 6, y + h)), fill=colour)
        draw.text((left + 3, y + 3 - y0), label, fill=(255, 255, 255), font=font)
    out = Path(out)
    with atomic_path(out) as tmp:
        im.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))


def annotate_image(path: os.PathLike | str, predictions: Sequence, out_dir: os.PathLike | str) -> Path:
    """Write ``out_dir/<file name>`` annotated (one image; :class:`AnnotationPlan` checks many)."""
    plan = AnnotationPlan([path], out_dir)
    return plan.write(path, predictions)
