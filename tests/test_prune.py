"""Structural pruning: aligned binarization, slicing == masking, constant branches, mask training, the pass."""

import json

import pytest
import torch

from dmc.errors import DmcError
from dmc.learn.unrolled import UnrolledSampler
from dmc.prune.masks import MaskSet
from dmc.prune.slicing import allowed_keeps, binarize, slice_model
from dmc.prune.structures import (ConstantAttention, ConstantBranchResnet, ConstantFeedForward, find_units,
                                  replace_module)
from dmc.prune.train import TrainOptions, learn_masks
from dmc.sampling import Recipe
from dmc.sampling.compile import compile_calls

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
            "clip_sample": True, "timestep_spacing": "leading"}


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    m = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                    norm_num_groups=4, attention_head_dim=8, num_class_embeds=3)
    _randomize(m)
    return m.double().eval().requires_grad_(False)


def tiny_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    m = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=1, out_channels=1,
                              num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=3)
    _randomize(m)
    return m.double().eval().requires_grad_(False)


def _randomize(model):
    """Fresh diffusers models zero some projections (adaLN-zero, biases): make every term count."""
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.2))


def _inputs(batch=2):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(batch, 1, 8, 8, generator=g, dtype=torch.float64), torch.tensor([700.0, 30.0][:batch]),
            torch.tensor([0, 1][:batch]))


def _run(model, x, t, c):
    return model(x, t, class_labels=c, return_dict=False)[0]


@pytest.fixture(params=["unet", "dit"])
def family_model(request):
    return request.param, tiny_unet() if request.param == "unet" else tiny_dit()


def test_registry_finds_each_family_structure(family_model):
    family, model = family_model
    kinds = {u.kind for u in find_units(model, family)}
    assert kinds == ({"heads", "resnet"} if family == "unet" else {"heads", "ffn"})
    with pytest.raises(DmcError, match="does not support"):
        find_units(model, "policy")


def test_binarize_aligned_and_meets_target():
    model = tiny_unet()
    units = find_units(model, "unet")
    total = sum(p.numel() for p in model.parameters())
    scores = [torch.randn(u.units, generator=torch.Generator().manual_seed(i)) for i, u in enumerate(units)]
    for align in (1, 8):
        keep = binarize(units, scores, 0.25 * total, align)
        removed = sum(int((~k).sum()) * u.params_per_unit for u, k in zip(units, keep))
        assert removed >= 0.25 * total
        for u, k in zip(units, keep):
            assert int(k.sum()) in allowed_keeps(u, align)
            width = int(k.sum()) * u.unit_width
            assert width == u.units * u.unit_width or width % align == 0
        # minimal: the last chunk taken was needed (undoing the smallest chunk misses the target)
        smallest = min(u.params_per_unit * (allowed_keeps(u, align)[0] - allowed_keeps(u, align)[1])
                       for u, k in zip(units, keep) if not k.all())
        assert removed - smallest < 0.25 * total + max(u.params_per_unit for u in units) * 8
    with pytest.raises(DmcError, match="cannot remove"):
        binarize(units, scores, 2.0 * total, 8)


def _macs_of(model):
    from dmc.prune.costs import count_macs

    x, t, c = _inputs(1)
    return count_macs(lambda: _run(model, x, t, c))


def _unit_macs(model, units):
    from dmc.prune.costs import unit_costs

    x, t, c = _inputs(1)
    return unit_costs(model, units, "macs", lambda: _run(model, x, t, c))


def test_mac_costs_are_exact_for_any_slicing(family_model):
    """A unit's measured MACs are what slicing it saves: any binarization's pruned model runs exactly
    ``total - sum(removed units x cost)`` MACs per call (linear in the units, attention included)."""
    family, model = family_model
    units = find_units(model, family)
    costs, total = _unit_macs(model, units)
    assert total == _macs_of(model) and all(c > 0 for c in costs)
    if family == "unet":  # one unit of the 8x8 block costs 4x its parameters' worth at 4x4 (same width)
        hi, lo = (next(i for i, u in enumerate(units) if u.path == p) for p in ("down_blocks.0.resnets.0",
                                                                                "down_blocks.1.resnets.0"))
        assert costs[hi] / units[hi].params_per_unit > 3 * costs[lo] / units[lo].params_per_unit
    for seed in range(3):
        scores = [torch.randn(u.units, generator=torch.Generator().manual_seed(seed * 100 + i))
                  for i, u in enumerate(units)]
        keep = binarize(units, scores, 0.3 * total, 2, costs)
        pruned, _ = slice_model(model, units, keep)
        predicted = total - sum(int((~k).sum()) * c for k, c in zip(keep, costs))
        assert _macs_of(pruned) == predicted <= 0.7 * total


def test_mac_target_cuts_more_compute_than_the_parameter_target():
    """At the same ratio and scores, the MAC target removes the MACs asked for; the parameter target
    does not (the tiny UNet's parameters sit in its low-resolution block, as real UNets' do)."""
    model = tiny_unet()
    units = find_units(model, "unet")
    costs, total_macs = _unit_macs(model, units)
    params = sum(p.numel() for p in model.parameters())
    scores = [torch.zeros(u.units) for u in units]  # no preference: only the targets differ
    by_macs = _macs_of(slice_model(model, units, binarize(units, scores, 0.3 * total_macs, 2, costs))[0])
    by_params = _macs_of(slice_model(model, units, binarize(units, scores, 0.3 * params, 2))[0])
    assert by_macs <= 0.7 * total_macs < by_params


def test_sliced_model_equals_masked_model(family_model):
    family, model = family_model
    units = find_units(model, family)
    total = sum(p.numel() for p in model.parameters())
    scores = [torch.randn(u.units, generator=torch.Generator().manual_seed(10 + i)) for i, u in enumerate(units)]
    keep = binarize(units, scores, 0.3 * total, 2)
    assert any(0 < k.sum() < len(k) for k in keep)  # partial slicing is exercised
    masks = MaskSet(model, units)
    masks.set_fixed(keep)
    x, t, c = _inputs()
    masked = _run(model, x, t, c)
    masks.remove()
    pruned, records = slice_model(model, units, keep)
    assert sum(p.numel() for p in pruned.parameters()) <= 0.7 * total
    assert sum(r["params_removed"] for r in records) == total - sum(p.numel() for p in pruned.parameters())
    torch.testing.assert_close(_run(pruned, x, t, c), masked, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(_run(model, x, t, c), masked, atol=1e-3)  # the masks did change the output


@pytest.mark.parametrize("family,path,kind,const", [
    ("unet", "down_blocks.1.attentions.0", "heads", ConstantAttention),
    ("unet", "down_blocks.0.resnets.0", "resnet", ConstantBranchResnet),
    ("unet", "up_blocks.0.resnets.1", "resnet", ConstantBranchResnet),  # has a conv shortcut
    ("dit", "transformer_blocks.0.attn1", "heads", ConstantAttention),
    ("dit", "transformer_blocks.1.ff", "ffn", ConstantFeedForward),
])
def test_fully_pruned_branch_is_its_constant_output(family, path, kind, const):
    model = tiny_unet() if family == "unet" else tiny_dit()
    units = find_units(model, family)
    keep = [torch.ones(u.units, dtype=torch.bool) for u in units]
    i = next(j for j, u in enumerate(units) if u.path == path)
    assert units[i].kind == kind
    keep[i][:] = False
    masks = MaskSet(model, units)
    masks.set_fixed(keep)
    x, t, c = _inputs()
    masked = _run(model, x, t, c)
    masks.remove()
    pruned, records = slice_model(model, units, keep)
    assert isinstance(pruned.get_submodule(path), const) and records[i]["constant"]
    torch.testing.assert_close(_run(pruned, x, t, c), masked, rtol=1e-10, atol=1e-10)
    # EcoDiff's reference code swaps in a pass-through (the branch's input) instead; dropping the
    # resnet branch as if it were identity keeps only the shortcut. Both are different models.
    wrong = slice_model(model, units, keep)[0]
    if const is ConstantBranchResnet:
        wrong.get_submodule(path).bias.zero_()
    else:
        replace_module(wrong, path, PassThrough())
    assert not torch.allclose(_run(wrong, x, t, c), masked, atol=1e-4)


class PassThrough(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _trained(ratio, iterations, seed=0, dead=None):
    from dmc.models.adapters import make_adapter

    model = tiny_unet().float()
    if dead is not None:  # a group the output does not depend on: conv2 ignores its channels
        path, group = dead
        block = model.get_submodule(path)
        width = block.conv2.in_channels // block.norm2.num_groups
        block.conv2.weight.data[:, group * width:(group + 1) * width] = 0
    adapter = make_adapter(model, "UNet2DModel")
    units = find_units(model, "unet")
    total = sum(p.numel() for p in model.parameters())
    masks = MaskSet(model, units, seed=seed)
    calls = compile_calls(Recipe(steps=3), SCHEDULE)
    log = learn_masks(adapter, masks, calls, 2.0, (1, 8, 8), total, ratio,
                      TrainOptions(iterations=iterations, samples=4, batch=2, lr=0.2, seed=seed))
    return model, units, masks, log, total


def test_mask_training_reaches_target_ratio():
    model, units, masks, log, total = _trained(0.3, 40)
    removed = log["curve"]["removed_expected"]
    assert removed[0] < 0.05  # λ = 3 starts with (almost) every unit open
    assert abs(removed[-1] - 0.3) < 0.06  # the Lagrangian brought the expectation to the target
    assert log["recon_last"] > 0  # pruning costs something, and the loss sees it
    keep = binarize(units, [la.detach() for la in masks.log_alpha], 0.3 * total, 8)
    masks.remove()
    pruned, _ = slice_model(model, units, keep)
    kept = sum(p.numel() for p in pruned.parameters()) / total
    assert 0.6 < kept <= 0.7


def test_mask_training_reaches_a_mac_target():
    from dmc.models.adapters import make_adapter

    model = tiny_unet()
    units = find_units(model, "unet")
    costs, total = _unit_macs(model, units)
    adapter = make_adapter(model.float(), "UNet2DModel")
    masks = MaskSet(model, units, seed=0, costs=costs)
    log = learn_masks(adapter, masks, compile_calls(Recipe(steps=3), SCHEDULE), 2.0, (1, 8, 8), total, 0.3,
                      TrainOptions(iterations=60, samples=4, batch=2, lr=0.2, seed=0))
    removed = log["curve"]["removed_expected"]
    # a few units carry most of a tiny model's MACs, so the dual ascent swings wider than on parameters
    assert removed[0] < 0.05 and max(removed) > 0.3 and abs(sum(removed[-10:]) / 10 - 0.3) < 0.1
    keep = binarize(units, [la.detach() for la in masks.log_alpha], 0.3 * total, 8, costs)
    masks.remove()
    pruned, _ = slice_model(model, units, keep)
    x, t, c = _inputs(1)
    from dmc.prune.costs import count_macs

    assert 0.55 < count_macs(lambda: _run(pruned, x.float(), t, c)) / total <= 0.7


def test_reconstruction_gradient_reaches_every_live_unit_and_no_dead_one():
    """The final-sample loss reaches the logits through the whole checkpointed sampler: every unit
    gets a gradient except one the output does not depend on (conv2 ignores its channels)."""
    from dmc.models.adapters import make_adapter

    path, dead = "up_blocks.0.resnets.0", 1
    model = tiny_unet().float()
    block = model.get_submodule(path)
    width = block.conv2.in_channels // block.norm2.num_groups
    block.conv2.weight.data[:, dead * width:(dead + 1) * width] = 0
    adapter = make_adapter(model, "UNet2DModel")
    units = find_units(model, "unet")
    masks = MaskSet(model, units, seed=0)
    for la in masks.log_alpha:  # mid-range logits: the hard-concrete mask is not clamped at 1
        la.data.fill_(0.0)
    sampler = UnrolledSampler(adapter, compile_calls(Recipe(steps=3), SCHEDULE), 2.0)
    x, _, c = _inputs()
    x = x.float()
    sampler.backward(x, lambda y: y.square().mean(), {"class_labels": c}, {"class_labels": torch.full((2,), 2)},
                     masks)
    for u, la in zip(units, masks.log_alpha):
        g = la.grad
        if u.path == path:
            assert g[dead] == 0 and (g[torch.arange(len(g)) != dead] != 0).all()
        else:
            assert (g != 0).all(), u.path


@pytest.mark.slow
def test_compress_prune_end_to_end(tmp_path, run_cli):
    out = tmp_path / "p.dmc"
    code, stdout, err = run_cli("compress", "demo", "--prune", "0.2", "--prune-iterations", "2", "--prune-samples",
                                "4", "--steps", "3", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    record = next(p for p in manifest["passes"] if p["name"] == "prune")
    assert manifest["model"]["parameters"] == record["params_after"] <= 0.8 * record["params_before"]
    assert manifest["verification"]["psnr_db"] >= manifest["verification"]["floor_psnr_db"]  # export fidelity
    assert record["layers"] and all(r["kept_width"] % 8 == 0 for r in record["layers"])
    assert 0 < record["quality_vs_unpruned"]["psnr_db"] < 100
    assert record["target"] == "params" and record["macs_after"] < record["macs_before"]
    code, text, _ = run_cli("inspect", out)
    assert code == 0 and "prune      learned" in text and record["layers"][0]["module"] in text

    from dmc.runtimes import load

    images = load(out)(n=2, seed=0)
    assert images.shape == (2, 16, 16, 1)


@pytest.mark.slow
def test_compress_prune_mac_target(tmp_path, run_cli):
    out = tmp_path / "m.dmc"
    code, _, err = run_cli("compress", "demo", "--prune", "0.2", "--prune-target", "macs", "--prune-iterations",
                           "2", "--prune-samples", "4", "--steps", "3", "--verify-images", "1", "--out", out)
    assert code == 0, err
    record = next(p for p in json.loads((out / "manifest.json").read_text())["passes"] if p["name"] == "prune")
    assert record["target"] == "macs" and record["macs_ratio"] <= 0.8
    code, text, _ = run_cli("inspect", out)
    assert code == 0 and "M MACs per call" in text and "target macs" in text


def test_compress_prune_bad_ratio(tmp_path, run_cli):
    out = tmp_path / "bad.dmc"
    code, _, err = run_cli("compress", "demo", "--prune", "1.5", "--out", out)
    assert code == 2 and "RATIO must be between 0 and 1" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
