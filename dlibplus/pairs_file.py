"""Lists of image pairs to verify: LFW ``pairs.txt`` and CSV ``path1,path2,same`` files.

:func:`read_pairs` reads either format into a :class:`PairList`; a missing or malformed file raises
:class:`PairsFileError`, which names the file and the line. Image files are not opened here.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DlibplusError

__all__ = ["PairList", "PairsFileError", "read_pairs", "read_pairs_resolved"]


class PairsFileError(DlibplusError):
    """A pairs file (LFW ``pairs.txt`` or CSV) that is missing or malformed."""

    def __init__(self, path: os.PathLike | str, reason: str, line: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"bad pairs file {where}: {reason}")


@dataclass(frozen=True)
class PairList:
    """``m`` image pairs to verify, in file order.

    :ivar path1, path2: the two images of each pair, ``m`` paths each (resolved against the images root).
    :ivar same: ``(m,)`` bool, True for a same-person pair.
    :ivar folds: ``(m,)`` int64 fold id of each pair (LFW), or ``None`` when the file defines no folds (CSV).
    """

    path1: tuple[Path, ...]
    path2: tuple[Path, ...]
    same: np.ndarray
    folds: np.ndarray | None

    def __len__(self) -> int:
        return len(self.path1)


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _lfw_image(root: Path, name: str, number: str, path: Path, line: int) -> Path:
    try:
        k = int(number)
    except ValueError:
        raise PairsFileError(path, f"image number {number!r} is not an integer", line) from None
    return root / name / f"{name}_{k:04d}.jpg"


def _read_lfw_pairs(path: Path, lines: list[str], root: Path) -> PairList:
    rows = [(k + 1, ln.split()) for k, ln in enumerate(lines) if ln.strip()]
    if not rows:
        raise PairsFileError(path, "the file is empty")
    head_line, header = rows[0]
    try:
        numbers = [int(v) for v in header]
    except ValueError:
        got = " ".join(header)
        raise PairsFileError(path, f"expected a header 'folds pairs_per_fold', got {got!r}", head_line) from None
    if len(numbers) == 2:
        n_folds, per_class = numbers
    elif len(numbers) == 1:
        n_folds, per_class = 1, numbers[0]
    else:
        raise PairsFileError(path, "the header must hold one or two integers", head_line)
    body = rows[1:]
    if len(body) != 2 * n_folds * per_class:
        raise PairsFileError(
            path, f"header announces {n_folds} x 2 x {per_class} = {2 * n_folds * per_class} pairs, found {len(body)}"
        )
    p1, p2, same = [], [], []
    for line, parts in body:
        if len(parts) == 3:
            name, i, j = parts
            p1.append(_lfw_image(root, name, i, path, line))
            p2.append(_lfw_image(root, name, j, path, line))
            same.append(True)
        elif len(parts) == 4:
            name1, i, name2, j = parts
            p1.append(_lfw_image(root, name1, i, path, line))
            p2.append(_lfw_image(root, name2, j, path, line))
            same.append(False)
        else:
            raise PairsFileError(path, f"expected 'name i j' or 'name1 i name2 j', got {len(parts)} fields", line)
    folds = np.arange(len(body)) // (2 * per_class) if per_class else np.zeros(0, dtype=np.int64)
    return PairList(tuple(p1), tuple(p2), np.array(same, dtype=bool), folds)


def _parse_same(value: str) -> bool | None:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return None


def _read_csv_pairs(path: Path, lines: list[str], root: Path) -> PairList:
    p1, p2, same = [], [], []
    header_seen = False
    for k, row in enumerate(csv.reader(lines)):
        line = k + 1
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 3:
            raise PairsFileError(path, f"expected 'path1,path2,same', got {len(row)} fields", line)
        flag = _parse_same(row[2])
        if flag is None:
            if not same and not header_seen:
                header_seen = True
                continue  # a header row such as "path1,path2,same"
            raise PairsFileError(path, f"'same' must be 1/0, true/false or yes/no, got {row[2]!r}", line)
        p1.append(root / row[0].strip())
        p2.append(root / row[1].strip())
        same.append(flag)
    if not same:
        raise PairsFileError(path, "no pairs found")
    return PairList(tuple(p1), tuple(p2), np.array(same, dtype=bool), None)


def read_pairs(path: os.PathLike | str, images_root: os.PathLike | str | None = None) -> PairList:
    """Read a list of image pairs.

    Two formats:

    - LFW ``pairs.txt``: a header ``"<folds> <pairs per class per fold>"`` (e.g. ``10 300``; a single number
      means one fold), then per fold the same-person lines ``name i j`` followed by the different-person lines
      ``name1 i name2 j``. Images resolve to ``<images_root>/<name>/<name>_<iiii>.jpg``; fold ids come from
      the line positions.
    - CSV (``.csv``, or a first line holding a comma): rows ``path1,path2,same`` with same as 1/0, true/false
      or yes/no, an optional header row, ``#`` comment lines. Relative paths resolve against ``images_root``.

    ``images_root`` defaults to the pairs file's folder. Image files are not checked for existence.
    """
    p = Path(path)
    root = Path(images_root) if images_root is not None else p.parent
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PairsFileError(p, exc.strerror or str(exc)) from exc
    except UnicodeDecodeError:
        raise PairsFileError(p, "not a UTF-8 text file") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if p.suffix.lower() == ".csv" or "," in first:
        return _read_csv_pairs(p, lines, root)
    return _read_lfw_pairs(p, lines, root)


def read_pairs_resolved(path: os.PathLike | str, folder: os.PathLike | str) -> PairList:
    """:func:`read_pairs` with relative image paths resolved against the pairs file's folder, or against
    ``folder`` (e.g. the people folder) when more of the images exist there. Only checks which files exist."""
    path = Path(path)
    pairs = read_pairs(path)

    def missing(pl: PairList) -> int:
        return sum(not Path(p).is_file() for p in set(pl.path1 + pl.path2))

    n_missing = missing(pairs)
    if n_missing and Path(folder).resolve() != path.resolve().parent:
        alt = read_pairs(path, folder)
        if missing(alt) < n_missing:
            return alt
    return pairs
