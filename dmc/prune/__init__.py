"""Mask-learned structural pruning (EcoDiff-style hard-concrete masks on heads, FFN neurons and
channels, end-to-end loss through the unrolled sampler), then physical slicing. Not built yet:
see algorithms.md §3. It will plug in as a "prune" pass (``dmc.compress.passes``), and share the
unrolled, per-step-checkpointed sampler with HarmoniCa's learned router.
"""
