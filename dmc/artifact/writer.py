"""Atomic artifact writing: the output is claimed first, filled in a temporary sibling, then renamed.

- The claim is an exclusive lock file next to ``out`` (``.<name>.lock``, holding the pid), taken
  before any work, so two compiles to one folder cannot clobber each other; a lock whose process
  has died is taken over.
- ``overwrite`` (``--force``) replaces only a dmc artifact (a folder with a dmc manifest) or an
  empty folder, never a file or a user's folder, and swaps it in one rename where the OS allows.
- Writability and free space are checked when the claim is taken; an OS error while writing
  becomes a one-line :class:`DmcError` naming the path and the reason.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from dmc.artifact.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, sha256_path
from dmc.errors import DmcError

MIB = 1 << 20
_OPEN: set = set()  # writers between __enter__ and __exit__, for abandon_all()


def abandon_all() -> None:
    """Remove every open writer's temporary folder and lock (on a kill, before the process ends:
    unwinding is not reliable, since libraries such as the ONNX exporter catch any exception)."""
    for writer in list(_OPEN):
        writer.__exit__(None, None, None)
BUILD_LOG = "build.json"


class ArtifactWriter:
    """Context manager: ``with ArtifactWriter(out) as w: ...; w.finish(manifest)``.

    Leaving the block without ``finish`` (an error, a failed check) removes the temporary
    folder and the claim, so no half-written artifact is ever left at ``out``.
    """

    def __init__(self, out: str | Path, overwrite: bool = False, need_bytes: int = 0):
        self.out = Path(out)
        self.overwrite = overwrite
        self.need_bytes = need_bytes
        self._check_target()
        if not self.out.parent.is_dir():
            raise DmcError(f"{self.out.parent}: output folder's parent does not exist")
        self.tmp: Path | None = None
        self.lock = self.out.with_name(f".{self.out.name}.lock")
        self._locked = False

    def _check_target(self) -> None:
        if not (self.out.exists() or self.out.is_symlink()):
            return
        if not self.overwrite:
            raise DmcError(f"{self.out}: already exists (pass --force to replace it)")
        if not is_replaceable(self.out):
            raise DmcError(f"{self.out}: not a dmc artifact or an empty folder; --force replaces only those "
                           "(remove it yourself or choose another --out)")

    def __enter__(self) -> "ArtifactWriter":
        self._claim()
        _OPEN.add(self)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
            free = shutil.disk_usage(self.out.parent).free
        except OSError as e:
            self._release()
            raise DmcError(f"{self.out.parent}: cannot write the artifact here ({e.strerror})") from None
        if free < self.need_bytes:
            self.__exit__(None, None, None)
            raise DmcError(f"{self.out.parent}: not enough free space ({free / MIB:.0f} MiB free, the artifact "
                           f"needs about {self.need_bytes / MIB:.0f} MiB)")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _OPEN.discard(self)
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        self._release()
        if isinstance(exc, OSError):  # disk full, read-only, quota: the user's to fix, not a bug
            where = str(exc.filename or self.out)
            raise DmcError(f"{where}: {exc.strerror or exc} (while writing the artifact {self.out})") from None

    def _claim(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _lock_is_stale(self.lock):
                    self.lock.unlink(missing_ok=True)
                    continue
                raise DmcError(f"{self.out}: another dmc compile is writing here (lock {self.lock}); "
                               "wait for it, or remove the lock if no compile is running") from None
            except OSError as e:
                raise DmcError(f"{self.out.parent}: cannot write the artifact here ({e.strerror})") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._locked = True
            return
        raise DmcError(f"{self.lock}: could not take the output lock")

    def _release(self) -> None:
        if self._locked:
            self.lock.unlink(missing_ok=True)
            self._locked = False

    @property
    def root(self) -> Path:
        assert self.tmp is not None, "use ArtifactWriter as a context manager"
        return self.tmp

    def finish(self, manifest: dict, build_log: dict | None = None) -> Path:
        """Checksum every file, write the manifest (and the unchecked build log), rename into place."""
        root = self.root
        files = {p.relative_to(root).as_posix(): sha256_path(p)
                 for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "files": files}
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if build_log is not None:
            (root / BUILD_LOG).write_text(json.dumps(build_log, indent=1) + "\n")
        if self.out.exists() or self.out.is_symlink():
            if not self.overwrite:
                raise DmcError(f"{self.out}: appeared while compiling (not written by this compile); "
                               "left as it is, nothing was written")
            self._check_target()
            if not _rename2(root, self.out, RENAME_EXCHANGE):  # no atomic swap here: two renames
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
                os.replace(self.out, old / "artifact")
                os.replace(root, self.out)
                root = old
            shutil.rmtree(root)  # the old artifact, now at the temporary name
        elif not _rename2(root, self.out, RENAME_NOREPLACE):
            os.rename(root, self.out)
        self.tmp = None
        return self.out


def is_replaceable(path: Path) -> bool:
    """An empty folder, or one holding a dmc manifest: what ``--force`` may replace."""
    if path.is_symlink() or not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _lock_is_stale(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``: atomic no-replace or exchange; False where the OS lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    if err == errno.EEXIST:
        raise DmcError(f"{dst}: appeared while compiling (not written by this compile); left as it is")
    raise OSError(err, os.strerror(err), str(dst))
