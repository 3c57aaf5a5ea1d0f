"""The compile side: ``compile_model(source, out, CompileOptions(...))`` and the pass registry."""

from dmc.compress.pipeline import CompileOptions, compile_model, prepare, reference_pipeline

__all__ = ["CompileOptions", "compile_model", "prepare", "reference_pipeline"]
