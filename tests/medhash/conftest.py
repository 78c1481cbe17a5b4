"""The search tests' tiny model (checkpoint, encoder), for the command tests that index."""

from tests.services.search.conftest import checkpoint, encoder

__all__ = ["checkpoint", "encoder"]
