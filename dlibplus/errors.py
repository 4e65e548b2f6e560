"""Exceptions a user can cause. Each names the file it concerns."""
from __future__ import annotations

import os


class DlibplusError(Exception):
    """Base class of every error dlibplus raises on purpose."""


class ImageReadError(DlibplusError):
    """An image file that cannot be read or decoded."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class ModelFileError(DlibplusError):
    """A model file that is missing, truncated, corrupt or of the wrong kind."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"bad model file {self.path}: {reason}")


class DataFolderError(DlibplusError):
    """A people folder that is missing, empty or unusable."""


class NotFittedError(DlibplusError):
    """A classifier used before it was trained or loaded."""
