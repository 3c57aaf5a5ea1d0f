"""dmc: a diffusion-model compression compiler.

The compile side (``dmc.compress`` and the passes) needs torch and diffusers; the
runtime side (``dmc.runtimes``) needs only numpy and an executor such as ONNX Runtime.
"""

__version__ = "0.1.0"
