"""The DICOM JSON model (PS3.18 annex F) of what DICOMweb answers: QIDO-RS results, the
STOW-RS response dataset and WADO-RS metadata.

QIDO-RS results are built from the catalog's columns (no object is read to list a study);
metadata is the stored object's own header through pydicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from typing import Any
from urllib.parse import quote

import pydicom
from pydicom.multival import MultiValue

from shared.storage.catalog import Instance
from shared.storage.catalog.dicomweb import SeriesRow, StudyRow

MEDIA_TYPE = "application/dicom+json"

JsonDataset = dict[str, dict[str, Any]]

TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                      "UR", "UT"})

def element(vr: str, *values: Any) -> dict[str, Any]:
    """One attribute: its VR and its values (none -> no ``Value``, as for an empty attribute)."""
    present = [value for value in values if value is not None and value != ""]
    if not present:
        return {"vr": vr}
    if vr == "PN":
        present = [{"Alphabetic": str(value)} for value in present]
    return {"vr": vr, "Value": present}


def uid_path(*uids: str) -> str:
    """``studies/<a>/series/<b>/instances/<c>``, each UID percent-encoded (any stored
    identifier, a ``/`` in it included, stays one path segment)."""
    names = ("studies", "series", "instances")
    return "/".join(f"{name}/{quote(uid, safe='')}" for name, uid in zip(names, uids, strict=False))


def study_json(row: StudyRow, base: str) -> JsonDataset:
    return {
        "00080020": element("DA", row.study_date),
        "00080030": element("TM", row.study_time),
        "00080050": element("SH", row.accession_number),
        "00080061": element("CS", *row.modalities),
        "00081030": element("LO", row.study_description),
        "00081190": element("UR", f"{base}/{uid_path(row.study_instance_uid)}"),
        "00100010": element("PN", row.patient_name),
        "00100020": element("LO", row.patient_id),
        "0020000D": element("UI", row.study_instance_uid),
        "00201206": element("IS", row.series),
        "00201208": element("IS", row.instances),
    }


def series_json(row: SeriesRow, base: str) -> JsonDataset:
    return {
        "00080060": element("CS", row.modality),
        "00081190": element("UR", f"{base}/{uid_path(row.study_instance_uid, row.series_instance_uid)}"),
        "0020000D": element("UI", row.study_instance_uid),
        "0020000E": element("UI", row.series_instance_uid),
        "00200011": element("IS", row.series_number),
        "00201209": element("IS", row.instances),
    }


def instance_json(instance: Instance, base: str) -> JsonDataset:
    path = uid_path(instance.study_instance_uid or "", instance.series_instance_uid or "",
                    instance.sop_instance_uid)
    return {
        "00080016": element("UI", instance.sop_class_uid),
        "00080018": element("UI", instance.sop_instance_uid),
        "00080020": element("DA", instance.study_date),
        "00080050": element("SH", instance.accession_number),
        "00080060": element("CS", instance.modality),
        "00081190": element("UR", f"{base}/{path}"),
        "00083002": element("UI", instance.transfer_syntax_uid),
        "00100020": element("LO", instance.patient_id),
        "00180015": element("CS", instance.body_part),
        "0020000D": element("UI", instance.study_instance_uid),
        "0020000E": element("UI", instance.series_instance_uid),
        "00200013": element("IS", instance.instance_number),
        "00280008": element("IS", instance.number_of_frames),
    }


def referenced(sop_class_uid: str | None, sop_instance_uid: str | None, *,
               retrieve_url: str | None = None, failure: int | None = None) -> JsonDataset:
    """An item of ReferencedSOPSequence (stored) or FailedSOPSequence (``failure`` given)."""
    item = {"00081150": element("UI", sop_class_uid), "00081155": element("UI", sop_instance_uid)}
    if retrieve_url is not None:
        item["00081190"] = element("UR", retrieve_url)
    if failure is not None:
        item["00081197"] = element("US", failure)
    return item


def stow_response(stored: Sequence[JsonDataset], failed: Sequence[JsonDataset],
                  retrieve_url: str | None) -> JsonDataset:
    """The STOW-RS response dataset (PS3.18 10.5.3)."""
    body: JsonDataset = {}
    if retrieve_url is not None:
        body["00081190"] = element("UR", retrieve_url)
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": list(failed)}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": list(stored)}
    return body


def metadata_json(part10: bytes) -> JsonDataset:
    """The stored object's dataset (file meta and pixel data left out) as DICOM JSON, binary
    values inline (InlineBinary): without pixel data they are small (LUTs, overlays, icons)."""
    dataset = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True, force=True)
    body = dataset.to_json_dict(bulk_data_threshold=len(part10) + 1, suppress_invalid_tags=True)
    # pydicom drops a value that breaks its VR (a SOP Instance UID with a '/'); the stored
    # identity must still be there, as text
    for elem in dataset:
        tag = f"{elem.tag:08X}"
        if tag not in body and elem.VR in TEXT_VRS:
            values = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
            body[tag] = element(elem.VR, *(str(value) for value in values))
    return dict(sorted(body.items()))
