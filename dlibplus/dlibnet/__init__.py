"""dlib's face ResNet in PyTorch: load a ``.dat`` into a :class:`DlibResNet`, save one back.

``load_dat()`` gives the network of ``dlib_face_recognition_resnet_model_v1.dat`` (or of any ``.dat``
dlib saved for that network); ``save_dat(model, path)`` writes a file that
``dlib.face_recognition_model_v1`` loads. Importing this package does not import torch; the
functions and ``DlibResNet`` do, on first use.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .net import DlibResNet

__all__ = ["DlibResNet", "load_dat", "save_dat"]


def load_dat(path: os.PathLike | str | None = None) -> "DlibResNet":
    """The network stored in a dlib ``.dat`` file, as a float32 CPU :class:`DlibResNet` in eval mode.

    ``path``: default dlib's ``dlib_face_recognition_resnet_model_v1.dat``. Raises
    :class:`~dlibplus.errors.ModelFileError` naming the layer and byte offset for a wrong,
    truncated or foreign file.
    """
    from .. import models
    from . import convert, dat_io
    from .net import DlibResNet

    if path is None:
        path = models.model_path(models.FACE_RECOGNITION_MODEL)
    parsed = dat_io.read_dat(path)
    state = convert.dat_to_state_dict(parsed)
    model = DlibResNet()
    model.load_state_dict(state)
    return model.eval()


def save_dat(model: "DlibResNet", path: os.PathLike | str) -> None:
    """Write ``model``'s weights as a dlib ``.dat`` (atomically: temporary file, then rename).

    The file loads in ``dlib.face_recognition_model_v1``; for the unmodified model it is dlib's
    original file byte for byte.
    """
    from . import convert, dat_io

    dat_io.write_dat(convert.state_dict_to_dat(model.state_dict(), model.stages_spec), path)


def __getattr__(name: str):
    if name == "DlibResNet":
        from .net import DlibResNet

        return DlibResNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
