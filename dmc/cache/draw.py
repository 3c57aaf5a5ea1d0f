"""Pictures of cache schedules for ``dmc inspect``: a text grid and a PNG.

Both take a refresh mask ``[K]`` (one cache point) or ``[K, B]`` (B blocks/branches):
calls run left to right (k = 0 is the noisiest call), one row per block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REFRESH, CACHED = "█", "·"


def _as_grid(refresh) -> np.ndarray:
    r = np.asarray(refresh, dtype=bool)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2 or r.shape[0] == 0:
        raise ValueError(f"refresh must be [K] or [K, B], got shape {np.asarray(refresh).shape}")
    return r


def _labels(labels, num_blocks: int) -> list[str]:
    if labels is None:
        return ["refresh"] if num_blocks == 1 else [f"block {b}" for b in range(num_blocks)]
    labels = [str(s) for s in labels]
    if len(labels) != num_blocks:
        raise ValueError(f"{len(labels)} labels for {num_blocks} blocks")
    return labels


def schedule_text(refresh, labels=None) -> str:
    """Steps × blocks grid: '█' = refresh (computed), '·' = cached; call indices on top.

    Example for 6 calls and 2 blocks::

        call      000000
                  012345
        b0.attn   █·█·█·  3/6
        b0.mlp    █··█··  2/6
    """
    r = _as_grid(refresh)
    num_calls, num_blocks = r.shape
    names = _labels(labels, num_blocks)
    width = max(len(n) for n in names + ["call"]) + 2
    digits = len(str(num_calls - 1))
    lines = []
    for d in range(digits):  # call index, one digit per header line (most significant first)
        head = "".join(str(k).rjust(digits)[d] for k in range(num_calls))
        lines.append(("call" if d == 0 else "").ljust(width) + head)
    for b, name in enumerate(names):
        row = "".join(REFRESH if v else CACHED for v in r[:, b])
        lines.append(f"{name.ljust(width)}{row}  {int(r[:, b].sum())}/{num_calls}")
    if num_blocks > 1:
        from dmc.cache.schedules import distinct_rows

        patterns, _ = distinct_rows(r)
        lines.append(f"{r.mean():.0%} of block computations run; {len(patterns)} distinct call patterns (graphs)")
    return "\n".join(lines)


def schedule_png(refresh, path, labels=None, title: str | None = None) -> Path:
    """Save the schedule as an image: calls on x, blocks on y, dark = refresh."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = _as_grid(refresh)
    num_calls, num_blocks = r.shape
    names = _labels(labels, num_blocks)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * num_calls + 1.5), max(1.5, 0.25 * num_blocks + 1.0)))
    ax.imshow(r.T.astype(float), aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
              extent=(-0.5, num_calls - 0.5, num_blocks - 0.5, -0.5))
    ax.set_xlabel("model call k (0 = noisiest)")
    ax.set_yticks(range(num_blocks))
    ax.set_yticklabels(names, fontsize=7)
    step = max(1, num_calls // 20)
    ax.set_xticks(range(0, num_calls, step))
    ax.set_title(title or f"cache schedule: {r.mean():.0%} of block computations run", fontsize=9)
    ax.set_xticks(np.arange(-0.5, num_calls, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, num_blocks, 1), minor=True)
    ax.grid(which="minor", color="#bbbbbb", linewidth=0.3)
    ax.tick_params(which="minor", length=0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["schedule_text", "schedule_png"]
