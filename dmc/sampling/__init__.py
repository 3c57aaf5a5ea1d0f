"""The sampling recipe and the compiled sampler (numpy only; coefficients come from ``compile``)."""

from dmc.sampling.calls import SamplerCall, initial_noise, sampler_update
from dmc.sampling.recipe import Recipe

__all__ = ["Recipe", "SamplerCall", "initial_noise", "sampler_update"]
