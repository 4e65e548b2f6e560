"""Draw boxes and names on a copy of an image (works with Pillow >= 10: no ``textsize``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .fileio import atomic_path
from .images import load_image_file
from .knn import UNKNOWN


def annotate_image(path: os.PathLike | str, predictions: Sequence, out_dir: os.PathLike | str) -> Path:
    """Write ``out_dir/<name>`` with each prediction's box and ``name (distance)`` drawn.

    :param predictions: objects with ``name``, ``box`` (top, right, bottom, left) and ``distance``.
    :return: the written file's path.
    """
    path = Path(path)
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
    out = Path(out_dir) / path.name
    with atomic_path(out) as tmp:
        im.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
    return out
