"""JSON-ready plain Python values from the project's result objects (a leaf module: only numpy).

:func:`jsonable` turns dataclasses, numpy arrays and scalars, paths and containers into the types
``json.dumps(..., allow_nan=False)`` accepts; NaN and +-inf become ``None``. :class:`JSONFields` gives a
result dataclass a ``to_dict()`` built on it.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

__all__ = ["JSONFields", "jsonable"]


class JSONFields:
    """Mixin for result dataclasses: ``to_dict()`` gives every field, in declaration order, JSON-ready (see
    :func:`jsonable`)."""

    def to_dict(self) -> dict:
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def jsonable(obj: Any) -> Any:
    """Plain Python types for ``json.dumps(..., allow_nan=False)``.

    - a dataclass with ``to_dict()`` gives that, any other dataclass a dict of its fields;
    - dict keys become ``str``; lists, tuples and numpy arrays (any shape) become nested lists;
    - ``bool``/``int``/``float`` (numpy's too) become Python's; a non-finite float (NaN, +-inf) becomes ``None``;
    - a path becomes its string; anything else unknown its ``str()``.
    """
    if hasattr(obj, "to_dict") and dataclasses.is_dataclass(obj):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (str, type(None))):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
