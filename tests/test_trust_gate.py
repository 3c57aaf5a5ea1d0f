"""Issue 14 item 4: `dmc check` compares with the baseline's own value, not only absolute floors."""

from dmc.evaluate.gate import Thresholds, check, format_table


def doc(psnr):
    return {"format": "dmc-eval", "n": 16, "seed": 0, "paired": {"psnr_mean": psnr, "psnr_worst": psnr - 3}}


def test_psnr_drop_against_the_baseline_fails_the_noisy_rebuild():
    # the figures: a rebuild from weights with 3 % noise, paired PSNR 100 dB -> 39.7 dB
    result = check(doc(100.0), doc(39.7), Thresholds())
    assert not result["passed"]
    row = next(r for r in result["checks"] if r["name"] == "psnr_drop")
    assert row["status"] == "failed"
    table = format_table(result)
    assert "psnr_drop" in table and "FAILED" in table and "20.3 dB" in table


def test_identical_rebuild_passes():
    result = check(doc(100.0), doc(100.0), Thresholds())
    assert result["passed"], format_table(result)
    assert any(r["name"] == "psnr_drop" and r["status"] == "passed" for r in result["checks"])


def test_psnr_drop_is_overridable():
    assert check(doc(100.0), doc(39.7), Thresholds(max_psnr_drop=30.0))["passed"]
    assert check(doc(45.0), doc(39.7), Thresholds())["passed"]  # a 5.3 dB drop is within the default


def fd_doc(fd, low, high):
    return {"format": "dmc-eval", "n": 64, "seed": 0, "frechet": {"fd": fd, "ci_low": low, "ci_high": high}}


def test_fd_beyond_the_baselines_interval_fails():
    base = fd_doc(10.0, 8.0, 12.0)
    row = lambda cur, **kw: next(r for r in check(base, cur, Thresholds(**kw))["checks"]  # noqa: E731
                                  if r["name"] == "fd_above_ci")
    assert row(fd_doc(11.5, 9.0, 14.0))["status"] == "passed"  # +1.5, inside the baseline's interval
    failed = row(fd_doc(12.5, 10.0, 15.0))
    assert failed["status"] == "failed" and abs(failed["value"] - 0.5) < 1e-12
    assert "beyond its upper bound" in failed["detail"]
    assert row(fd_doc(12.5, 10.0, 15.0), max_fd_above_ci=1.0)["status"] == "passed"
    assert row(fd_doc(float("nan"), 0.0, 0.0))["status"] == "failed"
    assert not any(r["name"] == "fd_above_ci" for r in check(base, base, Thresholds(max_fd_above_ci=None))["checks"])


def test_fd_interval_check_is_skipped_without_an_interval():
    result = check(doc(100.0), doc(100.0), Thresholds())
    assert next(r for r in result["checks"] if r["name"] == "fd_above_ci")["status"] == "skipped"
    assert result["passed"]
