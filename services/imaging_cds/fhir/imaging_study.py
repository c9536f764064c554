"""Reading the EHR's ImagingStudy: which study, whose chart, and where its images are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging_cds.errors import InvalidNotificationError
from imaging_cds.fhir import codes
from imaging_cds.fhir.report import StudyContext


@dataclass(frozen=True)
class ImagingStudyInfo:
    context: StudyContext
    status: str
    endpoint_refs: tuple[str, ...]  # 'Endpoint/id' references, resolved by the worker
    number_of_instances: int | None


def parse_imaging_study(resource: Any) -> ImagingStudyInfo:
    """Validate the fields the pipeline relies on; InvalidNotificationError names what is missing."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "ImagingStudy":
        raise InvalidNotificationError("expected an ImagingStudy resource")
    study_id = resource.get("id")
    if not isinstance(study_id, str) or not study_id:
        raise InvalidNotificationError("ImagingStudy has no id")
    study_uid = study_uid_of(resource)
    subject = (resource.get("subject") or {}).get("reference")
    if not isinstance(subject, str) or not subject:
        raise InvalidNotificationError(f"ImagingStudy/{study_id} has no subject reference")
    encounter = (resource.get("encounter") or {}).get("reference")
    based_on = tuple(
        ref["reference"] for ref in resource.get("basedOn") or [] if isinstance(ref, dict) and ref.get("reference")
    )
    endpoints = tuple(
        ref["reference"]
        for ref in resource.get("endpoint") or []
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str)
    )
    n = resource.get("numberOfInstances")
    return ImagingStudyInfo(
        context=StudyContext(
            imaging_study_id=study_id,
            study_uid=study_uid,
            subject=subject,
            encounter=encounter if isinstance(encounter, str) else None,
            based_on=based_on,
        ),
        status=str(resource.get("status", "")),
        endpoint_refs=endpoints,
        number_of_instances=n if isinstance(n, int) else None,
    )


def study_uid_of(resource: dict[str, Any]) -> str:
    """The DICOM Study Instance UID from ImagingStudy.identifier (system urn:dicom:uid, value urn:oid:...)."""
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == codes.DICOM_UID:
            value = str(ident.get("value", ""))
            uid = value.removeprefix("urn:oid:")
            if is_dicom_uid(uid):
                return uid
    raise InvalidNotificationError(
        f"ImagingStudy/{resource.get('id', '?')} has no DICOM Study Instance UID "
        f"(identifier with system {codes.DICOM_UID} and value urn:oid:<uid>)"
    )


def is_dicom_uid(uid: str) -> bool:
    parts = uid.split(".")
    return 0 < len(uid) <= 64 and all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)
