"""``DlibResNet``: an exact PyTorch replica of dlib's face-recognition ResNet (architecture only).

The layer plan is data (:data:`FACE_STAGES`); weights come from elsewhere (``load_state_dict``, or
:func:`dlibplus.dlibnet.load_dat`). This module knows nothing of ``.dat`` files.

Semantics copied from dlib (dlib/dnn/layers.h and the network of dlib/examples/dnn_face_recognition_ex.cpp):
stride-2 convolutions have no padding; residual sums zero-pad the smaller input at the end of each axis (channels, rows,
columns) instead of cropping; the skip path of a downsampling block is a 2x2 average pool; BN is
already folded into per-channel affine layers, so train and eval mode compute the same thing.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

DLIB_MEANS = (122.782, 117.001, 104.298)  # R, G, B, as stored in dlib's file (float32 there)
INPUT_SIZE = 150


@dataclasses.dataclass(frozen=True)
class Stage:
    """``blocks`` residual blocks of ``channels``; the first halves the resolution if ``downsample``."""

    name: str
    channels: int
    blocks: int
    downsample: bool


# dlib's L4 .. L0 in input-to-output order.
FACE_STAGES: tuple[Stage, ...] = (
    Stage("layer1", 32, 3, False),
    Stage("layer2", 64, 4, True),
    Stage("layer3", 128, 3, True),
    Stage("layer4", 256, 3, True),
    Stage("layer5", 256, 1, True),
)


class Affine(nn.Module):
    """Learnable per-channel scale and shift: ``y = weight[c] * x + bias[c]`` (dlib's ``affine_``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return str(self.weight.numel())


def _conv3x3(cin: int, cout: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=0 if stride != 1 else 1)


def zero_pad_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the larger shape, each input zero-padded at the end of each axis."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class Block(nn.Module):
    """dlib's ``ares`` (stride 1) or ``ares_down`` (stride 2): relu(block(x) + skip(x))."""

    def __init__(self, cin: int, cout: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = _conv3x3(cin, cout, 2 if downsample else 1)
        self.affine1 = Affine(cout)
        self.conv2 = _conv3x3(cout, cout, 1)
        self.affine2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.affine1(self.conv1(x)))
        out = self.affine2(self.conv2(out))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(zero_pad_add(out, skip))


class Stem(nn.Module):
    """7x7 stride-2 convolution (no padding), affine, relu, 3x3 stride-2 max pool."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 7, stride=2, padding=0)
        self.affine = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)


class DlibResNet(nn.Module):
    """dlib's ``dlib_face_recognition_resnet_model_v1`` network.

    ``forward(x)``: ``x`` float (N, 3, 150, 150), RGB, pixel values 0-255 (any memory format);
    returns (N, 128) raw descriptors in the weights' dtype, not normalised (dlib's output).
    The input is centred with the ``means`` buffer and divided by 256 inside, as dlib does.

    Stages, in order: ``stem``, ``layer1`` .. ``layer5`` (from ``stages``), ``fc``.
    """

    def __init__(self, stages: Sequence[Stage] = FACE_STAGES, stem_channels: int = 32,
                 embedding_dim: int = 128, means: Sequence[float] = DLIB_MEANS):
        super().__init__()
        self.stages_spec = tuple(stages)
        self.stem = Stem(stem_channels)
        channels = stem_channels
        for stage in self.stages_spec:
            blocks = []
            for index in range(stage.blocks):
                blocks.append(Block(channels, stage.channels, stage.downsample and index == 0))
                channels = stage.channels
            self.add_module(stage.name, nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, embedding_dim, bias=False)
        self.register_buffer("means", torch.tensor(list(means), dtype=torch.float32))

    @property
    def stage_names(self) -> tuple[str, ...]:
        return ("stem",) + tuple(s.name for s in self.stages_spec) + ("fc",)

    @property
    def body_names(self) -> tuple[str, ...]:
        """The stages before the pooling and ``fc``: ``stem``, ``layer1`` .. ``layer5``."""
        return self.stage_names[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.features(x, 0), 0)

    def features(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """The activation after the first ``stages`` of :attr:`body_names` (0: the centred, scaled input):
        ``forward(x)`` is ``forward_from(features(x, k), k)`` for every ``k``, the same operations in the
        same order, so a caller may keep the activations of frozen first stages and run only the rest."""
        if x.dim() != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"input must be (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB, got {tuple(x.shape)}")
        x = (x.float() - self.means.view(1, -1, 1, 1)) / 256.0
        x = x.to(self.fc.weight.dtype)
        for name in self.body_names[:stages]:
            x = getattr(self, name)(x)
        return x

    def forward_from(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """(N, 128) descriptors of :meth:`features`' output after ``stages`` stages: the other stages,
        the pooling and ``fc``."""
        for name in self.body_names[stages:]:
            x = getattr(self, name)(x)
        return self.fc(x.mean(dim=(2, 3)))

    def freeze(self, stages: int | Iterable[str]) -> list[str]:
        """Freeze the first ``stages`` stages, or the named ones; every other stage becomes trainable.

        Sets ``requires_grad`` on the parameters (frozen: False). ``freeze(0)`` unfreezes all.
        Returns the frozen stage names. Affine layers hold no running statistics, so a frozen
        stage computes the same thing in train and eval mode.
        """
        names = self.stage_names
        if isinstance(stages, int):
            if not 0 <= stages <= len(names):
                raise ValueError(f"can freeze 0 to {len(names)} stages, not {stages}")
            frozen = list(names[:stages])
        else:
            frozen = list(dict.fromkeys([stages] if isinstance(stages, str) else stages))
            unknown = [n for n in frozen if n not in names]
            if unknown:
                raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(names)}")
        for name in names:
            for p in getattr(self, name).parameters():
                p.requires_grad_(name not in frozen)
        return frozen

    def folded(self) -> "DlibResNet":
        """A copy for inference with each affine folded into the convolution before it.

        ``conv -> affine`` becomes one convolution with weight ``w * g`` and bias ``b * g + beta``;
        the affine modules become identities. It computes the same function (to float rounding,
        ~1e-7) with fewer passes over memory. Not for training: the affine parameters are gone.
        """
        model = copy.deepcopy(self)
        pairs = [(model.stem, "conv", "affine")]
        for stage in model.stages_spec:
            for block in getattr(model, stage.name):
                pairs += [(block, "conv1", "affine1"), (block, "conv2", "affine2")]
        with torch.no_grad():
            for owner, conv_name, affine_name in pairs:
                conv, affine = getattr(owner, conv_name), getattr(owner, affine_name)
                conv.weight.mul_(affine.weight.view(-1, 1, 1, 1))
                conv.bias.mul_(affine.weight).add_(affine.bias)
                setattr(owner, affine_name, nn.Identity())
        return model

    def _apply(self, fn, *args, **kwargs):
        # Keep the input means in float32 whatever dtype the weights are cast to (.half() would
        # round 122.782 to 122.75); the input is centred in float32 before the cast.
        means = self.means
        super()._apply(fn, *args, **kwargs)
        if self.means.dtype != torch.float32:
            self.means = means.to(device=self.means.device, dtype=torch.float32)
        return self
