"""Reading image files into the uint8 RGB arrays dlib wants.

face_recognition does ``np.array(PIL.Image.open(f).convert(mode))`` and sets PIL's
``LOAD_TRUNCATED_IMAGES`` globally. For ordinary 8-bit RGB, palette and greyscale files this module
returns exactly the same array. It differs where that recipe hurts users:

- EXIF orientation is applied (phone photos come upright), unless ``exif_transpose=False``;
- transparent pixels are composited onto white instead of keeping whatever colour hides under them
  (a fully opaque RGBA file gives the same array as face_recognition);
- 16-bit and 32-bit greyscale/float images are scaled to 8 bits instead of clipped to white;
- CMYK is converted through PIL as before, but an unreadable, truncated or non-image file raises
  :class:`~dlibplus.errors.ImageReadError` naming the file, and PIL's global settings are left alone.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# face_recognition sets PIL's global LOAD_TRUNCATED_IMAGES = True on import; we want truncated files
# reported, so the flag is held False while we decode (under a lock: it is a process-wide global).
_TRUNCATION_LOCK = threading.Lock()


def _decode(im: Image.Image) -> None:
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def is_image_file(path: os.PathLike | str) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS`, in any case."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale high-bit-depth single-channel images ('I;16*', 'I', 'F') to mode 'L'."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        a = (a.astype(np.uint32) >> 8).astype(np.uint8)
    else:  # 'I' (int32) or 'F' (float32): use the image's own range
        a = a.astype(np.float64)
        lo, hi = float(np.min(a)), float(np.max(a))
        if hi <= 255 and lo >= 0:
            a = np.floor(a)
        else:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a, mode="L")


def _flatten_alpha(im: Image.Image) -> Image.Image:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba)
    return im


def load_image_file(file: str | os.PathLike | BinaryIO, mode: str = "RGB", *,
                    exif_transpose: bool = True) -> np.ndarray:
    """Load an image file into a numpy array.

    :param file: path or binary file object (jpg, png, bmp, webp, ... anything PIL reads).
    :param mode: ``'RGB'`` gives (H, W, 3) uint8; ``'L'`` gives (H, W) uint8 greyscale. Any other PIL
        mode is passed to ``Image.convert``.
    :param exif_transpose: rotate/flip the pixels as the file's EXIF orientation tag says.
    :raises ImageReadError: the file is missing, not an image, truncated or corrupt; the message names it.
    """
    name = getattr(file, "name", file)
    try:
        with Image.open(file) as im:
            _decode(im)  # decode now so a truncated file fails here, not later
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":
                im = _to_8bit(im)
            if mode:
                im = _flatten_alpha(im).convert(mode)
            return np.array(im)
    except FileNotFoundError:
        raise ImageReadError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(name, "is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image file PIL can decode") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports truncated/corrupt data as OSError ("image file is truncated") or SyntaxError
        raise ImageReadError(name, f"truncated or corrupt image data ({exc})") from None
