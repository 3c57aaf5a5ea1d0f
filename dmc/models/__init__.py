"""Model loading, architecture adapters and the built-in demo models."""
