"""The search service: HTTP API and search page (``create_app``), served by ``medhash search``."""

from services.search.app import create_app

__all__ = ["create_app"]
