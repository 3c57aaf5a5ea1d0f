"""Issue 14 item 6: the plan of passes in compress/, --seed reaching the quantizer, warnings kept."""

import json

import pytest


def test_int8_with_cache_implies_correction_for_api_users():
    from dmc.cache import CacheConfig
    from dmc.cache.correction import CorrectConfig
    from dmc.compress.plan import complete_plan
    from dmc.quantize import QuantizeConfig

    plan = complete_plan([CacheConfig(), QuantizeConfig()])
    assert [type(c) for c in plan] == [CacheConfig, QuantizeConfig, CorrectConfig]
    assert complete_plan(plan) == plan  # added once
    assert [type(c) for c in complete_plan([QuantizeConfig()])] == [QuantizeConfig]


def _planned(monkeypatch, run_cli, tmp_path, *flags) -> list:
    """The pass configs ``dmc compress demo FLAGS`` would compile with (the compile itself is skipped)."""
    from dmc.compress import pipeline

    seen = {}

    def capture(source, out, options):
        seen["passes"] = options.passes
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "compile_model", capture)
    run_cli("compress", "demo", "--out", tmp_path / "x.dmc", *flags)
    return seen["passes"]


def _quantize_config(monkeypatch, run_cli, tmp_path, *flags):
    return next(c for c in _planned(monkeypatch, run_cli, tmp_path, *flags) if type(c).__name__ == "QuantizeConfig")


def test_cli_seed_reaches_the_quantize_config(tmp_path, monkeypatch, run_cli):
    passes = _planned(monkeypatch, run_cli, tmp_path, "--int8", "--cache", "--seed", "7")
    assert next(c for c in passes if type(c).__name__ == "QuantizeConfig").seed == 7
    assert [type(c).__name__ for c in passes][-1] == "CorrectConfig"


@pytest.mark.parametrize("flags, want", [((), None), (("--int8-attention",), True), (("--no-int8-attention",), False)])
def test_cli_int8_attention_reaches_the_quantize_config(tmp_path, monkeypatch, run_cli, flags, want):
    quant = _quantize_config(monkeypatch, run_cli, tmp_path, "--int8", "--profile", "ov-cpu", *flags)
    assert quant.profile == "ov-cpu" and quant.attention_matmuls is want  # None: the profile decides


def test_with_seed_follows_the_recipe():
    from dmc.compress.plan import with_seed
    from dmc.quantize import QuantizeConfig

    assert with_seed([QuantizeConfig()], 5)[0].seed == 5
    assert with_seed([QuantizeConfig(seed=3)], 5)[0].seed == 3


@pytest.mark.slow
def test_pass_warnings_reach_the_manifest_and_the_terminal(tmp_path, monkeypatch, run_cli):
    from dmc.compress import pipeline

    real = pipeline.prepare

    def warn(*a, **k):
        ctx = real(*a, **k)
        ctx.warnings.append("INT8 coverage is low (test)")
        return ctx

    monkeypatch.setattr(pipeline, "prepare", warn)
    code, _, err = run_cli("compress", "demo", "--out", tmp_path / "w.dmc", "--steps", "2")
    assert code == 0, err
    assert json.loads((tmp_path / "w.dmc" / "manifest.json").read_text())["warnings"] == ["INT8 coverage is low (test)"]
    assert "dmc: warning: INT8 coverage is low (test)" in err


@pytest.mark.parametrize("flags, want", [((), False), (("--int8-stream",), True)])
def test_cli_int8_stream_reaches_the_quantize_config(tmp_path, monkeypatch, run_cli, flags, want):
    assert _quantize_config(monkeypatch, run_cli, tmp_path, "--int8", "--profile", "ov-cpu", *flags).residual_stream is want


@pytest.mark.parametrize("flags, want", [((), ("first", "last", "time_embedding")), (("--keep-float", "none"), ()),
                                         (("--keep-float", "first, *attn1*"), ("first", "*attn1*"))])
def test_cli_keep_float_reaches_the_quantize_config(tmp_path, monkeypatch, run_cli, flags, want):
    assert _quantize_config(monkeypatch, run_cli, tmp_path, "--int8", *flags).keep_float == want


@pytest.mark.parametrize("flags, message", [(("--int8-stream",), "needs --int8"),
                                            (("--keep-float", "none"), "needs --int8"),
                                            (("--int8", "--int8-stream"), "needs the ov-cpu profile")])
def test_cli_int8_stream_refuses_what_it_cannot_do_in_one_line(tmp_path, run_cli, flags, message):
    code, out, err = run_cli("compress", "demo", "--out", tmp_path / "x.dmc", *flags)
    assert code != 0 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.dmc").exists()
