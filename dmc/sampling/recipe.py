"""The sampling recipe: fixed at compile time, part of the artifact's identity."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dmc.errors import DmcError
from dmc.sampling.solvers import SOLVERS

SAMPLERS = tuple(SOLVERS)


@dataclass(frozen=True)
class Recipe:
    sampler: str = "ddim"
    steps: int = 20
    guidance: float | None = 1.0  # <= 1: no classifier-free guidance; None: 2.0 for class-conditional models
    seed: int = 0  # default seed for calibration, verification and `dmc run`
    resolution: tuple[int, int] | None = None  # None: the model's sample_size

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise DmcError(f"unknown sampler {self.sampler!r} (choose from {', '.join(SAMPLERS)})")
        if not 1 <= self.steps <= 1000:
            raise DmcError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.guidance is not None and self.guidance < 0:
            raise DmcError(f"guidance must be >= 0, got {self.guidance}")

    @property
    def guided(self) -> bool:
        return self.guidance is not None and self.guidance > 1.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["resolution"] = list(self.resolution) if self.resolution else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Recipe":
        d = dict(d)
        if d.get("resolution"):
            d["resolution"] = tuple(d["resolution"])
        return cls(**d)
