"""Feature caching: ``dmc compress MODEL --cache``.

- UNet2DModel and UNet2DConditionModel: DeepCache (``deepcache.py``): a full graph that outputs the deep decoder
  feature ``cache.deep`` and a shallow graph that reuses it; schedules uniform or CacheQuant's DP;
  CacheQuant's decoupled error correction (``correction.py``).
- DiT: per-sub-block caching with BAC schedules (``dit_blocks.py``, ``schedules.py``).

``CacheConfig`` is the pass configuration (registered as the "cache" stage), ``CorrectConfig``
CacheQuant's quantization correction after ``--int8`` (the "correct" stage); ``describe``
summarises an artifact's cache schedule for ``dmc inspect`` and works without torch.
"""

from __future__ import annotations

from dmc.cache.config import CacheConfig

try:  # registering the passes imports the compile side (torch); a runtime-only install can still describe()
    from dmc.cache.correction import CorrectConfig  # the "correct" pass (DEC a2/b2 after --int8)
    from dmc.cache import pass_  # noqa: F401  (registers the "cache" pass)
except ImportError:  # pragma: no cover
    pass


def describe(manifest, schedule_png: str | None = None) -> dict:
    """The cache pass of an artifact for ``dmc inspect``: schedule text (one char per call) and a grid."""
    import numpy as np

    from dmc.cache.draw import schedule_png as draw_png
    from dmc.cache.draw import schedule_text

    record = next((p for p in manifest.data.get("passes", []) if p.get("name") == "cache"), None)
    if record is None:
        return {}
    refresh = np.asarray(record["refresh"], dtype=bool)
    labels = record.get("blocks") if refresh.ndim == 2 else None
    cfg = record.get("config", {})
    groups = _grouped(record["schedule"])
    full = int(refresh.all(axis=1).sum()) if refresh.ndim == 2 else int(refresh.sum())
    head = (f"cache      {record['method']}, schedule {cfg.get('schedule')} (N={cfg.get('interval')}), "
            f"{full}/{len(refresh)} calls full, cost {record['cost_ratio']:.2f} of uncached")
    if "theoretical_speedup" in record:
        head += f" (x{record['theoretical_speedup']:.2f} by MACs)"
    text = [head, f"  schedule {groups}"]
    router = record.get("router")
    if router:
        text.append(f"  router: {router['kind']}, {router['iterations']} iterations in {router['seconds']:.0f} s; "
                    f"keeps {router['rule']}; relative error {router['loss_first']:.2g} -> {router['loss_last']:.2g}")
    if record.get("forecast"):
        fc = record["forecast"]
        text.append(f"  forecast: cached features extrapolated (order {fc['order']}, TaylorSeer), "
                    f"{fc['reads_at_full_order']}/{fc['forecast_reads']} reads at full order")
    corr = record.get("correction")
    if corr:
        text.append(f"  correction: cached-feature rel. L1 error {corr['rel_l1_before_mean']:.3f} -> "
                    f"{corr['rel_l1_after_mean']:.3f} (DEC a1/b1 per call)")
    qcorr = next((p for p in manifest.data.get("passes", []) if p.get("name") == "correct"), None)
    if qcorr:
        text.append(f"  quantization correction: {qcorr.get('summary', '')}")
    text += ["  " + line for line in schedule_text(refresh, labels).splitlines()]
    out = {
        "method": record["method"],
        "schedule": groups,
        "refresh_calls": [int(k) for k in np.flatnonzero(refresh if refresh.ndim == 1 else refresh.all(axis=1))],
        "cost_ratio": record["cost_ratio"],
        "config": cfg,
        "text": text,
    }
    if schedule_png:
        draw_png(refresh, schedule_png, labels)
        out["png"] = str(schedule_png)
    return out


def _grouped(schedule: str) -> str:
    """'F..F..F' -> 'F.. F.. F' (a space before every refresh but the first)."""
    return schedule[:1] + "".join((" " + c) if c == "F" else c for c in schedule[1:])


__all__ = ["CacheConfig", "CorrectConfig", "describe"]
