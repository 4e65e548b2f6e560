"""The settings of a fine-tuning run (no torch import: the CLI reads its defaults from here)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

HEAD_NAMES = ("arcface", "cosface", "sphereface", "softmax", "combined")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every knob of a fine-tuning run; saved as JSON beside the weights.

    Learning rates are per step; ``freeze`` counts stages from the input (stem, layer1..layer5, fc).
    ``target_far``: the false-accept rate at which the output is calibrated to distance 0.6.
    """

    head: str = "arcface"
    head_options: dict = field(default_factory=dict)
    center_loss: float = 0.0
    center_alpha: float = 0.5
    triplet: float = 1.0
    triplet_margin: float = 0.2
    metric_loss: float = 0.0
    epochs: int = 40
    people_per_batch: int = 8
    images_per_person: int = 4
    optimizer: str = "adamw"
    lr: float = 2e-5
    head_lr: float = 1e-2
    weight_decay: float = 1e-4
    anchor: float = 3000.0
    warmup_epochs: float = 2.0
    grad_clip: float = 5.0
    freeze: int = 0
    augment: bool = True
    val_fraction: float = 0.25
    patience: int = 15
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    target_far: float = 1e-3

    def __post_init__(self):
        if self.head not in HEAD_NAMES:
            raise ValueError(f"unknown head {self.head!r}; choose one of {list(HEAD_NAMES)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.epochs < 1 or self.people_per_batch < 2 or self.images_per_person < 1:
            raise ValueError("need epochs >= 1, people_per_batch >= 2, images_per_person >= 1")
        if not 0 < self.target_far < 1:
            raise ValueError(f"target_far must be in (0, 1), not {self.target_far}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
