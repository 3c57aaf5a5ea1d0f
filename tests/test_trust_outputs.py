"""Issue 14 item 2: --force replaces only artifacts, the output is claimed at the start, I/O errors are clean."""

import errno
import json
import shutil
from collections import namedtuple

import pytest

from dmc.artifact import ArtifactWriter
from dmc.errors import DmcError

MINI = {"model": {}, "recipe": {}}


def write_mini(out, payload=b"x", **kw):
    with ArtifactWriter(out, **kw) as w:
        (w.root / "data.bin").write_bytes(payload)
        return w.finish(dict(MINI))


def test_force_refuses_a_folder_that_is_not_an_artifact(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(DmcError, match="not a dmc artifact"):
        write_mini(home, overwrite=True)
    assert (home / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_force_refuses_a_file_and_leaves_nothing_behind(tmp_path):
    f = tmp_path / "out.dmc"
    f.write_text("a file")
    with pytest.raises(DmcError, match="not a dmc artifact"):
        write_mini(f, overwrite=True)
    assert f.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dmc"]


def test_force_replaces_an_artifact_or_an_empty_folder_leaving_nothing_behind(tmp_path):
    out = tmp_path / "a.dmc"
    out.mkdir()  # empty: may be replaced
    write_mini(out, b"one", overwrite=True)
    write_mini(out, b"two", overwrite=True)  # an artifact: may be replaced
    assert (out / "data.bin").read_bytes() == b"two"
    assert json.loads((out / "manifest.json").read_text())["files"]["data.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dmc"]


def test_output_is_claimed_at_the_start(tmp_path):
    out = tmp_path / "a.dmc"
    first = ArtifactWriter(out)
    with first:
        with pytest.raises(DmcError, match="another dmc compile"):
            with ArtifactWriter(out):
                pass
        (first.root / "data.bin").write_bytes(b"1")
        first.finish(dict(MINI))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dmc"]
    write_mini(tmp_path / "b.dmc")  # the claim is released after use


def test_output_appearing_during_the_compile_is_not_clobbered(tmp_path):
    out = tmp_path / "a.dmc"
    with pytest.raises(DmcError, match="appeared"):
        with ArtifactWriter(out) as w:
            (w.root / "data.bin").write_bytes(b"1")
            out.mkdir()  # someone else wrote there meanwhile
            (out / "theirs.txt").write_text("keep")
            w.finish(dict(MINI))
    assert (out / "theirs.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dmc"]


def test_io_errors_name_the_path_and_reason(tmp_path):
    out = tmp_path / "a.dmc"
    with pytest.raises(DmcError, match=r"weights\.bin: No space left on device"):
        with ArtifactWriter(out) as w:
            raise OSError(errno.ENOSPC, "No space left on device", str(w.root / "graphs" / "weights.bin"))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent_is_refused_before_any_work(tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(DmcError, match="cannot write the artifact here .Read-only file system"):
        with ArtifactWriter(tmp_path / "a.dmc"):
            pytest.fail("entered an unwritable output")
    assert list(tmp_path.iterdir()) == []  # the claim was released


def test_free_space_is_checked_before_loading(tmp_path, monkeypatch, run_cli):
    from dmc.compress import pipeline

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(pipeline, "prepare", lambda *a, **k: pytest.fail("compiled despite a full disk"))
    code, _, err = run_cli("compress", "demo", "--out", tmp_path / "a.dmc")
    assert code == 2 and "free space" in err and "internal error" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_os_errors_as_one_line(tmp_path, monkeypatch, run_cli):
    from dmc.compress import pipeline

    def disk_full(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/a.dmc")

    monkeypatch.setattr(pipeline, "compile_model", disk_full)
    code, _, err = run_cli("compress", "demo", "--out", tmp_path / "a.dmc")
    assert code == 2 and "/mnt/ro/a.dmc" in err and "Read-only file system" in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("after_s", [0.0, 3.0])  # as the folder appears; during export / calibration
def test_a_killed_compile_leaves_no_temporary_folder_or_lock(tmp_path, after_s):
    """SIGTERM mid-compile: exit 143, and neither the artifact, its temporary folder nor its lock remains."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed.dmc"
    proc = subprocess.Popen([sys.executable, "-m", "dmc.cli", "compress", "demo", "--out", str(out), "--cache"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".killed.dmc.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(after_s)
    assert proc.poll() is None, "the compile ended before it could be killed"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == []
