"""The artifact contract: checksums, versions, atomic writes, and a runtime without torch."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dmc.artifact import FORMAT_VERSION, read_manifest
from dmc.errors import ArtifactError, DmcError


def test_manifest_lists_every_file_with_checksum(demo_artifact):
    m = read_manifest(demo_artifact)
    files = {p.relative_to(demo_artifact).as_posix() for p in demo_artifact.rglob("*") if p.is_file()}
    assert set(m.data["files"]) == files - {"manifest.json", "build.json"}  # build.json: the unchecked build log
    assert m.data["format_version"] == FORMAT_VERSION
    assert len(m.calls) == 10 and m.data["recipe"]["steps"] == 10
    for key in ("torch", "onnx", "dmc", "seed"):
        assert key in m.data["provenance"]
    assert len(m.data["model"]["source_sha256"]) == 64
    assert m.data["verification"]["psnr_db"] >= 60


def test_modified_file_is_refused(demo_artifact, tmp_path, run_cli):
    art = tmp_path / "mod.dmc"
    shutil.copytree(demo_artifact, art)
    with open(art / "graphs" / "weights.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ArtifactError, match="modified"):
        read_manifest(art)
    code, _, err = run_cli("run", art, "--n", "2", "--out", tmp_path / "x.png")
    assert code == 2 and "modified" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_newer_format_is_refused(demo_artifact, tmp_path):
    art = tmp_path / "new.dmc"
    shutil.copytree(demo_artifact, art)
    data = json.loads((art / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="newer"):
        read_manifest(art)


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    from dmc.compress import pipeline
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    real_prepare = pipeline.prepare

    def impossible_floor(*args, **kwargs):
        ctx = real_prepare(*args, **kwargs)
        ctx.fidelity_floor_psnr = 1e9  # no artifact can pass: the writer must leave nothing behind
        return ctx

    monkeypatch.setattr(pipeline, "prepare", impossible_floor)
    out = tmp_path / "never.dmc"
    with pytest.raises(DmcError, match="verification failed"):
        compile_model("demo", out, CompileOptions(recipe=Recipe(steps=3), verify_images=1))
    assert list(tmp_path.iterdir()) == []


RUNTIME_SCRIPT = """
import sys
import numpy as np
from dmc.runtimes import load
pipe = load(sys.argv[1])
images = pipe(n=3, seed=1)
assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 1), images.shape
assert 'torch' not in sys.modules, 'the runtime imported torch'
assert 'diffusers' not in sys.modules
np.save(sys.argv[2], images)
"""


def test_runtime_imports_no_torch(demo_artifact, tmp_path):
    out = tmp_path / "images.npy"
    subprocess.run([sys.executable, "-c", RUNTIME_SCRIPT, str(demo_artifact), str(out)], check=True,
                   env={**os.environ, "PYTHONPATH": os.getcwd()})
    images = np.load(out)
    assert images.std() > 10  # not a blank image


def test_cli_run_writes_grid_and_inspect_json(demo_artifact, tmp_path, run_cli):
    png = tmp_path / "grid.png"
    code, out, _ = run_cli("run", demo_artifact, "--n", "10", "--out", png)
    assert code == 0 and png.stat().st_size > 0
    from PIL import Image

    assert Image.open(png).size[0] > 10 * 16
    code, out, _ = run_cli("inspect", demo_artifact, "--json")
    info = json.loads(out)
    assert code == 0 and info["calls"] == 10 and info["graphs"]["full"]["calls"] == 10


def test_same_seed_same_images_different_seed_differs(demo_artifact):
    from dmc.runtimes import load

    pipe = load(demo_artifact)
    a, b, c = pipe(n=4, seed=7), pipe(n=4, seed=7), pipe(n=4, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5
