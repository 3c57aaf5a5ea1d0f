"""Diffusion policies (robot action chunks): LeRobot's saved layout in, a policy artifact out.

``lerobot.py`` reads a folder saved by LeRobot (config, weights, normalisation statistics) without
LeRobot; ``unet1d.py`` is Diffusion Policy's conditional 1D UNet with LeRobot's module names;
``model.py`` the denoiser and observation-encoder modules the graphs are exported from;
``compile.py`` the compile (``dmc compress POLICY_FOLDER`` routes here, ``dmc.compress.sources``).
The runtime side is ``dmc.runtimes.policy`` (``load(artifact).act(observations)``, no torch).
"""
