"""Optimising a few parameters through the whole sampling run (compile side, torch).

``unrolled.UnrolledSampler`` runs a recipe's call table in torch with gradients and per-step
gradient checkpointing; mask-learned pruning (``dmc.prune``) uses it, and a learned cache router
would too. Nothing here changes the artifact or the runtime.
"""
