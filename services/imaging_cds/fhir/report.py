"""Building the FHIR R4 results: one transaction Bundle per analysed series and model.

``build_report_bundle`` is pure: typed inputs in, a validated Bundle (a JSON-ready dict) out. Every resource is
checked against the fhir.resources R4B model (the same shape as R4 for these resources) before it leaves, so an
invalid resource cannot be posted. Conventions (DESIGN.md): DiagnosticReport status preliminary/final, LOINC
18748-4, Radiology categories, AIAST security label, Observations with UCUM quantities, a Device for the algorithm,
a Provenance; every resource carries a deterministic identifier so that a replay is a no-op (``ifNoneExist``).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance

from imaging_cds.fhir import codes
from imaging_cds.fhir.codes import Code, Measure

# Namespace for the deterministic identifiers (uuid5); fixed forever, or every replay becomes a new result.
IDENTIFIER_NAMESPACE = uuid.UUID("6f1b8a2e-51c4-4bb5-9a57-3d1f2c7e9b10")
IDENTIFIER_SYSTEM = codes.URN_IETF_RFC_3986


@dataclass(frozen=True)
class StudyContext:
    """What the EHR's ImagingStudy says about where results belong. References are 'Type/id' strings."""

    imaging_study_id: str
    study_uid: str
    subject: str
    encounter: str | None = None
    based_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the results (becomes the Device)."""

    name: str
    title: str
    version: str
    served_version: str  # Triton model version (or the local file's)


@dataclass(frozen=True)
class MeasuredValue:
    measure: Measure
    value: float
    interpretation: Code | None = None


@dataclass(frozen=True)
class Findings:
    """A model's results on one series, ready to be charted."""

    series_uid: str
    measurements: tuple[MeasuredValue, ...]
    conclusion: str
    conclusion_codes: tuple[Code, ...]
    key_image_png: bytes
    key_image_title: str


def result_identifier(study_uid: str, series_uid: str, algorithm: Algorithm, key: str) -> str:
    """urn:uuid derived from (study, series, model, model version, finding key): the same result, the same id."""
    name = "|".join((study_uid, series_uid, algorithm.name, algorithm.version, key))
    return f"urn:uuid:{uuid.uuid5(IDENTIFIER_NAMESPACE, name)}"


def device_identifier(algorithm: Algorithm) -> str:
    return f"urn:uuid:{uuid.uuid5(IDENTIFIER_NAMESPACE, f'device|{algorithm.name}|{algorithm.version}')}"


def build_report_bundle(
    study: StudyContext, algorithm: Algorithm, findings: Findings, status: str, issued: str
) -> dict[str, Any]:
    """A FHIR transaction Bundle: Device, Observations, DiagnosticReport and Provenance, each conditional-create."""
    if status not in ("preliminary", "final"):
        raise ValueError(f"report status must be preliminary or final, got {status!r}")
    if not findings.measurements:
        raise ValueError(f"study {study.study_uid}: no measurements; a report without results is not written")
    device_id = device_identifier(algorithm)
    device = _device(algorithm, device_id)
    report_id = result_identifier(study.study_uid, findings.series_uid, algorithm, "report")
    observations = [_observation(study, algorithm, findings, m, device_id, status) for m in findings.measurements]
    report = _report(study, algorithm, findings, report_id, [o["fullUrl"] for o in observations], status, issued)
    provenance_id = result_identifier(study.study_uid, findings.series_uid, algorithm, "provenance")
    provenance = _provenance(study, provenance_id, report_id, device_id, issued)
    entries = [
        _entry(device_id, Device, device),
        *[_entry(o["fullUrl"], Observation, o["resource"]) for o in observations],
        _entry(report_id, DiagnosticReport, report),
        # Provenance has no identifier element in R4: its deterministic id travels as a meta.tag instead.
        _entry(provenance_id, Provenance, provenance, condition=f"_tag={IDENTIFIER_SYSTEM}|{provenance_id}"),
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return _validated(Bundle, bundle)


def summary_text(algorithm: Algorithm, findings: Findings, status: str) -> str:
    lines = [
        f"AI-generated result ({algorithm.title}, {algorithm.name} {algorithm.version}); "
        + ("awaiting review by a radiologist." if status == "preliminary" else "not reviewed by a radiologist."),
        findings.conclusion,
    ]
    for m in findings.measurements:
        flag = f" ({m.interpretation.display})" if m.interpretation else ""
        lines.append(f"- {m.measure.code.display}: {_rounded(m):g} {m.measure.unit.display}{flag}")
    lines.append("Not for use as the sole basis of a clinical decision.")
    return "\n".join(lines)


def _device(algorithm: Algorithm, device_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": device_id}],
        "status": "active",
        "manufacturer": "imaging-cds",
        "deviceName": [
            {"name": algorithm.title, "type": "user-friendly-name"},
            {"name": algorithm.name, "type": "model-name"},
        ],
        "modelNumber": algorithm.name,
        "type": codes.DEVICE_TYPE_AI.concept(),
        "version": [
            {"type": {"text": "algorithm"}, "value": algorithm.version},
            {"type": {"text": "triton-model-version"}, "value": algorithm.served_version},
        ],
        "note": [{"text": "Demonstration model built from synthetic data; not for clinical use."}],
    }


def _observation(
    study: StudyContext, algorithm: Algorithm, findings: Findings, m: MeasuredValue, device_id: str, status: str
) -> dict[str, Any]:
    full_url = result_identifier(study.study_uid, findings.series_uid, algorithm, m.measure.key)
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"security": [codes.AI_ASSERTED.coding()]},
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": full_url}],
        "status": status,
        "category": [codes.CATEGORY_IMAGING.concept()],
        "code": m.measure.code.concept(),
        "subject": {"reference": study.subject},
        "device": {"reference": device_id},
        "derivedFrom": [{"reference": f"ImagingStudy/{study.imaging_study_id}"}],
        "partOf": [{"reference": f"ImagingStudy/{study.imaging_study_id}"}],
        "bodySite": codes.LUNG_STRUCTURE.concept(),
        "method": codes.MEASUREMENT_METHOD.concept(f"{algorithm.title} ({algorithm.name} {algorithm.version})"),
        "valueQuantity": {
            "value": _rounded(m),
            "unit": m.measure.unit.display,
            "system": codes.UCUM,
            "code": m.measure.unit.code,
        },
    }
    if study.encounter:
        resource["encounter"] = {"reference": study.encounter}
    if m.interpretation:
        resource["interpretation"] = [m.interpretation.concept()]
    return {"fullUrl": full_url, "resource": resource}


def _report(
    study: StudyContext,
    algorithm: Algorithm,
    findings: Findings,
    report_id: str,
    observation_ids: list[str],
    status: str,
    issued: str,
) -> dict[str, Any]:
    summary = summary_text(algorithm, findings, status)
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [codes.AI_ASSERTED.coding()]},
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": report_id}],
        "status": status,
        "category": [{"coding": [codes.CATEGORY_RADIOLOGY.coding(), codes.CATEGORY_RAD.coding()], "text": "Radiology"}],
        "code": codes.REPORT_CODE.concept(f"{algorithm.title} (AI)"),
        "subject": {"reference": study.subject},
        "issued": issued,
        "performer": [{"display": "imaging-cds"}],
        "imagingStudy": [{"reference": f"ImagingStudy/{study.imaging_study_id}"}],
        "result": [{"reference": ref} for ref in observation_ids],
        "conclusion": findings.conclusion,
        "conclusionCode": [c.concept() for c in findings.conclusion_codes],
        "presentedForm": [
            {
                "contentType": "image/png",
                "title": findings.key_image_title,
                "data": base64.b64encode(findings.key_image_png).decode("ascii"),
            },
            {
                "contentType": "text/plain; charset=utf-8",
                "title": "Summary",
                "data": base64.b64encode(summary.encode()).decode("ascii"),
            },
        ],
    }
    if study.encounter:
        resource["encounter"] = {"reference": study.encounter}
    if study.based_on:
        resource["basedOn"] = [{"reference": ref} for ref in study.based_on]
    return resource


def _provenance(
    study: StudyContext, provenance_id: str, report_id: str, device_id: str, recorded: str
) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": IDENTIFIER_SYSTEM, "code": provenance_id}]},
        "target": [{"reference": report_id}],
        "recorded": recorded,
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                            "display": "Assembler",
                        }
                    ]
                },
                "who": {"reference": device_id},
            }
        ],
        "entity": [{"role": "source", "what": {"reference": f"ImagingStudy/{study.imaging_study_id}"}}],
    }


def _entry(full_url: str, model: type, resource: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
    """A conditional-create transaction entry; by default conditional on the resource's deterministic identifier."""
    request = {
        "method": "POST",
        "url": resource["resourceType"],
        "ifNoneExist": condition or f"identifier={IDENTIFIER_SYSTEM}|{full_url}",
    }
    return {"fullUrl": full_url, "resource": _validated(model, resource), "request": request}


def _validated(model: type, resource: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through the fhir.resources model: raises on any invalid element, returns JSON-ready data."""
    parsed = model.model_validate(resource)  # type: ignore[attr-defined]
    return parsed.model_dump(mode="json", exclude_none=True)  # type: ignore[no-any-return]


def _rounded(m: MeasuredValue) -> float:
    return round(m.value, m.measure.decimals)
