"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class DmcError(Exception):
    """Bad input or a failed check that the user can act on (no traceback shown)."""


class ArtifactError(DmcError):
    """An artifact that is missing, modified, or of a format this runtime does not understand."""
