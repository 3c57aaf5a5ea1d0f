"""Training and reference data the project ships or builds (no downloads)."""
