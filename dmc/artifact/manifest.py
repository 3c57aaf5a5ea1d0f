"""Reading and checking ``manifest.json`` (numpy and stdlib only)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dmc.errors import ArtifactError
from dmc.sampling.calls import SamplerCall
from dmc.sampling.recipe import Recipe

FORMAT_NAME = "dmc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    root: Path
    data: dict

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_json(self.data["recipe"])

    @property
    def calls(self) -> list[SamplerCall]:
        return [SamplerCall.from_json(c) for c in self.data["sampler"]["calls"]]

    @property
    def graphs(self) -> dict:
        return self.data["graphs"]

    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return tuple(self.data["model"]["sample_shape"])

    @property
    def conditioning(self) -> dict:
        return self.data["model"]["conditioning"]

    def tables(self) -> dict:
        """Per-call constant arrays (``tables.npz``; loaded without pickle)."""
        import numpy as np

        rel = self.data.get("tables")
        if not rel:
            return {}
        with np.load(self.root / rel, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def graph_path(self, name: str) -> Path:
        return self.root / self.graphs[name]["file"]


def read_manifest(path: str | Path, verify: bool = True) -> Manifest:
    """Open an artifact folder; with ``verify`` every file's sha256 is checked first."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact folder")
    try:
        data = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{root}: no {MANIFEST} (not a dmc artifact)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{root}/{MANIFEST}: unreadable ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{root}: {MANIFEST} is not a {FORMAT_NAME} manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{root}: artifact format version {version!r} is newer than this runtime "
                            f"understands ({FORMAT_VERSION}); upgrade dmc")
    validate_schema(data, root)
    manifest = Manifest(root, data)
    if verify:
        verify_files(manifest)
    return manifest


_SCHEMA = None
SCHEMA_FILE = "manifest.schema.json"
BUILD_LOG = "build.json"  # the build log: the one file an artifact may hold beyond its manifest's list
ENGINES_DIR = "engines"  # TensorRT engines built on the target: verified by their own engines.json


def validate_schema(data: dict, root: Path) -> None:
    """Check ``data`` against the JSON Schema shipped with the package (manifest.schema.json)."""
    global _SCHEMA
    import jsonschema

    if _SCHEMA is None:
        _SCHEMA = json.loads((Path(__file__).with_name(SCHEMA_FILE)).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_SCHEMA).iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"{root}/{MANIFEST}: invalid at {where}: {error.message[:200]}")


def verify_files(manifest: Manifest) -> None:
    files = manifest.data.get("files") or {}
    if not files:
        raise ArtifactError(f"{manifest.root}: manifest lists no files to verify")
    allowed = set(files) | {MANIFEST, BUILD_LOG}
    for path in sorted(manifest.root.rglob("*")):
        rel = path.relative_to(manifest.root).as_posix()
        if path.is_symlink():
            raise ArtifactError(f"{manifest.root}: {rel} is a symlink; artifacts hold plain files only")
        if rel.split("/", 1)[0] == ENGINES_DIR:
            continue  # dmc.engines.keys.find_engines checks these against engines/<key>/engines.json
        if path.is_file() and rel not in allowed:
            raise ArtifactError(f"{manifest.root}: {rel} is not listed in the manifest; remove it or rebuild")
    for rel, digest in files.items():
        path = manifest.root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ArtifactError(f"{manifest.root}: manifest names a file outside the artifact ({rel})")
        if not path.is_file():
            raise ArtifactError(f"{manifest.root}: missing file {rel}")
        if sha256_path(path) != digest:
            raise ArtifactError(f"{manifest.root}: {rel} was modified (sha256 mismatch); rebuild the artifact")
