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

    :raises DataFolderError: an output would overwrite an input, or a file dlibplus did not write.
    """

    def __init__(self, inputs: Sequence[os.PathLike | str], out_dir: os.PathLike | str):
        self.out_dir = Path(out_dir)
        paths = [Path(p).resolve() for p in inputs]
        root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path.cwd()
        self._targets = {p: self.out_dir.resolve() / p.relative_to(root) for p in paths}
        self._written = self._read_manifest()
        inputs_set = set(paths)
        for src, out in self._targets.items():
            if out in inputs_set:
                raise DataFolderError(f"--annotate {self.out_dir}: the copy of {src} would overwrite an input "
                                      "photo; choose an output folder outside the photos")
            rel = str(out.relative_to(self.out_dir.resolve()))
            if out.exists() and rel not in self._written:
                raise DataFolderError(f"--annotate {self.out_dir}: {out} exists and was not written by dlibplus; "
                                      "choose an empty or new folder")

    def _read_manifest(self) -> set[str]:
        try:
            return set(json.loads((self.out_dir / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            return set()

    def target(self, path: os.PathLike | str) -> Path:
        return self._targets[Path(path).resolve()]

    def write(self, path: os.PathLike | str, predictions: Sequence) -> Path:
        """Write the annotated copy of ``path`` and record it in the manifest; returns where."""
        out = self.target(path)
        draw_predictions(path, predictions, out)
        self._written.add(str(out.relative_to(self.out_dir.resolve())))
        write_json(self.out_dir / MANIFEST, sorted(self._written))
        return out


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
