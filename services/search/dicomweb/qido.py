"""QIDO-RS (PS3.18 10.6): ``/studies``, ``/series``, ``/instances`` (and the same nested under
a study or series), answered from the catalog in DICOM JSON.

Matching keys, by keyword or tag (``PatientID`` or ``00100020``): PatientID and
AccessionNumber (exact, or ``*``/``?`` wildcards), Modality / ModalitiesInStudy, StudyDate
(``20240101``, ``20240101-20241231``, ``-20241231``, ``20240101-``), StudyInstanceUID,
SeriesInstanceUID, SOPInstanceUID (UID lists: ``a,b`` or ``a\\b``); a lone ``*`` matches
everything. ``limit`` (default 100, at most 1000) and ``offset`` page through results in UID
order. ``includefield`` is accepted (``all`` or attributes): the results always carry every
attribute the catalog keeps, and no other. Matching on another valid DICOM attribute
(PatientName, StudyDescription, ...) is not supported: it is ignored and the response says
so in a ``Warning`` header, as PS3.18 asks; an unknown parameter or a malformed value is a
400. Values only ever become bound SQL parameters (:mod:`shared.storage.catalog.dicomweb`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from services.search.access import Caller
from services.search.dependencies import SearchService, service
from services.search.dicomweb.access import audited, retrieval
from services.search.dicomweb.dicomjson import (
    MEDIA_TYPE,
    instance_json,
    series_json,
    study_json,
)
from services.search.dicomweb.stow import dicomweb_base
from shared.storage.catalog.dicomweb import Match

top = APIRouter()
"""The three searches at the root: registered first."""
nested = APIRouter()
"""Searches within a study or series: registered after WADO-RS's ``.../metadata`` routes."""

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_VALUE = 1024
_DATE = r"(?:\d{8})"
_DATE_RANGE = re.compile(rf"({_DATE})?(-)?({_DATE})?")
_CODE_STRING = re.compile(r"[A-Z0-9_ *?]{1,16}")

MATCHING = ("PatientID", "AccessionNumber", "Modality", "ModalitiesInStudy", "StudyDate",
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
"""Attributes QIDO-RS here can match on."""


@dataclass
class Query:
    match: Match
    limit: int
    offset: int
    matched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _keyword(name: str) -> str | None:
    """The DICOM keyword a query key names (a keyword, or a tag as 8 hex digits)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        try:
            return keyword_for_tag(int(name, 16)) or None
        except (KeyError, ValueError):
            return None
    return name if tag_for_keyword(name) is not None else None


def _uids(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in re.split(r"[,\\]", value) if item.strip())


def _number(name: str, value: str, maximum: int) -> int:
    if not value.isdigit():
        raise HTTPException(400, f"{name}={value[:40]!r}: expected a non-negative whole number")
    return min(int(value), maximum)


def parse_query(params: Sequence[tuple[str, str]]) -> Query:
    """A QIDO-RS query string as a catalog :class:`Match`; 400 naming what is wrong."""
    values: dict[str, Any] = {}
    query = Query(Match(), DEFAULT_LIMIT, 0)
    for name, value in params:
        if len(value) > MAX_VALUE:
            raise HTTPException(400, f"{name[:40]}: value longer than {MAX_VALUE} characters")
        lowered = name.lower()
        if lowered == "limit":
            query.limit = _number(name, value, MAX_LIMIT)
            continue
        if lowered == "offset":
            query.offset = _number(name, value, 10**9)
            continue
        if lowered == "fuzzymatching":
            if value.lower() == "true":
                query.warnings.append("fuzzy matching is not supported: matching is exact")
            continue
        if lowered == "includefield":
            for item in filter(None, (part.strip() for part in value.split(","))):
                if item != "all" and _keyword(item) is None:
                    raise HTTPException(400, f"includefield={item[:40]!r} is not a DICOM "
                                             "keyword or tag")
            continue
        keyword = _keyword(name)
        if keyword is None:
            raise HTTPException(400, f"unknown query parameter {name[:40]!r}: QIDO-RS takes DICOM "
                                     f"keywords or tags ({', '.join(MATCHING)}), limit, offset, "
                                     "includefield, fuzzymatching")
        if keyword not in MATCHING:
            query.warnings.append(f"matching on {keyword} is not supported and was ignored")
            continue
        query.matched.append(keyword)
        if value.strip() in ("", "*"):
            continue  # universal matching
        values[keyword] = value
    query.match = _match(values)
    return query


def _match(values: dict[str, str]) -> Match:
    match = Match()
    for keyword, value in values.items():
        if keyword in ("PatientID", "AccessionNumber"):
            field_name = "patient_id" if keyword == "PatientID" else "accession_number"
            match = replace(match, **{field_name: value})
        elif keyword in ("Modality", "ModalitiesInStudy"):
            if not _CODE_STRING.fullmatch(value):
                raise HTTPException(400, f"{keyword}={value[:40]!r}: a modality is a code string "
                                         "of up to 16 capitals, digits, '_' (e.g. CT, MR)")
            match = replace(match, modality=value)
        elif keyword == "StudyDate":
            found = _DATE_RANGE.fullmatch(value)
            if not found or not (found.group(1) or found.group(3)) or (
                    found.group(2) is None and found.group(3)):
                raise HTTPException(400, f"StudyDate={value[:40]!r}: expected YYYYMMDD or a range "
                                         "YYYYMMDD-YYYYMMDD (either end may be left open)")
            start, dash, end = found.groups()
            match = replace(match, study_date_from=start, study_date_to=end if dash else start)
        else:
            uids = _uids(value)
            if not uids:
                raise HTTPException(400, f"{keyword}={value[:40]!r}: expected one or more UIDs "
                                         "separated by ',' or '\\'")
            field_name = {"StudyInstanceUID": "study_uids", "SeriesInstanceUID": "series_uids",
                          "SOPInstanceUID": "sop_uids"}[keyword]
            match = replace(match, **{field_name: uids})
    return match


def _answer(request: Request, svc: SearchService, who: Caller, level: str,
            fetch: Callable[[Query, str], list[dict[str, Any]]],
            **within: tuple[str, ...]) -> JSONResponse:
    query = parse_query(list(request.query_params.multi_items()))
    if within:
        query.match = replace(query.match, **within)
    results = fetch(query, dicomweb_base(request))
    audited(svc, who, "qido", [], len(results),
            detail=f"{level}: {', '.join(query.matched) or 'all'}")
    headers = {"Warning": ", ".join(f'299 medhash "{text}"' for text in query.warnings)} \
        if query.warnings else {}
    return JSONResponse(results, media_type=MEDIA_TYPE, headers=headers)


def _studies(svc: SearchService) -> Callable[[Query, str], list[dict[str, Any]]]:
    return lambda query, base: [study_json(row, base) for row in svc.runtime.catalog.qido_studies(
        query.match, query.limit, query.offset)]


def _series(svc: SearchService) -> Callable[[Query, str], list[dict[str, Any]]]:
    return lambda query, base: [series_json(row, base) for row in svc.runtime.catalog.qido_series(
        query.match, query.limit, query.offset)]


def _instances(svc: SearchService) -> Callable[[Query, str], list[dict[str, Any]]]:
    return lambda query, base: [instance_json(row, base) for row in
                                svc.runtime.catalog.qido_instances(query.match, query.limit,
                                                                   query.offset)]


@top.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request, who: Caller = Depends(retrieval),
                   svc: SearchService = Depends(service)) -> JSONResponse:
    return _answer(request, svc, who, "studies", _studies(svc))


@top.get("/series", summary="QIDO-RS: search for series")
def search_series(request: Request, who: Caller = Depends(retrieval),
                  svc: SearchService = Depends(service)) -> JSONResponse:
    return _answer(request, svc, who, "series", _series(svc))


@top.get("/instances", summary="QIDO-RS: search for instances")
def search_instances(request: Request, who: Caller = Depends(retrieval),
                     svc: SearchService = Depends(service)) -> JSONResponse:
    return _answer(request, svc, who, "instances", _instances(svc))


@nested.get("/studies/{study:path}/series/{series:path}/instances",
            summary="QIDO-RS: search for instances of a series")
def search_series_instances(request: Request, study: str, series: str,
                            who: Caller = Depends(retrieval),
                            svc: SearchService = Depends(service)) -> JSONResponse:
    return _answer(request, svc, who, "instances", _instances(svc), study_uids=(study,),
                   series_uids=(series,))


@nested.get("/studies/{study:path}/series", summary="QIDO-RS: search for series of a study")
def search_study_series(request: Request, study: str, who: Caller = Depends(retrieval),
                        svc: SearchService = Depends(service)) -> JSONResponse:
    return _answer(request, svc, who, "series", _series(svc), study_uids=(study,))


@nested.get("/studies/{study:path}/instances", summary="QIDO-RS: search for instances of a study")
def search_study_instances(request: Request, study: str, who: Caller = Depends(retrieval),
                           svc: SearchService = Depends(service)) -> JSONResponse:
    return _answer(request, svc, who, "instances", _instances(svc), study_uids=(study,))


__all__ = ["Query", "nested", "parse_query", "top"]
