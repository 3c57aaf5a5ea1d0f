"""``dmc eval`` under ``torchrun``: every rank samples its share, rank 0 computes and prints.

    torchrun --nproc_per_node 2 -m dmc.evaluate.distributed ARTIFACT --reference demo --num-images 1000 --json
    python -m torch.distributed.run --nproc_per_node 2 -m dmc.evaluate.distributed ...   # same thing

(``--num-images`` is ``dmc eval``'s ``--n``: torchrun's own argument parser would read ``--n`` as an
abbreviation of its ``--nnodes``/``--nproc-per-node`` and stop; ``... -m dmc.evaluate.distributed -- ARTIFACT
--n 1000`` also works.)

Ranks take contiguous runs of whole sampling batches (``evaluate.batch_plan``) and sample
them with ``first=`` so image i gets the same noise and label as in a single process; the
per-image rows (features, paired metrics, labels, predictions) are gathered to rank 0 as
tensors over gloo (no pickling), in global order, so the numbers equal a one-process run.
"""

from __future__ import annotations

import os
import sys

import numpy as np


def launched() -> bool:
    """True when started by torchrun / torch.distributed.run (the env:// variables are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


class Comm:
    """The little of torch.distributed that evaluation needs: rank, world size, gather to rank 0."""

    def __init__(self, rank: int = 0, world: int = 1, dist=None):
        self.rank, self.world, self.dist = rank, world, dist

    @classmethod
    def single(cls) -> "Comm":
        return cls()

    @classmethod
    def from_env(cls) -> "Comm":
        if not launched() or int(os.environ["WORLD_SIZE"]) <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dist)

    def gather_rows(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Concatenate every rank's arrays (same keys, same trailing shapes) on rank 0, in rank order.

        Ranks may hold different row counts (including none): counts are all-gathered first,
        then each array is padded to the largest count and gathered.
        """
        if self.world == 1:
            return rows
        import torch

        dist = self.dist
        count = len(next(iter(rows.values()))) if rows else 0
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor([count], dtype=torch.int64))
        counts = [int(c) for c in counts]
        width = max(counts)
        keys = ("feat", "feat_ref", "metrics", "labels", "pred", "pred_ref")
        # Trailing shapes and dtypes must agree on all ranks, including ranks with no rows: share rank 0's
        # layout (rank 0 always has at least one batch because batches are dealt from the front).
        shapes = self._layout(rows, keys)
        gathered: dict[str, np.ndarray] = {}
        for key in keys:
            tail, dtype = shapes[key]
            local = rows.get(key, np.zeros((0, *tail), dtype=dtype))
            buf = np.zeros((width, *tail), dtype=dtype)
            buf[:count] = local
            t = torch.from_numpy(buf)
            bucket = [torch.empty_like(t) for _ in range(self.world)] if self.rank == 0 else None
            dist.gather(t, gather_list=bucket, dst=0)
            if self.rank == 0:
                gathered[key] = np.concatenate([b.numpy()[:c] for b, c in zip(bucket, counts)])
        return gathered

    def _layout(self, rows: dict[str, np.ndarray], keys) -> dict:
        """Rank 0's (trailing shape, dtype) per key, broadcast as a small int tensor."""
        import torch

        codes = {np.dtype(np.float64): 0, np.dtype(np.int64): 1}
        spec = torch.zeros(len(keys), 4, dtype=torch.int64)  # dtype code, ndim-1, dim1, dim2
        if self.rank == 0:
            for i, key in enumerate(keys):
                a = rows[key]
                tail = list(a.shape[1:]) + [0, 0]
                spec[i] = torch.tensor([codes[a.dtype], a.ndim - 1, tail[0], tail[1]])
        self.dist.broadcast(spec, src=0)
        dtypes = {0: np.float64, 1: np.int64}
        return {key: (tuple(int(d) for d in spec[i, 2:2 + int(spec[i, 1])]), dtypes[int(spec[i, 0])])
                for i, key in enumerate(keys)}

    def close(self) -> None:
        if self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun -m dmc.evaluate.distributed``: ``dmc eval``'s options, every rank."""
    from dmc.evaluate.cli import eval_cmd

    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == ["--"]:  # `torchrun ... -m dmc.evaluate.distributed -- ARTIFACT --n 64` passes the "--" on
        args = args[1:]
    try:
        eval_cmd.main(args=args, prog_name="dmc eval",
                      standalone_mode=False)
    except SystemExit as e:  # pragma: no cover - click's own exits
        return int(e.code or 0)
    except Exception as e:  # DmcError and click usage errors: one line, like the dmc CLI
        import click

        from dmc.errors import DmcError

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, DmcError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
