"""``dmc check`` logic on hand-made measurement documents: thresholds, pyproject table, JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from dmc.errors import DmcError
from dmc.evaluate.cli import check_cmd
from dmc.evaluate.evaluate import batch_plan
from dmc.evaluate.gate import Thresholds, check, format_table, load_thresholds, merge_documents, write_junit


def _eval(fd=10.0, psnr=40.0, acc=0.9, n=1000, seed=0):
    return {"format": "dmc-eval", "n": n, "seed": seed,
            "paired": {"psnr_mean": psnr, "psnr_worst": psnr - 5, "ssim_mean": 0.99},
            "frechet": {"fd": fd, "ci_low": fd - 2, "ci_high": fd + 3, "features": "digits-cnn-v1"},
            "classifier": {"accuracy": acc}}


def _bench(ms=10.0, noise=0.02, target="a.dmc"):
    return {"format": "dmc-bench", "artifact": {"target": target, "kind": "artifact",
                                                "end_to_end_per_image": {"median_ms": ms, "noise": noise}},
            "vs": None, "ratio": None}


def _status(result):
    return {r["name"]: r["status"] for r in result["checks"]}


def test_identical_measurements_pass():
    doc = merge_documents([_eval(), _bench()])
    result = check(doc, doc, Thresholds())
    assert result["passed"] and set(_status(result).values()) == {"passed"}


@pytest.mark.parametrize("current, failing", [
    (dict(fd=12.5), "fd_increase"),
    (dict(psnr=20.0), "min_psnr"),
    (dict(acc=0.8), "accuracy_drop"),
])
def test_quality_regressions_fail(current, failing):
    result = check(_eval(), _eval(**current), Thresholds())
    assert not result["passed"] and _status(result)[failing] == "failed"
    also = {"min_psnr": ["psnr_drop"]}.get(failing, [])  # a PSNR below the floor is also a drop vs the baseline
    assert [n for n, s in _status(result).items() if s == "failed"] == [failing, *also] or \
        sorted(n for n, s in _status(result).items() if s == "failed") == sorted([failing, *also])


def test_latency_limit_uses_tolerance_or_measured_noise():
    base = _bench(10.0, noise=0.02)
    assert _status(check(base, _bench(12.0), Thresholds()))["latency_ratio"] == "passed"  # 1.20 <= 1.1 x (1 + 0.10)
    assert _status(check(base, _bench(12.2), Thresholds()))["latency_ratio"] == "failed"  # 1.22 > 1.21
    noisy = _bench(12.2, noise=0.2)  # noisy runs widen the tolerance to their measured spread
    assert _status(check(base, noisy, Thresholds()))["latency_ratio"] == "passed"


def test_interleaved_ratio_is_preferred_when_bench_ran_vs_an_artifact():
    cur = _bench(30.0, target="b.dmc")  # separate-run ratio would be 3.0
    cur["vs"] = {"target": "a.dmc", "kind": "artifact", "end_to_end_per_image": {"median_ms": 29.0}}
    cur["ratio"] = {"end_to_end": {"median": 1.03, "noise": 0.01, "pairs": 20}}
    row = next(r for r in check(_bench(10.0), cur, Thresholds())["checks"] if r["name"] == "latency_ratio")
    assert row["status"] == "passed" and "interleaved" in row["detail"]
    cur["vs"]["kind"] = "model"  # interleaved against torch eager says nothing about the baseline
    row = next(r for r in check(_bench(10.0), cur, Thresholds())["checks"] if r["name"] == "latency_ratio")
    assert row["status"] == "failed" and "separate runs" in row["detail"]


def test_missing_sections_are_skipped_and_notes_flag_mismatched_n():
    result = check(_eval(n=500), _eval(n=1000), Thresholds())
    assert _status(result)["latency_ratio"] == "skipped" and result["passed"]
    assert any("n differs" in n for n in result["notes"])
    assert "SKIPPED" in format_table(result)


def test_thresholds_from_pyproject_and_flags(tmp_path):
    py = tmp_path / "pyproject.toml"
    py.write_text("[project]\nname='x'\n[tool.dmc.check]\nmin_psnr = 35\nmax-fd-increase = 1.5\n"
                  "max_latency_ratio = false\n")
    t, source = load_thresholds({}, py)
    assert (t.min_psnr, t.max_fd_increase, t.max_latency_ratio) == (35.0, 1.5, None) and "tool.dmc.check" in source
    t, source = load_thresholds({"min_psnr": 20.0, "max_fd_increase": "off"}, py)
    assert (t.min_psnr, t.max_fd_increase) == (20.0, None) and "flags" in source
    t, source = load_thresholds({}, tmp_path / "missing.toml")
    assert t == Thresholds() and source == "defaults"
    py.write_text("[tool.dmc.check]\nmin_psrn = 3\n")
    with pytest.raises(DmcError, match="unknown key"):
        load_thresholds({}, py)


def test_junit_is_valid_with_one_testcase_per_threshold(tmp_path):
    result = check(merge_documents([_eval(), _bench()]), _eval(fd=20.0), Thresholds(min_psnr_worst=30.0))
    path = tmp_path / "junit.xml"
    write_junit(result, path)
    suite = ET.parse(path).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"fd_increase", "fd_above_ci", "min_psnr", "min_psnr_worst", "accuracy_drop", "psnr_drop",
                          "latency_ratio"}
    assert cases["fd_increase"].find("failure") is not None and cases["latency_ratio"].find("skipped") is not None
    assert cases["fd_above_ci"].find("failure") is not None  # FD 20 against the baseline's 10 [8, 13]
    assert suite.get("tests") == "7" and suite.get("failures") == "2" and suite.get("skipped") == "1"


def test_check_cli_reads_pyproject_in_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.json").write_text(json.dumps(_eval()))
    (tmp_path / "cur.json").write_text(json.dumps(_eval(psnr=30.0)))
    runner = CliRunner()
    assert runner.invoke(check_cmd, ["--baseline", "base.json", "cur.json"]).exit_code == 0  # default 25 dB
    (tmp_path / "pyproject.toml").write_text("[tool.dmc.check]\nmin_psnr = 35\n")
    res = runner.invoke(check_cmd, ["--baseline", "base.json", "cur.json", "--junit", "j.xml"])
    assert res.exit_code == 1 and "min_psnr" in res.stdout and "FAILED" in res.stdout
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "1"
    res = runner.invoke(check_cmd, ["--baseline", "base.json", "cur.json", "--min-psnr", "25"])
    assert res.exit_code == 0
    res = runner.invoke(check_cmd, ["--baseline", "base.json", "nope.json"])
    assert isinstance(res.exception, DmcError)
    (tmp_path / "bad.json").write_text("{\"format\": \"other\"}")
    res = runner.invoke(check_cmd, ["--baseline", "base.json", "bad.json"])
    assert isinstance(res.exception, DmcError) and "not a dmc measurement" in str(res.exception)


def test_batch_plan_shards_whole_batches_in_order():
    for n, bs, world in ((10, 3, 2), (12, 4, 3), (5, 8, 2), (7, 1, 4)):
        plans = [batch_plan(n, bs, r, world) for r in range(world)]
        flat = [b for p in plans for b in p]
        assert flat == batch_plan(n, bs) and sum(c for _, c in flat) == n
        assert plans[0]  # rank 0 always samples


def test_console_script_exits_nonzero_when_the_gate_fails(tmp_path):
    """The installed `dmc` entry point, not click's test runner: a failed gate must fail the user's CI."""
    import subprocess
    import sys

    (tmp_path / "base.json").write_text(json.dumps(_eval()))
    (tmp_path / "cur.json").write_text(json.dumps(_eval(psnr=30.0)))
    argv = [sys.executable, "-m", "dmc.cli", "check", "--baseline", "base.json", "cur.json"]
    failed = subprocess.run(argv + ["--min-psnr", "35"], cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode == 1 and "FAILED" in failed.stdout
    passed = subprocess.run(argv + ["--min-psnr", "25"], cwd=tmp_path, capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr
