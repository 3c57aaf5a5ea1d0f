"""``PruneConfig``: what ``dmc compress --prune RATIO`` asks of the prune pass (torch-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dmc.errors import DmcError

METHODS = ("learned", "magnitude", "magnitude-layer")
TARGETS = ("params", "macs")


@dataclass
class PruneConfig:
    """Structural pruning of attention heads, FFN neurons and resnet inner channels.

    - ``ratio``: fraction of the model's ``target`` to remove (the result removes at least this).
    - ``target``: "params" (parameters) or "macs" (multiply-accumulates per model call: what
      pruning must cut to run faster; a UNet's parameters and its compute sit in different blocks).
    - ``align``: kept widths are multiples of this (or zero: the branch becomes its constant).
    - ``method``: "learned" (EcoDiff hard-concrete masks trained through the unrolled sampler) or
      "magnitude" (the L1 baseline: mean |w| per unit, ranked globally, same binarization) or
      "magnitude-layer" (L1 rank within each layer, so every layer loses about the same fraction).
    - ``iterations``/``samples``/``batch``/``lr``: mask training budget (learned only).
    - ``eval_samples``: held-out images for the drop against the unpruned model (PSNR, manifest).
    """

    ratio: float = 0.2
    target: str = "params"
    align: int = 8
    method: str = "learned"
    iterations: int = 60
    samples: int = 16
    batch: int = 2
    lr: float = 0.2
    dual_lr: float = 0.5
    eval_samples: int = 16
    seed: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise DmcError(f"--prune RATIO must be between 0 and 1 (exclusive), got {self.ratio}")
        if self.align < 1:
            raise DmcError(f"--prune-align must be >= 1, got {self.align}")
        if self.target not in TARGETS:
            raise DmcError(f"unknown prune target {self.target!r} (choose from {', '.join(TARGETS)})")
        if self.method not in METHODS:
            raise DmcError(f"unknown prune method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.iterations < 0 or self.samples < 1 or self.batch < 1 or self.eval_samples < 1:
            raise DmcError("--prune-iterations must be >= 0 and the sample counts >= 1")

    def to_json(self) -> dict:
        return asdict(self)
