"""The differentiable unrolled sampler: the call table in torch, with per-step checkpointing.

``torch_sampler_update`` is the torch twin of :func:`dmc.sampling.calls.sampler_update` (same
coefficients, same history rule), so gradients flow through exactly the sampler the artifact
runs. ``UnrolledSampler.backward`` is EcoDiff's timestep gradient checkpointing
(``algorithms.md`` §3.5): a no-grad forward keeps only each call's input state, then each call
is recomputed with grad from the last to the first, feeding the state gradient back, so
activation memory is one call's, whatever the number of calls. Any stochastic part of the
model (hard-concrete mask noise) is drawn once per call on the way forward and replayed in
the recomputation, which makes the checkpointed gradient equal to the naive one.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from dmc.sampling.calls import SamplerCall, default_labels


def conditions(adapter, n: int, first: int = 0) -> tuple[dict, dict]:
    """Conditioning tensors the runtime would feed for images ``first..first+n-1`` (and their unconditional twin)."""
    cond = adapter.conditioning()
    if cond.kind == "class":
        labels = torch.from_numpy(default_labels(n, cond.num_classes, first))
        return {"class_labels": labels}, {"class_labels": torch.full((n,), cond.null_class, dtype=torch.long)}
    if cond.kind == "embedding":
        z = torch.zeros(n, *cond.embedding_shape)
        return {"encoder_hidden_states": z}, {"encoder_hidden_states": z}
    return {}, {}


class StepNoise(Protocol):
    """Per-call randomness of the model: ``draw()`` samples and applies new noise and returns it;
    ``use(state)`` re-applies noise drawn earlier."""

    def draw(self) -> Any: ...

    def use(self, state: Any) -> None: ...


def torch_sampler_update(call: SamplerCall, x: torch.Tensor, out: torch.Tensor, history: list) -> torch.Tensor:
    """``sampler_update`` in torch ops (differentiable; computes in ``x``'s dtype).
    ``history`` holds earlier data predictions, newest first, and is updated in place."""
    d = call.d_x * x + call.d_out * out
    if call.clip is not None:
        d = d.clamp(-call.clip, call.clip)
    history.insert(0, d)
    del history[len(call.c):]
    x_next = call.a * x
    if call.b:
        x_next = x_next + call.b * (call.e_x * x + call.e_out * out)
    for c, dj in zip(call.c, history):
        if c:
            x_next = x_next + c * dj
    return x_next


class UnrolledSampler:
    """``model(sample, timestep, **cond) -> prediction`` driven through ``calls``.

    The state between calls is ``(x, D_{k-1}, ..., D_{k-H})``: the latent and the data
    predictions a multistep solver still needs (H = longest history any call reads, minus one).
    Under guidance the batch is doubled as the runtime does, ``[uncond; cond]``.
    """

    def __init__(self, model: Callable, calls: list[SamplerCall], guidance: float | None = None):
        from dmc.errors import DmcError
        from dmc.sampling.calls import is_stochastic

        if is_stochastic(calls):
            raise DmcError("learning through the sampler needs a deterministic sampler (not ddpm): use ddim")
        self.model = model
        self.calls = calls
        self.guidance = guidance if guidance is not None and guidance > 1.0 else None
        self.history_len = max(len(c.c) for c in calls) - 1

    def predict(self, k: int, x: torch.Tensor, cond: dict, uncond: dict) -> torch.Tensor:
        """Call ``k``'s (guided) model prediction at state latent ``x``."""
        call = self.calls[k]
        if self.guidance is None:
            t = torch.full((len(x),), call.timestep, dtype=torch.float32)
            return self.model(x, t, **cond).to(x.dtype)
        n = len(x)
        feed = {name: torch.cat([uncond[name], v]) for name, v in cond.items()}
        t = torch.full((2 * n,), call.timestep, dtype=torch.float32)
        out = self.model(torch.cat([x, x]), t, **feed).to(x.dtype)
        return out[:n] + self.guidance * (out[n:] - out[:n])

    def initial_state(self, x: torch.Tensor) -> tuple:
        return (x,) + tuple(torch.zeros_like(x) for _ in range(self.history_len))

    def step(self, k: int, state: tuple, cond: dict, uncond: dict) -> tuple:
        """One model call and its update: state in, state out."""
        return self.advance(k, state, self.predict(k, state[0], cond, uncond))

    def advance(self, k: int, state: tuple, out: torch.Tensor) -> tuple:
        """Call ``k``'s sampler update from ``state`` with the model prediction ``out``."""
        x = state[0]
        history = list(state[1:])
        x_next = torch_sampler_update(self.calls[k], x, out, history)
        history += [torch.zeros_like(x)] * (self.history_len - len(history))
        return (x_next,) + tuple(history[: self.history_len])

    def sample(self, x: torch.Tensor, cond: dict | None = None, uncond: dict | None = None,
               noise: StepNoise | None = None) -> torch.Tensor:
        """The final sample, with the whole unrolled graph kept (the naive way: memory grows with K)."""
        state = self.initial_state(x)
        for k in range(len(self.calls)):
            if noise is not None:
                noise.draw()
            state = self.step(k, state, cond or {}, uncond or {})
        return state[0]

    def backward(self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], cond: dict | None = None,
                 uncond: dict | None = None, noise: StepNoise | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate d loss_fn(final sample) / d parameters into ``.grad`` with per-step checkpointing.

        Returns ``(loss, final sample)``, both detached. Gradients equal ``loss_fn(self.sample(...))
        .backward()`` given the same noise draws.
        """
        cond, uncond = cond or {}, uncond or {}
        states, draws = [], []
        state = self.initial_state(x.detach())
        with torch.no_grad():
            for k in range(len(self.calls)):
                states.append(state)
                draws.append(noise.draw() if noise is not None else None)
                state = self.step(k, state, cond, uncond)
        final = state[0].detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(final)
            loss.backward()
        grads = (final.grad,) + tuple(torch.zeros_like(s) for s in state[1:])
        for k in reversed(range(len(self.calls))):
            inputs = tuple(s.detach().requires_grad_(True) for s in states[k])
            if noise is not None:
                noise.use(draws[k])
            with torch.enable_grad():
                outputs = self.step(k, inputs, cond, uncond)
                pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            grads = tuple(i.grad if i.grad is not None else torch.zeros_like(i) for i in inputs)
            states[k] = None  # free the stored state as soon as it is consumed
        return loss.detach(), final.detach()
