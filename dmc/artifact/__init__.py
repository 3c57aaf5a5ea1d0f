"""The artifact: the versioned contract between the compile side and the runtime side.

Torch-free on purpose; ``docs/artifact.md`` documents the format.
"""

from dmc.artifact.manifest import FORMAT_NAME, FORMAT_VERSION, Manifest, read_manifest, verify_files
from dmc.artifact.writer import ArtifactWriter

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Manifest", "read_manifest", "verify_files", "ArtifactWriter"]
