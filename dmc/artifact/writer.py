"""Atomic artifact writing: everything goes to a temporary sibling folder, then one rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from dmc.artifact.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, sha256_path
from dmc.errors import DmcError


class ArtifactWriter:
    """Context manager: ``with ArtifactWriter(out) as w: ...; w.finish(manifest)``.

    Leaving the block without ``finish`` (an error, a failed check) removes the temporary
    folder, so no half-written artifact is ever left at ``out``.
    """

    def __init__(self, out: str | Path, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        if self.out.exists() and not overwrite:
            raise DmcError(f"{self.out}: already exists (pass --force to replace it)")
        if not self.out.parent.exists():
            raise DmcError(f"{self.out.parent}: output folder's parent does not exist")
        self.tmp: Path | None = None

    def __enter__(self) -> "ArtifactWriter":
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def root(self) -> Path:
        assert self.tmp is not None, "use ArtifactWriter as a context manager"
        return self.tmp

    def finish(self, manifest: dict) -> Path:
        root = self.root
        files = {p.relative_to(root).as_posix(): sha256_path(p)
                 for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "files": files}
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if self.out.exists():  # --force: swap the old artifact out only once the new one is complete
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
            os.replace(root, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(root, self.out)
        self.tmp = None
        return self.out
