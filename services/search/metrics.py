"""Prometheus metrics of the search service, served on its own ``/metrics``.

Defined at import, once per process, like ``shared/metrics.py``: every app the process
creates (tests create many) counts into the same series.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SEARCH_SECONDS = Histogram(
    "medhash_search_seconds",
    "Time to answer POST /v1/search (decode, encode, index, catalog), successful or not.",
    ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEARCH_REQUESTS = Counter(
    "medhash_search_requests_total",
    "POST /v1/search requests by outcome: ok, unreadable, too_large, unsupported_type, invalid, "
    "not_found, not_ready, unavailable, error (a bug: see the logs).",
    ["outcome"],
)
INDEX_GENERATION = Gauge(
    "medhash_index_generation", "Index generation the search service has loaded (-1: none yet)."
)
INDEX_SIZE = Gauge("medhash_index_size", "Codes in the index generation the search service has loaded.")
INDEX_REFRESH_FAILURES = Counter(
    "medhash_index_refresh_failures_total",
    "Background index refreshes that failed (the previous generation kept serving).",
)
INDEX_GENERATION.set(-1)
DICOMWEB_REQUESTS = Counter(
    "medhash_dicomweb_requests_total",
    "DICOMweb requests answered, by transaction (stow, retrieve, metadata, frames, rendered, "
    "qido) and outcome (ok, partial, failed).",
    ["transaction", "outcome"],
)
