"""Hard-concrete masks (Louizos et al.; EcoDiff's settings, ``algorithms.md`` §3.3) hooked into a model.

Per unit a logit λ (init 3, so m ≈ 1); per forward pass u ~ U(0, 1) and
``s = sigmoid((log(u + δ) - log(1 - u + δ) + λ) / β)``, ``m = clamp(s (ζ - γ) + γ, 0, 1)``.
``P(m > 0) = sigmoid(λ - β log(-γ / ζ))`` gives the expected number of kept parameters, the
differentiable sparsity measure (or of kept MACs, with MAC costs per unit). ``MaskSet`` is also the unrolled sampler's ``StepNoise``: it
draws u once per call and replays it when the call is recomputed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dmc.prune.structures import STRUCTURES, Unit

BETA, ZETA, GAMMA, LAMBDA_INIT = 0.83, 1.1, -0.1, 3.0


def expected_open(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(m > 0) per unit, in closed form."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


class MaskSet(nn.Module):
    """One λ vector per structure; forward pre-hooks multiply each consumer's input by the mask.

    Modes: ``"sample"`` (hard-concrete draws, training), ``"fixed"`` (given binary masks),
    ``"off"`` (identity: the unpruned model).
    """

    def __init__(self, model: nn.Module, units: list[Unit], delta: float = 0.5, seed: int = 0,
                 costs: list[float] | None = None):
        super().__init__()
        self.units = units
        self.delta = delta
        self.log_alpha = nn.ParameterList([nn.Parameter(torch.full((u.units,), LAMBDA_INIT)) for u in units])
        # what one unit weighs in the sparsity target: its parameters, or its MACs (``costs.py``)
        self.cost_per_unit = [float(c) for c in costs] if costs is not None else [float(u.params_per_unit)
                                                                                  for u in units]
        self.mode = "sample"
        self.u: list[torch.Tensor] | None = None
        self.fixed: list[torch.Tensor] | None = None
        self.gen = torch.Generator().manual_seed(seed)
        self._hooks = []
        for i, unit in enumerate(units):
            module = model.get_submodule(unit.path)
            consumer, dim = STRUCTURES[unit.kind].consumer(module)
            self._hooks.append(consumer.register_forward_pre_hook(self._hook(i, unit.unit_width, dim)))

    def _hook(self, i: int, width: int, dim: int):
        def hook(module, args):
            m = self.mask(i)
            if m is None:
                return None
            m = m.repeat_interleave(width).to(args[0].dtype)
            shape = [1] * args[0].ndim
            shape[dim] = -1
            return (args[0] * m.view(shape),) + tuple(args[1:])
        return hook

    def mask(self, i: int) -> torch.Tensor | None:
        if self.mode == "off":
            return None
        if self.mode == "fixed":
            return self.fixed[i]
        if self.u is None:
            self.draw()
        la, u = self.log_alpha[i], self.u[i]
        d = self.delta
        s = torch.sigmoid((torch.log(u + d) - torch.log(1 - u + d) + la) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    # StepNoise: one draw per sampler call, replayed on recomputation
    def draw(self) -> list[torch.Tensor]:
        eps = 1e-6
        self.u = [torch.rand(u.units, generator=self.gen).clamp(eps, 1 - eps) for u in self.units]
        return self.u

    def use(self, state: list[torch.Tensor]) -> None:
        self.u = state

    def set_fixed(self, keep: list[torch.Tensor]) -> None:
        """Binary masks, one bool/0-1 vector per structure."""
        self.fixed = [k.to(torch.float32) for k in keep]
        self.mode = "fixed"

    def expected_removed(self) -> torch.Tensor:
        """Expected removed cost (parameters or MACs, as ``cost_per_unit`` counts them)."""
        return sum(((1 - expected_open(la)) * c).sum() for la, c in zip(self.log_alpha, self.cost_per_unit))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
