"""The version of hf-l0: the one place it is written (``pyproject.toml`` reads it, saved directories record it)."""

__version__ = "0.1.0"
