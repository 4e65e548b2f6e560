"""Optional dependencies: imported when a feature needs them, with one clear line when missing.

The extras: ``pip install dlibplus[onnx]`` (onnx, onnxruntime: ``dlibplus export``) and
``pip install dlibplus[ray]`` (ray[data], pyarrow: ``dlibplus encode --ray``, ``--parquet``).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DlibplusError


class MissingDependencyError(DlibplusError):
    """An optional package a feature needs is not installed; the message says how to install it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or :class:`MissingDependencyError`: ``"<purpose> needs <top package>: pip install
    dlibplus[<extra>]"``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} needs {module.split('.')[0]}: pip install dlibplus[{extra}]") from None
