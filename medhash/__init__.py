"""medhash: content-based medical image retrieval by deep hashing."""

__version__ = "0.1.0"
