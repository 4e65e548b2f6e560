"""Float32 math modes for the replica: exact IEEE float32 for a block of work, global settings restored.

PyTorch lets convolutions and matmuls on float32 tensors run in lower precision behind the caller's back:
cuDNN convolutions use TF32 by default on Ampere and later GPUs (``torch.backends.cudnn.allow_tf32`` is
True out of the box), ``torch.set_float32_matmul_precision("high"|"medium")`` turns matmuls to TF32
(CUDA) or TF32/bfloat16 (oneDNN on CPU). TF32 moves the face network's descriptors 2.9e-4 away from
dlib's, so "exact" work runs inside :func:`exact_float32`, which sets every one of these to full
float32 for the block and puts back exactly what was there before (also on an exception).

:func:`math_mode` is the context an encoder (or a training step) runs under for a precision name
(:data:`PRECISIONS`); :func:`resolve_precision` turns ``"fast"`` into the dtype it means on a device.

The settings are process-wide: another thread doing float32 GPU work at the same time also runs exact
while the block lasts.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

#: Precision names an encoder accepts. ``exact``: float32 with TF32 and reduced-precision matmuls off
#: (dlib's descriptors to ~1e-6). ``fast``: ``float16`` on CUDA, ``bfloat16`` elsewhere. ``float16``:
#: float16 weights and activations (CUDA only). ``bfloat16``: float32 weights under bfloat16 autocast.
PRECISIONS = ("exact", "fast", "float16", "bfloat16")

# The operation kinds whose float32 precision torch >= 2.9 sets one by one ("ieee" = full float32,
# "none" = inherit from the parents), with those parents: the backend, then the generic setting.
_LEAVES = (("cudnn", "conv"), ("cudnn", "rnn"), ("cuda", "matmul"), ("mkldnn", "conv"), ("mkldnn", "matmul"),
           ("mkldnn", "rnn"))
_PARENTS = {"cudnn": ("cudnn", ""), "cuda": ("",), "mkldnn": ("mkldnn", "")}
_EXACT_VALUES = ("ieee", "none")
# The legacy settings that read an operation's value (torch refuses to read them once the new API set it).
_LEGACY_OF = {"cudnn.conv": ("cudnn.allow_tf32",), "cudnn.rnn": ("cudnn.allow_tf32",),
              "cuda.matmul": ("cuda.matmul.allow_tf32", "float32_matmul_precision"),
              "mkldnn.matmul": ("float32_matmul_precision",)}


def _leaf(backend: str, op: str):
    import torch

    return getattr(getattr(torch.backends, backend, None), op, None)


def _parent(backend: str):
    """The backend-level settings object (``""``: the generic ``torch.backends``)."""
    import torch

    return torch.backends if backend == "" else getattr(torch.backends, backend, None)


def _new_api() -> bool:
    """Whether this torch has the per-operation ``fp32_precision`` settings (torch >= 2.9)."""
    leaf = _leaf("cudnn", "conv")
    return leaf is not None and hasattr(leaf, "fp32_precision")


def _read(getter) -> object:
    """A legacy setting's value, or None where torch refuses to read it (after the new API set it)."""
    try:
        return getter()
    except RuntimeError:
        return None


def _legacy_settings() -> dict[str, object]:
    import torch

    return {"cudnn.allow_tf32": _read(lambda: torch.backends.cudnn.allow_tf32),
            "cuda.matmul.allow_tf32": _read(lambda: torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": _read(torch.get_float32_matmul_precision)}


def float32_settings() -> dict[str, object]:
    """A snapshot of every setting :func:`exact_float32` touches, as ``{name: value}``.

    The legacy ones (``"cudnn.allow_tf32"``, ``"cuda.matmul.allow_tf32"``: bool,
    ``"float32_matmul_precision"``: ``"highest"|"high"|"medium"``; None where torch refuses to read
    them because the new API set them), and with torch >= 2.9 the per-operation and per-backend
    ``fp32_precision`` values (``"cudnn.conv"``, ``"cuda.matmul"``, ``"mkldnn.matmul"``, ...,
    ``"cudnn"``, ``"mkldnn"``, ``""`` (generic) -> ``"ieee"``, ``"tf32"``, ``"bf16"`` or ``"none"``).
    Reading never raises.
    """
    settings = _legacy_settings()
    if _new_api():
        for backend in ("", "cudnn", "mkldnn"):
            parent = _parent(backend)
            if parent is not None and hasattr(parent, "fp32_precision"):
                settings[backend] = parent.fp32_precision
        for backend, op in _LEAVES:
            leaf = _leaf(backend, op)
            if leaf is not None and hasattr(leaf, "fp32_precision"):
                settings[f"{backend}.{op}"] = leaf.fp32_precision
    return settings


def _set_legacy(settings: dict[str, object]) -> None:
    import torch

    if settings.get("cudnn.allow_tf32") is not None:
        torch.backends.cudnn.allow_tf32 = bool(settings["cudnn.allow_tf32"])
    if settings.get("cuda.matmul.allow_tf32") is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(settings["cuda.matmul.allow_tf32"])
    if settings.get("float32_matmul_precision") is not None:
        torch.set_float32_matmul_precision(str(settings["float32_matmul_precision"]))


def _make_exact() -> None:
    """Full float32 everywhere, through the legacy setters where that suffices (so that code reading
    the legacy flags inside the block still can), else per operation with ``"ieee"``."""
    _set_legacy({"cudnn.allow_tf32": False, "cuda.matmul.allow_tf32": False,
                 "float32_matmul_precision": "highest"})
    if not _new_api():
        return
    for backend, op in _LEAVES:
        leaf = _leaf(backend, op)
        if leaf is None or not hasattr(leaf, "fp32_precision"):
            continue
        chain = [leaf.fp32_precision] + [getattr(_parent(p), "fp32_precision", "none") for p in _PARENTS[backend]]
        if any(value not in _EXACT_VALUES for value in chain):
            leaf.fp32_precision = "ieee"


def _restore(saved: dict[str, object]) -> None:
    """Put back a :func:`float32_settings` snapshot: the legacy setters first (so that the legacy flags
    read as before), then parents (setting one resets its children), then operations, where they differ."""
    _set_legacy(saved)
    for name in ("", "cudnn", "mkldnn"):
        parent = _parent(name)
        if name in saved and parent.fp32_precision != saved[name]:
            parent.fp32_precision = saved[name]
    for backend, op in _LEAVES:
        name = f"{backend}.{op}"
        unreadable = any(saved.get(flag, True) is None for flag in _LEGACY_OF.get(name, ()))
        if name in saved and (unreadable or _leaf(backend, op).fp32_precision != saved[name]):
            _leaf(backend, op).fp32_precision = saved[name]  # the new API again: legacy reads refused as before


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Full IEEE float32 convolutions and matmuls (no TF32, no bfloat16 matmuls) on every backend for
    the block; every setting is restored to its value before the block, also when the block raises.

    Covers cuDNN convolutions (``torch.backends.cudnn.allow_tf32``), CUDA matmuls
    (``torch.backends.cuda.matmul.allow_tf32``), ``torch.set_float32_matmul_precision`` and, on
    torch >= 2.9, every per-operation ``fp32_precision`` (cuDNN, cuBLAS and oneDNN on the CPU),
    whichever API set them.
    """
    saved = float32_settings()
    _make_exact()
    try:
        yield
    finally:
        _restore(saved)


def resolve_precision(precision: str, device: "torch.device | str") -> str:
    """``"exact"``, ``"float16"`` or ``"bfloat16"``: what ``precision`` (one of :data:`PRECISIONS`) means
    on ``device``. ``"fast"`` is float16 on CUDA (tensor cores, faster than bfloat16 there) and bfloat16
    elsewhere; float16 on anything but CUDA raises ValueError."""
    import torch

    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "fast":
        return "float16" if device_type == "cuda" else "bfloat16"
    if precision == "float16" and device_type != "cuda":
        raise ValueError(f"precision 'float16' needs a CUDA device, not {device_type!r}; "
                         "use 'bfloat16' (or 'fast') there")
    return precision


@contextlib.contextmanager
def math_mode(precision: str, device: "torch.device | str") -> Iterator[None]:
    """The context a network runs under for a resolved precision (see :func:`resolve_precision`).

    Always :func:`exact_float32`, so whatever stays in float32 is full float32; ``"bfloat16"`` adds
    bfloat16 autocast on ``device``'s type. ``"float16"`` needs nothing more: the weights themselves are
    float16 (the network casts its input after centring it in float32).
    """
    import torch

    device_type = torch.device(device).type
    with exact_float32():
        if precision == "bfloat16":
            with torch.autocast(device_type, dtype=torch.bfloat16):
                yield
        else:
            yield
