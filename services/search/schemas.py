"""The search service's request and response bodies: the HTTP contract, as pydantic models.

They are the OpenAPI document (``/openapi.json``) other systems code against, so every field
says what it means. Patient-identifying attributes appear in exactly one place,
``patient_id``, and only when the service was started with ``expose_patient_data``: routes
leave the field unset otherwise, and unset fields are not serialised at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 100
"""The most neighbours one query may ask for."""

DEFAULT_K = 10


class SearchOptions(BaseModel):
    """Options of any search; as JSON fields, multipart form fields or query parameters."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(default=None, ge=1, le=MAX_K,
                          description=f"Neighbours to return (default {DEFAULT_K}).")
    include_excluded: bool | None = Field(
        default=None, description="Also return slices the cleaning flagged as excluded "
        "(default false).")


class InstanceQuery(SearchOptions):
    """JSON body of ``POST /v1/search``: search with a stored instance's codes."""

    sop_instance_uid: str = Field(min_length=1, max_length=256,
                                  description="SOP Instance UID of a stored, encoded instance.")


class QueryInfo(BaseModel):
    """What was searched with."""

    source: Literal["upload", "instance"] = Field(
        description="`upload`: a posted file; `instance`: a stored instance's codes.")
    sop_instance_uid: str | None = Field(
        default=None, description="The queried instance (instance queries only).")
    slices: int = Field(description="Slices (frames) the query has.")
    frames: list[int] = Field(
        description="0-based frames searched with: every frame, or evenly spaced ones when "
        "there are more than the service's per-query cap. A result's distance is its "
        "smallest Hamming distance to any of them.")
    thumbnail: str | None = Field(
        default=None,
        description="The first searched frame as a PNG `data:` URL, as the model saw it "
        "(uploads only; an instance query has its `thumbnail_url`).")
    thumbnail_url: str | None = Field(
        default=None, description="Thumbnail of the queried instance (instance queries only).")


class SearchResult(BaseModel):
    """One stored slice near the query."""

    sop_instance_uid: str
    frame: int = Field(description="0-based frame of the instance.")
    distance: int = Field(description="Hamming distance to the closest query frame (bits).")
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None
    body_part: str | None
    thumbnail_url: str
    excluded: bool = Field(
        description="Flagged by the cleaning (blank, saturated, IQR outlier); only returned "
        "with `include_excluded`.")
    patient_id: str | None = Field(
        default=None, description="Only when the service exposes patient data.")


class SearchResponse(BaseModel):
    query: QueryInfo
    model_version: str = Field(description="Version (sha256) of the model the codes come from.")
    generation: int = Field(description="Index generation that answered.")
    k: int
    results: list[SearchResult] = Field(
        description="Nearest first; ties by the slice's catalog order. Fewer than `k` when "
        "the index holds fewer eligible slices.")


class FrameInfo(BaseModel):
    frame: int
    excluded: bool
    exclusion_reason: str | None
    thumbnail_url: str


class InstanceInfo(BaseModel):
    """``GET /v1/instances/{sop_uid}``: the current version of a stored instance."""

    sop_instance_uid: str
    state: str = Field(description="received, preprocessed, encoded, indexed, failed or skipped.")
    reason: str | None = Field(description="Why it failed or was skipped, when it was.")
    state_changed_at: float = Field(description="Unix time of the last state change.")
    received_at: float = Field(description="Unix time the current bytes were received.")
    versions: int = Field(description="Distinct byte versions received under this UID.")
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None
    body_part: str | None
    number_of_frames: int
    size_bytes: int
    frames: list[FrameInfo] = Field(description="Preprocessed slices (empty before then).")
    patient_id: str | None = Field(
        default=None, description="Only when the service exposes patient data.")


class IndexInfo(BaseModel):
    generation: int | None = Field(description="Loaded generation; null before the first.")
    size: int = Field(description="Codes in the loaded generation.")


class Stats(BaseModel):
    """``GET /v1/stats``."""

    states: dict[str, int] = Field(description="Current instances by pipeline state.")
    total: int
    model_version: str | None = Field(description="Null when no model is configured.")
    index: IndexInfo


class Check(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    """``GET /healthz``: 200 when every check passes, 503 (``degraded``) otherwise."""

    status: Literal["ok", "degraded"]
    checks: dict[str, Check] = Field(description="`catalog`, `store`, `index`.")


class ErrorBody(BaseModel):
    """Every error: what went wrong and what to do about it."""

    detail: str
