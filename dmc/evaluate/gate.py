"""``dmc check``: compare a measurement with a baseline against thresholds (the CI regression gate).

A measurement document is what ``dmc eval --json`` or ``dmc bench --json`` print, or both
merged (``{"format": "dmc-measurement", "eval": {...}, "bench": {...}}``, what
``dmc check ARTIFACT --write-baseline PATH`` writes). Thresholds come from flags, else the
``[tool.dmc.check]`` table of ``./pyproject.toml``, else the defaults below.
"""

from __future__ import annotations

import json
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dmc.errors import DmcError

MEASUREMENT_FORMAT = "dmc-measurement"


@dataclass
class Thresholds:
    """What counts as a regression. ``None`` switches a check off.

    ``max_fd_increase`` is absolute (current FD - baseline FD) at the same N and seed (see
    BENCHMARKS.md for the noise floor). Latency fails when the per-image time ratio exceeds
    ``max_latency_ratio * (1 + tol)``, ``tol = max(latency_tolerance, measured noise)``. The ratio is
    the interleaved one when the current bench ran ``--vs`` another artifact (the baseline artifact
    rebuilt in the same job: the robust way; noise = half the p10-p90 spread of the pair ratios),
    else current / baseline median of separate runs (noise = the larger relative p90-median spread).
    """

    max_fd_increase: float | None = 2.0
    # FD against the baseline's own uncertainty: fail when the current FD lies above the upper end of the
    # baseline's bootstrap interval by more than this (same N and seeds: an unchanged model reproduces it).
    max_fd_above_ci: float | None = 0.0
    min_psnr: float | None = 25.0
    min_psnr_worst: float | None = None
    min_ssim: float | None = None
    max_accuracy_drop: float | None = 0.05
    # Regression against the baseline's own PSNR (paired, vs the torch reference): fail when the current
    # mean drops more than this many dB below it. Above ``psnr_ceiling`` PSNR is float noise, so the
    # baseline counts as at most that (a 100 dB -> 70 dB rebuild is not a regression, 100 -> 40 is).
    max_psnr_drop: float | None = 10.0
    psnr_ceiling: float = 60.0
    max_latency_ratio: float | None = 1.10
    latency_tolerance: float = 0.10
    # Policies: the task success rate over the same seeded episodes (an unchanged artifact reproduces it
    # exactly). The drop allowed is absolute (0.10 = ten points); the floor is off unless set.
    max_success_drop: float | None = 0.10
    min_success_rate: float | None = None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def load_thresholds(overrides: dict | None = None,
                    pyproject: str | Path | None = "pyproject.toml") -> tuple[Thresholds, str]:
    """Defaults <- ``[tool.dmc.check]`` of ``pyproject`` (if it exists) <- ``overrides`` (non-None values).

    Returns the thresholds and a note on where they came from.
    """
    values = asdict(Thresholds())
    source = "defaults"
    if pyproject is not None and Path(pyproject).is_file():
        try:
            data = tomllib.loads(Path(pyproject).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise DmcError(f"{pyproject}: cannot read TOML ({e})") from None
        table = data.get("tool", {}).get("dmc", {}).get("check")
        if table is not None:
            if not isinstance(table, dict):
                raise DmcError(f"{pyproject}: [tool.dmc.check] must be a table")
            unknown = sorted(set(k.replace("-", "_") for k in table) - set(values))
            if unknown:
                raise DmcError(f"{pyproject}: unknown key(s) in [tool.dmc.check]: {', '.join(unknown)} "
                               f"(known: {', '.join(Thresholds.names())})")
            for k, v in table.items():
                k = k.replace("-", "_")
                if v is not False and not isinstance(v, (int, float)):
                    raise DmcError(f"{pyproject}: [tool.dmc.check] {k} must be a number or false (off)")
                values[k] = None if v is False else float(v)
            source = f"{pyproject} [tool.dmc.check]"
    for k, v in (overrides or {}).items():
        if v is not None:  # "off" switches a check off
            values[k] = None if isinstance(v, str) and v.lower() == "off" else float(v)
            source = source if "flags" in source else f"{source} + flags"
    if values["latency_tolerance"] is None:
        values["latency_tolerance"] = 0.0
    return Thresholds(**values), source


# --- documents ------------------------------------------------------------------------


def split_document(doc: dict, name: str = "document") -> dict:
    """Any of eval / bench / merged -> ``{"eval": ... | None, "bench": ... | None}``."""
    if not isinstance(doc, dict):
        raise DmcError(f"{name}: not a JSON object")
    fmt = doc.get("format")
    if fmt == MEASUREMENT_FORMAT:
        return {"eval": doc.get("eval"), "bench": doc.get("bench")}
    if fmt == "dmc-eval":
        return {"eval": doc, "bench": None}
    if fmt == "dmc-bench":
        return {"eval": None, "bench": doc}
    raise DmcError(f"{name}: not a dmc measurement (expected the JSON of `dmc eval --json`, `dmc bench --json` "
                   "or `dmc check ARTIFACT --write-baseline`)")


def merge_documents(docs: list[dict], names: list[str] | None = None) -> dict:
    """Merge several eval/bench/merged documents into one ``dmc-measurement`` (later ones win)."""
    merged = {"format": MEASUREMENT_FORMAT, "format_version": 1, "eval": None, "bench": None}
    for i, doc in enumerate(docs):
        parts = split_document(doc, (names or [])[i] if names and i < len(names) else f"document {i + 1}")
        for k in ("eval", "bench"):
            if parts[k] is not None:
                merged[k] = parts[k]
    return merged


def read_documents(paths: list[str | Path]) -> dict:
    docs = []
    for p in paths:
        try:
            docs.append(json.loads(Path(p).read_text()))
        except FileNotFoundError:
            raise DmcError(f"{p}: no such file") from None
        except (OSError, ValueError) as e:
            raise DmcError(f"{p}: not readable JSON ({e})") from None
    return merge_documents(docs, [str(p) for p in paths])


# --- the checks -----------------------------------------------------------------------


def _get(doc: dict | None, *path):
    for k in path:
        if not isinstance(doc, dict) or k not in doc or doc[k] is None:
            return None
        doc = doc[k]
    return doc


def _row(name, metric, baseline, current, limit, op, status, detail="") -> dict:
    return {"name": name, "metric": metric, "baseline": baseline, "current": current, "limit": limit,
            "op": op, "status": status, "detail": detail}


def check(baseline: dict, current: dict, thresholds: Thresholds) -> dict:
    """Run every enabled threshold. Returns ``{"passed", "checks": [rows], "notes", "thresholds"}``.

    A check whose numbers are missing from a document is ``skipped`` (it does not fail the gate,
    but the table and the JUnit file say so).
    """
    base, cur = merge_documents([baseline]), merge_documents([current])
    be, ce, bb, cb = base["eval"], cur["eval"], base["bench"], cur["bench"]
    rows, notes = [], []
    t = thresholds
    if "policy" in (_get(be, "kind"), _get(ce, "kind")):
        rows += _success_rows(be, ce, t, notes)
    else:
        rows += _image_rows(be, ce, t, notes)
    if t.max_latency_ratio is not None:
        rows.append(_latency_row(bb, cb, t))
    failed = [r for r in rows if r["status"] == "failed"]
    return {"passed": not failed, "checks": rows, "notes": notes, "thresholds": asdict(t)}


def _image_rows(be: dict | None, ce: dict | None, t: Thresholds, notes: list) -> list[dict]:
    """Image quality: Frechet distance, paired PSNR/SSIM against the reference, classifier accuracy."""
    rows = []
    if be and ce:
        for key in ("n", "seed"):
            if be.get(key) != ce.get(key):
                notes.append(f"eval {key} differs (baseline {be.get(key)}, current {ce.get(key)}): "
                             "FD is biased by N and varies with the seed; compare like with like")
        if _get(be, "prompts", "sha256_16") != _get(ce, "prompts", "sha256_16"):
            notes.append("eval prompts differ between baseline and current: text-to-image numbers are not "
                         "comparable")
        if _get(be, "frechet", "features") != _get(ce, "frechet", "features"):
            notes.append("Frechet features differ between baseline and current: FD values are not comparable")
    if t.max_fd_increase is not None:
        b, c = _get(be, "frechet", "fd"), _get(ce, "frechet", "fd")
        if b is None or c is None:
            rows.append(_row("fd_increase", "Frechet distance increase", b, c, t.max_fd_increase, "<=", "skipped",
                             "needs eval results in both documents"))
        else:
            ci = _get(ce, "frechet", "ci_low"), _get(ce, "frechet", "ci_high")
            rows.append(_row("fd_increase", "Frechet distance increase", b, c, t.max_fd_increase, "<=",
                             "passed" if c - b <= t.max_fd_increase else "failed",
                             f"FD {b:.3f} -> {c:.3f} ({c - b:+.3f}); current 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]"))
    if t.max_fd_above_ci is not None:
        rows.append(_fd_ci_row(be, ce, t))
    for name, key, metric, limit, better in (
        ("min_psnr", "psnr_mean", "PSNR vs reference, mean (dB)", t.min_psnr, "high"),
        ("min_psnr_worst", "psnr_worst", "PSNR vs reference, worst image (dB)", t.min_psnr_worst, "high"),
        ("min_ssim", "ssim_mean", "SSIM vs reference, mean", t.min_ssim, "high"),
    ):
        if limit is None:
            continue
        b, c = _get(be, "paired", key), _get(ce, "paired", key)
        if c is None:
            rows.append(_row(name, metric, b, c, limit, ">=", "skipped", "needs eval results in the current document"))
        else:
            rows.append(_row(name, metric, b, c, limit, ">=", "passed" if c >= limit else "failed"))
    if t.max_psnr_drop is not None:
        rows.append(_psnr_drop_row(be, ce, t))
    if t.max_accuracy_drop is not None:
        b, c = _get(be, "classifier", "accuracy"), _get(ce, "classifier", "accuracy")
        if b is None or c is None:
            rows.append(_row("accuracy_drop", "classifier accuracy drop", b, c, t.max_accuracy_drop, "<=", "skipped",
                             "needs class-conditional eval results in both documents"))
        else:
            rows.append(_row("accuracy_drop", "classifier accuracy drop", b, c, t.max_accuracy_drop, "<=",
                             "passed" if b - c <= t.max_accuracy_drop else "failed",
                             f"accuracy {b:.3f} -> {c:.3f} ({c - b:+.3f})"))
    return rows


def _success_rows(be: dict | None, ce: dict | None, t: Thresholds, notes: list) -> list[dict]:
    """Policies: task success rate against the baseline's (and an absolute floor)."""
    rows = []
    b, c = _get(be, "rollout", "success_rate"), _get(ce, "rollout", "success_rate")
    if be and ce and b is not None and c is not None:
        for key in ("task", "episodes", "seed"):
            if be.get(key) != ce.get(key):
                notes.append(f"policy eval {key} differs (baseline {be.get(key)}, current {ce.get(key)}): "
                             "success rates over different episodes are not comparable one to one")
    ci = f"current 95% CI [{_get(ce, 'rollout', 'ci_low'):.2f}, {_get(ce, 'rollout', 'ci_high'):.2f}]" \
        if c is not None else ""
    if t.max_success_drop is not None:
        metric = "task success rate drop"
        if b is None or c is None:
            rows.append(_row("success_drop", metric, b, c, t.max_success_drop, "<=", "skipped",
                             "needs policy eval results in both documents"))
        else:
            rows.append(_row("success_drop", metric, b, c, t.max_success_drop, "<=",
                             "passed" if b - c <= t.max_success_drop else "failed",
                             f"success {b:.1%} -> {c:.1%} ({c - b:+.1%}); {ci}") | {"value": b - c})
    if t.min_success_rate is not None:
        metric = "task success rate"
        if c is None:
            rows.append(_row("min_success_rate", metric, b, c, t.min_success_rate, ">=", "skipped",
                             "needs policy eval results in the current document"))
        else:
            rows.append(_row("min_success_rate", metric, b, c, t.min_success_rate, ">=",
                             "passed" if c >= t.min_success_rate else "failed", ci))
    return rows


def _fd_ci_row(be: dict | None, ce: dict | None, t: Thresholds) -> dict:
    metric = "Frechet distance above the baseline's 95% CI"
    b, c, high = _get(be, "frechet", "fd"), _get(ce, "frechet", "fd"), _get(be, "frechet", "ci_high")
    if b is None or c is None or high is None:
        return _row("fd_above_ci", metric, b, c, t.max_fd_above_ci, "<=", "skipped",
                    "needs eval results with a bootstrap interval in both documents")
    excess = c - high
    ok = excess <= t.max_fd_above_ci  # NaN fails
    return _row("fd_above_ci", metric, b, c, t.max_fd_above_ci, "<=", "passed" if ok else "failed",
                f"FD {c:.3f} vs the baseline's {b:.3f} [{_get(be, 'frechet', 'ci_low'):.3f}, {high:.3f}]: "
                f"{excess:+.3f} beyond its upper bound") | {"value": excess}


def _psnr_drop_row(be: dict | None, ce: dict | None, t: Thresholds) -> dict:
    metric = "PSNR drop vs the baseline's (dB)"
    b, c = _get(be, "paired", "psnr_mean"), _get(ce, "paired", "psnr_mean")
    if b is None or c is None:
        return _row("psnr_drop", metric, b, c, t.max_psnr_drop, "<=", "skipped",
                    "needs paired eval results in both documents")
    drop = min(b, t.psnr_ceiling) - c
    ok = drop <= t.max_psnr_drop  # NaN fails
    return _row("psnr_drop", metric, b, c, t.max_psnr_drop, "<=", "passed" if ok else "failed",
                f"PSNR {b:.1f} -> {c:.1f} dB: {drop:.1f} dB below the baseline (counted at most "
                f"{t.psnr_ceiling:g} dB), limit {t.max_psnr_drop:g} dB") | {"value": drop}


def _latency_row(bb: dict | None, cb: dict | None, t: Thresholds) -> dict:
    if _get(cb, "kind") == "policy" or _get(bb, "kind") == "policy":
        return _chunk_latency_row(bb, cb, t)
    metric = "latency ratio per image (current / baseline)"
    vs_ratio = _get(cb, "ratio", "end_to_end")
    # Measured interleaved against another artifact (the baseline) in one process: the robust way.
    if vs_ratio is not None and _get(cb, "vs", "kind") == "artifact":
        ratio, noise = vs_ratio["median"], vs_ratio.get("noise", 0.0)
        how = f"interleaved vs {Path(_get(cb, 'vs', 'target') or '?').name}, {vs_ratio['pairs']} pairs"
        b = _get(cb, "vs", "end_to_end_per_image", "median_ms")
        c = _get(cb, "artifact", "end_to_end_per_image", "median_ms")
    else:
        b = _get(bb, "artifact", "end_to_end_per_image", "median_ms")
        c = _get(cb, "artifact", "end_to_end_per_image", "median_ms")
        if b is None or c is None:
            return _row("latency_ratio", metric, b, c, t.max_latency_ratio, "<=", "skipped",
                        "needs bench results in both documents")
        ratio = c / b
        noise = max(_get(bb, "artifact", "end_to_end_per_image", "noise") or 0.0,
                    _get(cb, "artifact", "end_to_end_per_image", "noise") or 0.0)
        how = "separate runs"
    tol = max(t.latency_tolerance, noise)
    limit = t.max_latency_ratio * (1 + tol)
    return _row("latency_ratio", metric, b, c, limit, "<=", "passed" if ratio <= limit else "failed",
                f"ratio {ratio:.3f} ({how}); limit {t.max_latency_ratio:g} x (1 + tolerance {tol:.3f})"
                + ("" if tol == t.latency_tolerance else " (measured noise)")) | {"value": ratio}


def _chunk_latency_row(bb: dict | None, cb: dict | None, t: Thresholds) -> dict:
    metric = "latency ratio per action chunk (current / baseline)"
    b, c = _get(bb, "median_s"), _get(cb, "median_s")
    if b is None or c is None:
        return _row("latency_ratio", metric, b, c, t.max_latency_ratio, "<=", "skipped",
                    "needs policy bench results in both documents")
    ratio = c / b
    tol = max(t.latency_tolerance, _get(bb, "noise") or 0.0, _get(cb, "noise") or 0.0)
    limit = t.max_latency_ratio * (1 + tol)
    return _row("latency_ratio", metric, b, c, limit, "<=", "passed" if ratio <= limit else "failed",
                f"median per chunk {b * 1e3:.1f} -> {c * 1e3:.1f} ms, ratio {ratio:.3f} (separate runs); "
                f"limit {t.max_latency_ratio:g} x (1 + tolerance {tol:.3f})") | {"value": ratio}


def _value(row: dict) -> float | None:
    if "value" in row:
        return row["value"]
    b, c = row["baseline"], row["current"]
    if row["name"] == "fd_increase":
        return None if b is None or c is None else c - b
    if row["name"] == "accuracy_drop":
        return None if b is None or c is None else b - c
    return c


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(result: dict) -> str:
    header = ("check", "baseline", "current", "value", "limit", "status")
    body = [(r["name"], _fmt(r["baseline"]), _fmt(r["current"]), _fmt(_value(r)), f"{r['op']} {_fmt(r['limit'])}",
             r["status"].upper()) for r in result["checks"]]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths]), *(line(b) for b in body)]
    for r in result["checks"]:
        if r["detail"]:
            out.append(f"  {r['name']}: {r['detail']}")
    for n in result["notes"]:
        out.append(f"note: {n}")
    n_failed = sum(r["status"] == "failed" for r in result["checks"])
    out.append("PASSED" if result["passed"] else f"FAILED ({n_failed} regression{'s' * (n_failed != 1)})")
    return "\n".join(out)


def write_junit(result: dict, path: str | Path, suite: str = "dmc check") -> None:
    """One ``<testcase>`` per threshold; regressions are ``<failure>``, missing data ``<skipped>``."""
    rows = result["checks"]
    ts = ET.Element("testsuites", name=suite)
    s = ET.SubElement(ts, "testsuite", name=suite, tests=str(len(rows)),
                      failures=str(sum(r["status"] == "failed" for r in rows)), errors="0",
                      skipped=str(sum(r["status"] == "skipped" for r in rows)))
    for r in rows:
        case = ET.SubElement(s, "testcase", classname="dmc.check", name=r["name"])
        msg = (f"{r['metric']}: value {_fmt(_value(r))}, limit {r['op']} {_fmt(r['limit'])} "
               f"(baseline {_fmt(r['baseline'])}, current {_fmt(r['current'])})")
        if r["status"] == "failed":
            ET.SubElement(case, "failure", message=msg, type="regression").text = r["detail"] or msg
        elif r["status"] == "skipped":
            ET.SubElement(case, "skipped", message=r["detail"] or "no data")
        else:
            ET.SubElement(case, "system-out").text = msg
    if result["notes"]:
        ET.SubElement(s, "system-err").text = "\n".join(result["notes"])
    ET.indent(ts)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    ET.ElementTree(ts).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
