"""The one typed settings object, read from ``MEDHASH_*`` environment variables.

Every service and worker reads its configuration from :func:`get_settings`, so an operator
configures a whole deployment with one env file. Leaving the URLs unset selects the embedded
default (SQLite catalog, a local folder as object store, in-process queues); setting them
selects the distributed configuration. The README's settings table is generated from the
field descriptions here (``medhash settings --markdown``), so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "medhash"


_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")

SECRET: dict[str, object] = {"secret": True}
"""Field marker: ``medhash settings`` masks the value (a URL's password only, keeping the rest)."""


def _parse_peer(peer: str) -> tuple[str, tuple[str, int]]:
    """``AE@host:port`` -> (AE, (host, port)); ValueError naming the expected form."""
    ae_title, at, address = peer.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and ae_title and host and port.isdigit()) or len(ae_title) > 16:
        raise ValueError(f"{peer!r} is not AE@host:port (e.g. ORTHANC@pacs.example.org:4242)")
    return ae_title, (host.strip("[]"), int(port))


ROLES = ("read", "admin")
"""API key roles: ``read`` searches and retrieves; ``admin`` also forgets and reads the audit."""


@dataclass(frozen=True)
class ApiKey:
    """One entry of ``MEDHASH_API_KEYS``: who the key is (for the audit trail) and what it may do."""

    name: str
    role: Literal["read", "admin"]
    key: str = dataclass_field(repr=False)


def parse_api_key(entry: str) -> ApiKey:
    """``name:role:key`` or a bare ``key`` (role ``read``, named after its hash); ValueError
    naming the expected forms."""
    name, sep, rest = entry.partition(":")
    if sep:
        role, sep2, key = rest.partition(":")
        if not sep2 or role not in ROLES or not name or not key:
            raise ValueError(f"API key entry {name[:20]!r}:... is not `name:role:key` with role "
                             "`read` or `admin` (or a bare key without colons)")
        if not re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", name):
            raise ValueError(f"API key name {name[:70]!r} must be 1 to 64 of [A-Za-z0-9._@-]")
        return ApiKey(name, role, key)  # type: ignore[arg-type]
    return ApiKey(f"key-{hashlib.sha256(entry.encode()).hexdigest()[:8]}", "read", entry)


class Settings(BaseSettings):
    """All of medhash's configuration. Field descriptions are the operator's documentation."""

    model_config = SettingsConfigDict(env_prefix="MEDHASH_", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Folder of the embedded default: SQLite catalog, object-store folder, "
        "indexes.",
    )
    database_url: str | None = Field(
        default=None,
        json_schema_extra=SECRET,
        description="PostgreSQL URL of the catalog (`postgresql://user:pw@host:5432/medhash`). "
        "Unset: SQLite in the data dir.",
    )
    broker_url: str | None = Field(
        default=None,
        json_schema_extra=SECRET,
        description="Redis URL of the Celery broker (`redis://host:6379/0`). "
        "Unset: queues served by worker threads inside `medhash serve`.",
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="S3/MinIO endpoint as `host:port`. Unset: a folder in the data dir.",
    )
    s3_access_key: str = Field(default="", description="S3 access key.")
    s3_secret_key: str = Field(default="", json_schema_extra=SECRET, description="S3 secret key.")
    s3_bucket: str = Field(default="medhash", description="S3 bucket (created when missing).")
    s3_secure: bool = Field(default=False, description="Use HTTPS to reach the S3 endpoint.")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")

    # --- DICOM listener ----------------------------------------------------------------------
    ae_title: str = Field(default="MEDHASH", description="The listener's AE title.")
    dicom_host: str = Field(default="0.0.0.0", description="Address the listener binds.")
    dicom_port: int = Field(default=11112, description="Port the DICOM listener binds.")
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated calling AE titles allowed to associate; empty allows any.",
    )
    listener_processes: int = Field(
        default=1,
        description="Listener processes sharing the DICOM port (SO_REUSEPORT); one per core "
        "lets parallel associations use every core. Process i serves metrics on "
        "`MEDHASH_METRICS_PORT` + i.",
    )
    max_associations: int = Field(
        default=32, description="Maximum simultaneous DICOM associations."
    )
    max_pdu_size: int = Field(
        default=262_144,
        description="Maximum PDU size the listener receives (bytes; 0 = unlimited).",
    )
    dimse_timeout: float = Field(default=60.0, description="DIMSE message timeout (s).")
    network_timeout: float = Field(
        default=60.0,
        description="Idle association timeout (s): an association with no PDU for this long "
        "is aborted.",
    )
    association_request_timeout: float = Field(
        default=2.0,
        description="Seconds a new connection has to finish its TLS handshake and send its "
        "A-ASSOCIATE-RQ before it is closed (DICOM's ARTIM timer). Connections that never "
        "associate (port scans, TCP probes) never hold one of the association slots.",
    )
    transfer_syntaxes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated transfer syntax UIDs the listener accepts, most preferred "
        "first: for each proposed presentation context it accepts the first of these the "
        "sender offers. Empty: every syntax it can store, lossless compressed first, then "
        "lossy compressed, deflated, Explicit VR LE, Implicit VR LE, Explicit VR BE "
        "(docs/conformance.md), so a sender's own encoding wins over its fallbacks.",
    )
    accept_unknown_sop_classes: bool = Field(
        default=True,
        description="Accept storage SOP classes beyond the current standard's list: retired "
        "ones (e.g. US Image Storage 1.2.840.10008.5.1.4.1.1.6), private and newer ones, "
        "stored as received (Orthanc's `UnknownSopClassAccepted`). Off: only the standard's "
        "current storage SOP classes.",
    )
    commitment_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Storage commitment: comma-separated `AE@host:port` of requesters that want "
        "their N-EVENT-REPORT on a new association (Orthanc and most PACS). A requester not "
        "listed gets it on the association that asked, while that is still open.",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate: enables DICOM over TLS on the listener."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key for `tls_cert`.")
    tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: when set, senders must present a client certificate "
        "signed by it.",
    )

    # --- HTTP --------------------------------------------------------------------------------
    http_host: str = Field(default="0.0.0.0", description="Address the HTTP services bind.")
    http_port: int = Field(default=8080, description="Port of the search service.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        json_schema_extra=SECRET,
        description="Comma-separated API keys, each `name:role:key` (role `read` or `admin`) or "
        "a bare `key` (role `read`, named `key-` + the first 8 hex digits of its sha256). When "
        "set, every /v1 and /dicomweb route requires one in the `X-API-Key` header (or "
        "`Authorization: Bearer`); forget and audit need an `admin` key (docs/integration.md).",
    )
    expose_patient_data: bool = Field(
        default=False,
        description="Search results and instance details include PatientID, and DICOMweb "
        "retrieval (QIDO-RS, WADO-RS), which hands out the stored objects with their patient "
        "identifiers, is served. Off: those routes answer 403; STOW-RS works either way.",
    )
    viewer_url: str | None = Field(
        default=None,
        description="Viewer link template for every search result and the page, with "
        "`{study}`, `{series}` and `{sop}` (e.g. `https://ohif.example.org/viewer?"
        "StudyInstanceUIDs={study}`); the UIDs are percent-encoded. Unset: no viewer links.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins (`https://ohif.example.org`) whose pages may call "
        "the search service and DICOMweb from a browser (CORS); empty allows none.",
    )
    stow_max_bytes: int = Field(
        default=2_000_000_000,
        description="Largest STOW-RS request (bytes, all parts together); larger requests get "
        "413 and nothing of them is stored.",
    )
    stow_max_part_bytes: int = Field(
        default=1_000_000_000,
        description="Largest single instance in a STOW-RS request (bytes): a larger part fails "
        "(FailedSOPSequence) while the request's other parts are stored.",
    )
    retention_days: float | None = Field(
        default=None,
        description="Forget every study whose newest instance was received more than this many "
        "days ago (run by the reconciler; the same job as `medhash forget`). Unset: keep "
        "everything.",
    )
    search_max_upload_bytes: int = Field(
        default=64_000_000, description="Largest search upload (bytes); larger requests get 413."
    )
    metrics_port: int = Field(
        default=9108,
        description="Port of the Prometheus `/metrics` endpoint of the listener and workers "
        "(0 disables it).",
    )

    # --- models ------------------------------------------------------------------------------
    model: Path | None = Field(
        default=None, description="Checkpoint the encoders use (one `.pt` file)."
    )

    # --- preprocessing (CPU workers) ---------------------------------------------------------
    image_size: int = Field(
        default=224,
        description="Side of the square slices the CPU workers store (aspect kept, zero "
        "padding); the DAFH paper uses 224.",
    )
    window_center: float | None = Field(
        default=None,
        description="Force this window center for every image (with `window_width`); unset: "
        "the file's first VOI LUT / window, else a per-modality default, else min-max.",
    )
    window_width: float | None = Field(default=None, description="Forced window width.")
    iqr_k: float = Field(
        default=1.5, description="Cleaning: Tukey fence multiplier of the per-series IQR rule."
    )
    blank_variance: float = Field(
        default=1e-4, description="Cleaning: a slice with variance below this is blank."
    )
    saturated_fraction: float = Field(
        default=0.5,
        description="Cleaning: a slice with more than this fraction of white pixels is saturated.",
    )
    series_stable_s: float = Field(
        default=30.0,
        description="Seconds without a new slice after which a series' IQR cleaning runs.",
    )
    worker_threads: int = Field(
        default=2,
        description="Embedded default: preprocess threads inside `medhash serve`.",
    )

    # --- encoding and the index --------------------------------------------------------------
    device: str = Field(
        default="auto",
        description="Torch device of the encode workers: `auto` (CUDA when available), `cpu`, "
        "`cuda`, `cuda:1`, ... Run one encode worker process per GPU.",
    )
    torch_threads: int = Field(
        default=0,
        description="Torch CPU threads per encode process (0: torch's default). 1-2 avoids "
        "threads spin-waiting for cores that other work holds.",
    )
    encode_batch_size: int = Field(
        default=32, description="Slices per forward pass, gathered across tasks."
    )
    encode_max_wait_s: float = Field(
        default=0.02,
        description="Longest wait for a batch to fill before it runs anyway (seconds).",
    )
    search_threads: int = Field(
        default=0,
        description="Threads scanning the shards of one query (0: one per core). Use 1 where "
        "the search service shares its cores with CPU-heavy work.",
    )
    index_shards: int = Field(default=8, description="Shards of each model version's index.")
    search_refresh_s: float = Field(
        default=0.5,
        description="How often the search service looks for a newer index generation.",
    )
    index_flush_s: float = Field(
        default=1.0,
        description="How often the indexer writes new codes as a delta and a new generation.",
    )
    index_compact_deltas: int = Field(
        default=32,
        description="The indexer merges deltas into the shards when there are more than this.",
    )

    # --- reliability -------------------------------------------------------------------------
    reconcile_after_s: float = Field(
        default=300.0,
        description="An instance left this long in `received` (or a later non-final state) is "
        "re-enqueued by the reconciler (a lost message, a killed worker).",
    )
    reconcile_interval_s: float = Field(
        default=15.0, description="How often the reconciler scans the catalog."
    )
    max_attempts: int = Field(
        default=5,
        description="Deliveries of one instance to a stage before it is marked failed.",
    )

    # --- operations --------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_json: bool = Field(
        default=False, description="Log one JSON object per line instead of plain text."
    )

    @field_validator(
        "allowed_calling_aes", "api_keys", "transfer_syntaxes", "commitment_peers", "cors_origins",
        mode="before",
    )
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("transfer_syntaxes")
    @classmethod
    def _check_transfer_syntaxes(cls, value: list[str]) -> list[str]:
        for uid in value:
            if not _UID.fullmatch(uid) or len(uid) > 64:
                raise ValueError(f"{uid!r} is not a transfer syntax UID (digits and dots)")
        return value

    @field_validator("commitment_peers")
    @classmethod
    def _check_commitment_peers(cls, value: list[str]) -> list[str]:
        for peer in value:
            _parse_peer(peer)
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: list[str]) -> list[str]:
        names = [parse_api_key(entry).name for entry in value]
        if len(set(names)) != len(names):
            raise ValueError("two API keys share a name: give each `name:role:key` its own name")
        return value

    @field_validator("viewer_url")
    @classmethod
    def _check_viewer_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(study="s", series="r", sop="i")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError("the viewer URL template may use only {study}, {series} and "
                                 f"{{sop}}: {exc}") from exc
        return value

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or "\\" in value:
            raise ValueError("an AE title has 1 to 16 characters and no backslash")
        return value

    @property
    def embedded(self) -> bool:
        """True when no external server is configured: everything runs in one process."""
        return self.database_url is None and self.broker_url is None and self.s3_endpoint is None

    @property
    def commitment_addresses(self) -> dict[str, tuple[str, int]]:
        """``MEDHASH_COMMITMENT_PEERS`` as {AE title: (host, port)}."""
        return dict(_parse_peer(peer) for peer in self.commitment_peers)

    @property
    def api_key_entries(self) -> list[ApiKey]:
        """``MEDHASH_API_KEYS`` parsed (the validator has checked every entry)."""
        return [parse_api_key(entry) for entry in self.api_keys]

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "catalog.sqlite3"

    @property
    def object_dir(self) -> Path:
        return self.data_dir / "objects"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def settings_markdown_table() -> str:
    """Markdown table of every setting, its environment variable and default (for the README)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        if value is None:
            default = "(unset)"
        elif value in ("", []):
            default = "(empty)"
        else:
            default = f"`{str(value).replace(str(Path.home()), '~')}`"
        rows.append(f"| `MEDHASH_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)
