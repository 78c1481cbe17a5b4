"""The search service's request and response bodies: the HTTP contract, as pydantic models.

They are the OpenAPI document (``/openapi.json``) other systems code against, so every field
says what it means. Patient-identifying attributes appear in exactly one place,
``patient_id``, and only when the service was started with ``expose_patient_data``: routes
leave the field unset otherwise, and unset fields are not serialised at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_K = 100
"""The most neighbours one query may ask for."""

DEFAULT_K = 10


DATE_PATTERN = r"^(\d{8}|\d{4}-\d{2}-\d{2})$"


class SearchOptions(BaseModel):
    """Options of any search; as JSON fields or multipart form fields (lists there as
    comma-separated text); ``k`` and ``include_excluded`` also as query parameters.

    The filters hold together (every one that is set must hold) and the top ``k`` is exact
    under them: the results are the ``k`` nearest of the slices they admit.
    """

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(default=None, ge=1, le=MAX_K,
                          description=f"Neighbours to return (default {DEFAULT_K}).")
    include_excluded: bool | None = Field(
        default=None, description="Also return slices the cleaning flagged as excluded "
        "(default false).")
    modality: list[str] | None = Field(
        default=None, max_length=32, description="Only slices of these modalities (`CT`, `MR`).")
    body_part: list[str] | None = Field(
        default=None, max_length=32,
        description="Only slices of these Body Part Examined values (`HEAD`, `CHEST`).")
    study_date_from: str | None = Field(
        default=None, pattern=DATE_PATTERN,
        description="Only studies of this date or later (`YYYYMMDD` or `YYYY-MM-DD`); "
        "instances without a StudyDate are left out.")
    study_date_to: str | None = Field(
        default=None, pattern=DATE_PATTERN,
        description="Only studies of this date or earlier (inclusive).")
    calling_ae: list[str] | None = Field(
        default=None, max_length=32,
        description="Only instances received over C-STORE from these calling AE titles.")
    exclude_same_patient: bool | None = Field(
        default=None, description="Leave out the query's own patient (a DICOM upload's "
        "PatientID, or the queried instance's); not possible for PNG/JPEG uploads.")
    exclude_same_study: bool | None = Field(
        default=None, description="Leave out the query's own study (a DICOM upload's or the "
        "queried instance's Study Instance UID).")

    @field_validator("modality", "body_part", "calling_ae", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("study_date_from", "study_date_to")
    @classmethod
    def _compact_date(cls, value: str | None) -> str | None:
        return None if value is None else value.replace("-", "")


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
    wado_url: str | None = Field(
        default=None, description="WADO-RS URL of the stored instance, byte for byte as "
        "received (when the service serves DICOMweb retrieval: MEDHASH_EXPOSE_PATIENT_DATA).")
    viewer_url: str | None = Field(
        default=None, description="The instance in the viewer `MEDHASH_VIEWER_URL` names "
        "(when set).")
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


class ForgetRequest(BaseModel):
    """``POST /v1/admin/forget``: exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str | None = Field(default=None, min_length=1, max_length=1024,
                                   description="Forget every instance of this PatientID.")
    study_instance_uid: str | None = Field(default=None, min_length=1, max_length=1024,
                                           description="Forget every instance of this study.")


class ForgetJobInfo(BaseModel):
    """A forget job: ``state`` is `objects` (deleting stored objects), `index` (waiting for
    each model version's indexer to drop its codes) or `done` (nothing of it remains)."""

    id: int
    selector: str = Field(description="`patient`, `study` or `retention`.")
    target: str = Field(description="`patient:<pseudonym>` or `study:<Study Instance UID>`; "
                        "never a PatientID.")
    requested_by: str
    state: Literal["objects", "index", "done"]
    instances: int
    objects: int
    slices: int
    created_at: float
    updated_at: float


class AuditEntryInfo(BaseModel):
    id: int
    at: float = Field(description="Unix time.")
    actor: str = Field(description="API key name, `ae:<calling AE title>`, `cli:<user>`, "
                       "`retention` or `anonymous`.")
    action: str = Field(description="search, instance, thumbnail, retrieve, qido, stow, "
                        "c-store, forget or audit.")
    targets: list[str] = Field(description="UIDs (or a patient's pseudonym) it was about.")
    result_count: int
    outcome: str
    detail: str | None


class AuditPage(BaseModel):
    """``GET /v1/audit``: newest first."""

    total: int = Field(description="Entries matching the filters, on every page.")
    limit: int
    offset: int
    entries: list[AuditEntryInfo]
