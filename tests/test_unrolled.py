"""The differentiable unrolled sampler: torch twin of the update, checkpointed gradients exact."""

import numpy as np
import pytest
import torch

from dmc.learn.unrolled import UnrolledSampler, torch_sampler_update
from dmc.sampling import Recipe
from dmc.sampling.calls import sampler_update
from dmc.sampling.compile import compile_calls

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
            "clip_sample": True, "timestep_spacing": "leading"}


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=8, num_class_embeds=3).double()


class OutputNoise:
    """Multiplicative noise on conv_out's input, redrawn per call (stands in for mask noise)."""

    def __init__(self, model, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        self.u = None
        model.conv_out.register_forward_pre_hook(lambda m, args: (args[0] * (1 + 0.3 * self.u),))
        self.shape = (1, model.conv_out.in_channels, 1, 1)

    def draw(self):
        self.u = torch.rand(self.shape, generator=self.gen, dtype=torch.float64)
        return self.u

    def use(self, state):
        self.u = state


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_torch_twin_matches_numpy_update(sampler):
    calls = compile_calls(Recipe(sampler=sampler, steps=6), SCHEDULE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    xt = torch.from_numpy(x).double()
    hist_np, hist_t = [], []
    for call in calls:
        out = rng.standard_normal(x.shape).astype(np.float32)
        x = sampler_update(call, x, out, hist_np)
        xt = torch_sampler_update(call, xt, torch.from_numpy(out).double(), hist_t)
        np.testing.assert_allclose(xt.numpy(), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_checkpointed_gradients_equal_naive(sampler):
    model = tiny_unet()
    model.requires_grad_(True)
    calls = compile_calls(Recipe(sampler=sampler, steps=5), SCHEDULE)
    fn = lambda x, t, class_labels: model(x, t, class_labels=class_labels, return_dict=False)[0]  # noqa: E731
    sampler_ = UnrolledSampler(fn, calls, guidance=2.0)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond, uncond = {"class_labels": torch.tensor([0, 1])}, {"class_labels": torch.tensor([2, 2])}
    target = torch.zeros_like(x)
    loss_fn = lambda y: ((y - target) ** 2).mean()  # noqa: E731

    noise = OutputNoise(model, seed=3)
    loss = loss_fn(sampler_.sample(x, cond, uncond, noise))
    loss.backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    noise.gen.manual_seed(3)
    loss_ckpt, _ = sampler_.backward(x, loss_fn, cond, uncond, noise)
    assert loss_ckpt.item() == pytest.approx(loss.item(), rel=1e-12)
    nonzero = 0
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, naive[n], rtol=1e-9, atol=1e-12, msg=n)
        nonzero += bool(naive[n].abs().sum() > 0)
    assert nonzero > len(naive) // 2  # the gradients are real, not zeros on both sides


class RedrawingNoise(OutputNoise):
    """EcoDiff's reference code's behaviour: fresh noise in the recomputation."""

    def use(self, state):
        self.draw()


def _conv_out_grad(noise_type, checkpointed):
    model = tiny_unet()
    model.requires_grad_(True)
    calls = compile_calls(Recipe(steps=3), SCHEDULE)
    labels = torch.zeros(1, dtype=torch.long)
    sampler_ = UnrolledSampler(lambda x, t: model(x, t, class_labels=labels, return_dict=False)[0], calls)
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    noise = noise_type(model, seed=5)
    if checkpointed:
        sampler_.backward(x, lambda y: y.square().mean(), noise=noise)
    else:
        sampler_.sample(x, noise=noise).square().mean().backward()
    return model.conv_out.weight.grad


def test_replaying_the_draws_is_what_makes_it_exact():
    naive = _conv_out_grad(OutputNoise, checkpointed=False)
    torch.testing.assert_close(_conv_out_grad(OutputNoise, checkpointed=True), naive, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(_conv_out_grad(RedrawingNoise, checkpointed=True), naive, rtol=1e-4)
