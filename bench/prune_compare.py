"""Exploratory learned-vs-magnitude comparison in torch only (no export), as run for BENCHMARKS.md #12.

    python bench/prune_compare.py MODEL FAMILY ITERATIONS STEPS DUAL_LR RATIO LR
    e.g. python bench/prune_compare.py demo unet 60 10 0.5 0.2 0.2

Trains masks (batch 4, 16 samples) on DDIM STEPS with guidance 2, then binarizes learned logits and the
global-L1 magnitude scores to RATIO and prints paired PSNR of 32 held-out final samples (noise seed 7,
images 1000..1031) against the unpruned model.
"""
import sys, time, torch
from dmc.models.loading import load_model
from dmc.models.adapters import make_adapter
from dmc.prune.structures import find_units
from dmc.prune.masks import MaskSet
from dmc.prune.slicing import binarize, slice_model
from dmc.learn.unrolled import conditions
from dmc.prune.train import learn_masks, TrainOptions
from dmc.learn.unrolled import UnrolledSampler
from dmc.sampling import Recipe
from dmc.sampling.compile import compile_calls
from dmc.models.builtin import SCHEDULER_CONFIG
torch.set_num_threads(1)
name, fam = sys.argv[1], sys.argv[2]
it = int(sys.argv[3]); steps=int(sys.argv[4]); dual=float(sys.argv[5]); ratio=float(sys.argv[6])
lm = load_model(name); ad = make_adapter(lm.model)
units = find_units(ad.model, fam)
total = sum(p.numel() for p in ad.model.parameters())
calls = compile_calls(Recipe(steps=steps), SCHEDULER_CONFIG)
ms = MaskSet(ad.model, units)
log = learn_masks(ad, ms, calls, 2.0, ad.sample_shape, total, ratio, TrainOptions(iterations=it, batch=4, dual_lr=dual, lr=float(sys.argv[7])))
print({k: v for k, v in log.items() if k != "curve"})
c = log["curve"]; print(c["recon"][::max(1,it//10)], c["removed_expected"][::max(1,it//10)], c["mu"][::max(1,it//10)])
# evaluate: learned vs magnitude
from dmc.prune.structures import STRUCTURES
sampler = UnrolledSampler(lambda x, t, **cc: ad(x, t, **cc), calls, 2.0)
from dmc.sampling.calls import initial_noise
n=32
x = torch.from_numpy(initial_noise(7, n, ad.sample_shape, 1000)); cond, unc = conditions(ad, n)
ms.mode="off"
with torch.no_grad(): ref = sampler.sample(x, cond, unc)
ms.remove()
def psnr(a,b):
    a=a.clamp(-1,1); b=b.clamp(-1,1); r=((a-b)/2).square().mean().sqrt(); return float(-20*torch.log10(r))
for label, scores in (("learned", [l.detach() for l in ms.log_alpha]),
                      ("magnitude", [STRUCTURES[u.kind].magnitude(ad.model.get_submodule(u.path), u) for u in units])):
    keep = binarize(units, scores, ratio*total, 8)
    pruned, rec = slice_model(ad.model, units, keep)
    pad = make_adapter(pruned, lm.class_name)
    s2 = UnrolledSampler(lambda x, t, **cc: pad(x, t, **cc), calls, 2.0)
    with torch.no_grad(): out = s2.sample(x, cond, unc)
    print(label, sum(p.numel() for p in pruned.parameters())/total, "psnr", psnr(out, ref), [ (r['module'], r['kept'], r['units']) for r in rec if r['kept']<r['units']])
