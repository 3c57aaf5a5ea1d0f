"""Engine keys and the engines manifest.

TensorRT engines are specific to one GPU architecture (compute capability) and one TensorRT
version, so they live under ``engines/<key>/`` with a manifest of their own (``engines.json``:
key, build settings, per-engine checksums, the sha256 of the artifact manifest they were built
from). The compiled artifact's own manifest and checksums never change: the artifact stays
portable and the engines are a separately verified extra.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dmc.artifact.manifest import MANIFEST, sha256_path
from dmc.errors import DmcError

ENGINES_DIR = "engines"
ENGINES_MANIFEST = "engines.json"
ENGINES_FORMAT = "dmc-engines"
ENGINES_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EngineKey:
    compute_capability: str  # "8.7"
    trt_version: str  # "10.3.0"
    device_name: str = ""

    @property
    def dirname(self) -> str:
        """``sm87-trt10.3.0``: one folder per (GPU architecture, TensorRT version)."""
        return f"sm{self.compute_capability.replace('.', '')}-trt{self.trt_version}"

    def describe(self) -> str:
        name = f"{self.device_name}, " if self.device_name else ""
        return f"{name}compute capability {self.compute_capability}, TensorRT {self.trt_version}"

    def to_json(self) -> dict:
        return {"compute_capability": self.compute_capability, "trt_version": self.trt_version,
                "device_name": self.device_name, "dir": self.dirname}

    @classmethod
    def from_json(cls, d: dict) -> "EngineKey":
        return cls(str(d["compute_capability"]), str(d["trt_version"]), d.get("device_name", ""))


def rebuild_command(artifact: Path) -> str:
    return f"dmc build-engine {artifact}"


def artifact_manifest_sha(artifact: Path) -> str:
    return sha256_path(Path(artifact) / MANIFEST)


def engine_dirs(artifact: Path) -> list[Path]:
    root = Path(artifact) / ENGINES_DIR
    return sorted(p for p in root.iterdir() if (p / ENGINES_MANIFEST).is_file()) if root.is_dir() else []


def read_engines_manifest(folder: Path, artifact: Path, verify: bool = True) -> dict:
    try:
        data = json.loads((folder / ENGINES_MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise DmcError(f"{folder}/{ENGINES_MANIFEST}: unreadable ({e}); rebuild with "
                       f"`{rebuild_command(artifact)}`") from None
    if not isinstance(data, dict) or data.get("format") != ENGINES_FORMAT:
        raise DmcError(f"{folder}/{ENGINES_MANIFEST}: not a {ENGINES_FORMAT} manifest")
    if data.get("format_version", 0) > ENGINES_FORMAT_VERSION:
        raise DmcError(f"{folder}: engines format {data.get('format_version')} is newer than this dmc understands")
    if not verify:
        return data
    if data.get("artifact_manifest_sha256") != artifact_manifest_sha(artifact):
        raise DmcError(f"{folder}: engines were built from a different artifact (manifest changed); rebuild "
                       f"with `{rebuild_command(artifact)}`")
    for rel, digest in (data.get("files") or {}).items():
        path = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise DmcError(f"{folder}: engines manifest names a file outside its folder ({rel})")
        if not path.is_file() or sha256_path(path) != digest:
            raise DmcError(f"{folder}: {rel} is missing or modified; rebuild with `{rebuild_command(artifact)}`")
    return data


def find_engines(artifact: Path, key: EngineKey) -> tuple[Path, dict]:
    """The verified engine folder for ``key``, or a one-line error naming what exists and the fix."""
    artifact = Path(artifact)
    folder = artifact / ENGINES_DIR / key.dirname
    if (folder / ENGINES_MANIFEST).is_file():
        data = read_engines_manifest(folder, artifact)
        built = EngineKey.from_json(data["key"])
        if (built.compute_capability, built.trt_version) != (key.compute_capability, key.trt_version):
            raise DmcError(f"{folder}: engines were built for {built.describe()}, this machine has "
                           f"{key.describe()}; rebuild with `{rebuild_command(artifact)}`")
        return folder, data
    others = []
    for d in engine_dirs(artifact):
        try:
            others.append(EngineKey.from_json(read_engines_manifest(d, artifact, verify=False)["key"]).describe())
        except (DmcError, KeyError):
            others.append(d.name)
    if others:
        raise DmcError(f"{artifact}: its TensorRT engines were built for {'; '.join(others)}, not for this "
                       f"machine ({key.describe()}); rebuild with `{rebuild_command(artifact)}`")
    raise DmcError(f"{artifact}: no TensorRT engines; build them on this machine with "
                   f"`{rebuild_command(artifact)}`")


def write_engines_manifest(folder: Path, data: dict) -> None:
    tmp = folder / (ENGINES_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, folder / ENGINES_MANIFEST)
