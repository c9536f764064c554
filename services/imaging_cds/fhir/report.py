"""Building the FHIR R4 results: one transaction Bundle per analysed series and model.

``build_report_bundle`` is pure: typed inputs in, a validated Bundle (a JSON-ready dict) out. Every resource is
checked against the fhir.resources R4B model (the same shape as R4 for these resources) before it leaves, so an
invalid resource cannot be posted. Conventions (DESIGN.md): DiagnosticReport status preliminary/final, LOINC
18748-4, Radiology categories, AIAST security label, Observations with UCUM quantities, a Device for the algorithm,
a Provenance; every resource carries a deterministic identifier so that a replay is a no-op (``ifNoneExist``).

Radiomics: each region with IBSI features (``Findings.radiomics``) becomes one Observation (code
``ibsi-radiomics``, the region as bodySite, the IBSI processing in ``method``) with one ``component`` per feature,
coded by its IBSI identifier (system ``codes.IBSI``, display the feature name) and valued as a UCUM quantity, without
a unit where the feature is dimensionless. A texture feature carries its aggregation method's IBSI identifier in the
``ibsi-aggregation`` extension; a value that cannot be computed for the region has a dataAbsentReason instead.
"""

from __future__ import annotations

import base64
import math
import uuid
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance

from imaging_cds.fhir import codes
from imaging_cds.fhir.codes import Code, Measure, Unit

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
class Component:
    """One part of a finding: a size (``quantity`` in ``unit``, rounded to ``decimals``) or a location (``concept``)."""

    code: Code
    quantity: float | None = None
    unit: Unit | None = None
    decimals: int = 1
    concept: Code | None = None

    def __post_init__(self) -> None:
        if (self.quantity is None) == (self.concept is None):
            raise ValueError(f"component {self.code.code}: give a quantity or a concept, not both or neither")
        if self.quantity is not None and (self.unit is None or not math.isfinite(self.quantity)):
            raise ValueError(f"component {self.code.code}: a quantity needs a UCUM unit and a finite value")


@dataclass(frozen=True)
class CodedFinding:
    """A finding (e.g. emphysema), present or absent, with its size and location as components.

    ``key`` names it in result identifiers (stable across model versions); ``value`` is Present or Absent.
    """

    key: str
    code: Code
    value: Code
    interpretation: Code | None = None
    components: tuple[Component, ...] = ()
    body_site: Code | None = codes.LUNG_STRUCTURE  # None: the model states no body site
    also_coded: tuple[Code, ...] = ()  # the same concept in other code systems (RadLex, RadElement...)
    text: str = ""  # the finding in words, where more than its code (e.g. "Pulmonary nodule 1 of 3")


@dataclass(frozen=True)
class FeatureValue:
    """One radiomics feature of a region: ``code`` is the IBSI identifier (system ``codes.IBSI``) and name."""

    code: Code
    value: float  # NaN where the feature cannot be computed for the region
    unit: Unit | None = None  # UCUM; None for a dimensionless feature
    aggregation: Code | None = None  # IBSI texture aggregation method, for texture features
    text: str = ""  # the feature in words where the code alone is ambiguous (parameter, aggregation)


@dataclass(frozen=True)
class RegionFeatures:
    """The radiomics features of one segmented region or finding, computed with one IBSI configuration."""

    key: str  # stable finding key in identifiers, e.g. "radiomics-lung"
    region: Code  # becomes the Observation's bodySite
    method: str  # the IBSI image processing in words
    features: tuple[FeatureValue, ...]


@dataclass(frozen=True)
class Findings:
    """A model's results on one series, ready to be charted."""

    series_uid: str
    measurements: tuple[MeasuredValue, ...]
    conclusion: str
    conclusion_codes: tuple[Code, ...]
    key_image_png: bytes
    key_image_title: str
    radiomics: tuple[RegionFeatures, ...] = ()
    coded_findings: tuple[CodedFinding, ...] = ()


@dataclass(frozen=True)
class PreviousReport:
    """The report already in the chart for this study and model, as read back with its results.

    ``model_version`` is the version that wrote it (meta.tag, '' when unknown); ``results`` maps each result
    Observation's identifier value to the Observation as stored (with its id and meta.versionId).
    """

    resource: dict[str, Any]
    results: dict[str, dict[str, Any]]

    @property
    def id(self) -> str:
        return str(self.resource["id"])

    @property
    def version_id(self) -> str:
        return str((self.resource.get("meta") or {}).get("versionId", ""))

    @property
    def status(self) -> str:
        return str(self.resource.get("status", ""))

    @property
    def subject(self) -> str:
        """'Patient/id', also when the server answered with an absolute reference."""
        reference = str((self.resource.get("subject") or {}).get("reference", ""))
        return "/".join(reference.split("/")[-2:])

    @property
    def model_version(self) -> str:
        tags = (self.resource.get("meta") or {}).get("tag") or []
        return next((str(t.get("code", "")) for t in tags if t.get("system") == codes.RESULT_VERSION_SYSTEM), "")

    @classmethod
    def from_search(cls, resources: list[dict[str, Any]], report_identifier: str) -> PreviousReport | None:
        """From a ``DiagnosticReport?identifier=...&_include=DiagnosticReport:result`` search's resources."""
        reports = [
            r
            for r in resources
            if r.get("resourceType") == "DiagnosticReport"
            and any(i.get("value") == report_identifier for i in r.get("identifier") or [])
        ]
        if not reports:
            return None
        if len(reports) > 1:
            ids = ", ".join(f"DiagnosticReport/{r.get('id')}" for r in reports)
            raise ValueError(f"{len(reports)} reports carry the identifier {report_identifier} ({ids})")
        results = {
            str(i.get("value")): r
            for r in resources
            if r.get("resourceType") == "Observation"
            for i in r.get("identifier") or []
            if i.get("system") == IDENTIFIER_SYSTEM
        }
        return cls(resource=reports[0], results=results)


def result_identifier(study_uid: str, series_uid: str, algorithm: Algorithm, key: str) -> str:
    """urn:uuid derived from (study, series, model, finding key): the same result, the same id.

    The model *version* is left out on purpose: a new version's value for the same finding is the same result,
    amended (the Observation is updated in place and keeps its history), not a second one in the chart.
    """
    name = "|".join((study_uid, series_uid, algorithm.name, key))
    return f"urn:uuid:{uuid.uuid5(IDENTIFIER_NAMESPACE, name)}"


def report_identifier(study_uid: str, algorithm: Algorithm) -> str:
    """urn:uuid of the one report per (study, model), whatever the model version or the series it analysed."""
    return f"urn:uuid:{uuid.uuid5(IDENTIFIER_NAMESPACE, f'report|{study_uid}|{algorithm.name}')}"


def provenance_identifier(study_uid: str, series_uid: str, algorithm: Algorithm, key: str = "provenance") -> str:
    """One Provenance per (study, series, model, model version): each version's write is recorded once."""
    name = "|".join((study_uid, series_uid, algorithm.name, algorithm.version, key))
    return f"urn:uuid:{uuid.uuid5(IDENTIFIER_NAMESPACE, name)}"


def result_version(algorithm: Algorithm) -> str:
    """The meta.tag code that says which model version wrote a report."""
    return f"{algorithm.name}@{algorithm.version}"


def device_identifier(algorithm: Algorithm) -> str:
    return f"urn:uuid:{uuid.uuid5(IDENTIFIER_NAMESPACE, f'device|{algorithm.name}|{algorithm.version}')}"


def build_report_bundle(
    study: StudyContext,
    algorithm: Algorithm,
    findings: Findings,
    status: str,
    issued: str,
    previous: PreviousReport | None = None,
) -> dict[str, Any]:
    """A FHIR transaction Bundle: Device, Observations, DiagnosticReport and Provenance.

    Without ``previous`` every entry is a conditional create, so a replay is a no-op. With the report already in the
    chart (``previous``, read back by the caller) the Bundle amends it: the report is updated in place (same id and
    identifier, status ``amended``, ``ifMatch`` its version), each of its results is updated (status ``amended``),
    new results are created, and results the new version no longer gives are marked ``cancelled``; the server keeps
    every earlier version in the resources' history. A ``cancelled`` previous report (the study could not be analysed
    then) is replaced by the result with ``status``.
    """
    if status not in ("preliminary", "final"):
        raise ValueError(f"report status must be preliminary or final, got {status!r}")
    if not (findings.measurements or findings.coded_findings or findings.radiomics):
        raise ValueError(f"study {study.study_uid}: no results; a report without results is not written")
    device_id = device_identifier(algorithm)
    device = _device(algorithm, device_id)
    report_id = report_identifier(study.study_uid, algorithm)
    observations = [_observation(study, algorithm, findings, m, device_id, status) for m in findings.measurements]
    observations += [
        _radiomics_observation(study, algorithm, findings, r, device_id, status) for r in findings.radiomics
    ]
    observations += [
        _finding_observation(study, algorithm, findings, f, device_id, status) for f in findings.coded_findings
    ]
    for o in observations:
        o["resource"]["issued"] = issued
    report_status = "amended" if previous is not None and previous.status != "cancelled" else status
    result_entries, result_refs = _result_entries(observations, previous)
    report = _report(study, algorithm, findings, report_id, result_refs, report_status, issued)
    provenance_id = provenance_identifier(study.study_uid, findings.series_uid, algorithm)
    provenance = _provenance(study, provenance_id, report_id, device_id, issued, previous)
    entries = [
        _entry(device_id, Device, device),
        *result_entries,
        _report_entry(report_id, report, previous),
        # Provenance has no identifier element in R4: its deterministic id travels as a meta.tag instead.
        _entry(provenance_id, Provenance, provenance, condition=f"_tag={IDENTIFIER_SYSTEM}|{provenance_id}"),
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return _validated(Bundle, bundle)


_REVIEW_NOTE = {
    "preliminary": "awaiting review by a radiologist.",
    "final": "not reviewed by a radiologist.",
    "amended": "amended: replaces the earlier AI result for this study, awaiting review by a radiologist.",
}


def summary_text(algorithm: Algorithm, findings: Findings, status: str) -> str:
    lines = [
        f"AI-generated result ({algorithm.title}, {algorithm.name} {algorithm.version}); " + _REVIEW_NOTE[status],
        findings.conclusion,
    ]
    for m in findings.measurements:
        flag = f" ({m.interpretation.display})" if m.interpretation else ""
        lines.append(f"- {m.measure.code.display}: {_rounded(m):g} {m.measure.unit.display}{flag}")
    for r in findings.radiomics:
        lines.append(f"- Radiomics, {r.region.display}: {len(r.features)} IBSI features ({r.method})")
    for f in findings.coded_findings:
        parts = [_component_text(c) for c in f.components]
        lines.append(f"- {f.text or f.code.display}: {f.value.display}" + (f" ({'; '.join(parts)})" if parts else ""))
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
    entry = _observation_entry(
        study, algorithm, findings, m.measure.key, device_id, status, m.measure.code.concept(), codes.LUNG_STRUCTURE
    )
    entry["resource"]["valueQuantity"] = {
        "value": _rounded(m),
        "unit": m.measure.unit.display,
        "system": codes.UCUM,
        "code": m.measure.unit.code,
    }
    if m.interpretation:
        entry["resource"]["interpretation"] = [m.interpretation.concept()]
    return entry


def _observation_entry(
    study: StudyContext,
    algorithm: Algorithm,
    findings: Findings,
    key: str,
    device_id: str,
    status: str,
    code: dict[str, Any],
    body_site: Code | None,
    method: str = "",
) -> dict[str, Any]:
    """What every Observation we write shares: identifier, AIAST label, subject, device, study, body site, method."""
    full_url = result_identifier(study.study_uid, findings.series_uid, algorithm, key)
    algorithm_text = f"{algorithm.title} ({algorithm.name} {algorithm.version})"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"security": [codes.AI_ASSERTED.coding()]},
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": full_url}],
        "status": status,
        "category": [codes.CATEGORY_IMAGING.concept()],
        "code": code,
        "subject": {"reference": study.subject},
        "device": {"reference": device_id},
        "derivedFrom": [{"reference": f"ImagingStudy/{study.imaging_study_id}"}],
        "partOf": [{"reference": f"ImagingStudy/{study.imaging_study_id}"}],
        "method": codes.MEASUREMENT_METHOD.concept(f"{method}; {algorithm_text}" if method else algorithm_text),
    }
    if body_site is not None:
        resource["bodySite"] = body_site.concept()
    if study.encounter:
        resource["encounter"] = {"reference": study.encounter}
    return {"fullUrl": full_url, "resource": resource}


def _radiomics_observation(
    study: StudyContext, algorithm: Algorithm, findings: Findings, r: RegionFeatures, device_id: str, status: str
) -> dict[str, Any]:
    code = codes.RADIOMICS_FEATURES.concept(f"Radiomics features of {r.region.display.lower()} (IBSI 1)")
    entry = _observation_entry(study, algorithm, findings, r.key, device_id, status, code, r.region, r.method)
    entry["resource"]["component"] = [_feature_component(f) for f in r.features]
    return entry


def _feature_component(f: FeatureValue) -> dict[str, Any]:
    component: dict[str, Any] = {"code": f.code.concept(f.text or None)}
    if f.aggregation is not None:
        component["extension"] = [{"url": codes.IBSI_AGGREGATION_EXTENSION, "valueCoding": f.aggregation.coding()}]
    if not math.isfinite(f.value):
        component["dataAbsentReason"] = codes.NOT_A_NUMBER.concept()
        return component
    quantity: dict[str, Any] = {"value": float(f"{f.value:.6g}")}  # six significant digits
    if f.unit is not None:
        quantity.update(unit=f.unit.display, system=codes.UCUM, code=f.unit.code)
    component["valueQuantity"] = quantity
    return component


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
    resource = _report_header(study, algorithm, report_id, status, issued)
    resource["result"] = [{"reference": ref} for ref in observation_ids]
    resource["conclusion"] = findings.conclusion
    if findings.conclusion_codes:
        resource["conclusionCode"] = [c.concept() for c in findings.conclusion_codes]
    resource["presentedForm"] = [
        {
            "contentType": "image/png",
            "title": findings.key_image_title,
            "data": base64.b64encode(findings.key_image_png).decode("ascii"),
        },
        _text_attachment(summary),
    ]
    return resource


def _report_header(
    study: StudyContext, algorithm: Algorithm, report_id: str, status: str, issued: str
) -> dict[str, Any]:
    """What every report of ours says, whatever its outcome: who, which study, which model, AI-asserted."""
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"security": [codes.AI_ASSERTED.coding()], "tag": [_version_tag(algorithm)]},
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": report_id}],
        "status": status,
        "category": [{"coding": [codes.CATEGORY_RADIOLOGY.coding(), codes.CATEGORY_RAD.coding()], "text": "Radiology"}],
        "code": codes.REPORT_CODE.concept(f"{algorithm.title} (AI)"),
        "subject": {"reference": study.subject},
        "issued": issued,
        "performer": [{"display": "imaging-cds"}],
        "imagingStudy": [{"reference": f"ImagingStudy/{study.imaging_study_id}"}],
    }
    if study.encounter:
        resource["encounter"] = {"reference": study.encounter}
    if study.based_on:
        resource["basedOn"] = [{"reference": ref} for ref in study.based_on]
    return resource


def _text_attachment(text: str) -> dict[str, Any]:
    return {
        "contentType": "text/plain; charset=utf-8",
        "title": "Summary",
        "data": base64.b64encode(text.encode()).decode("ascii"),
    }


def _provenance(
    study: StudyContext,
    provenance_id: str,
    report_id: str,
    device_id: str,
    recorded: str,
    previous: PreviousReport | None,
    reason: str = "",
) -> dict[str, Any]:
    """Who made the report (the Device) from what (the ImagingStudy); an amendment is recorded as an update."""
    target = f"DiagnosticReport/{previous.id}" if previous is not None else report_id
    operation = codes.OPERATION_UPDATE if previous is not None else codes.OPERATION_CREATE
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": IDENTIFIER_SYSTEM, "code": provenance_id}]},
        "target": [{"reference": target}],
        "recorded": recorded,
        "activity": operation.concept(),
        "agent": [{"type": codes.ASSEMBLER.concept(), "who": {"reference": device_id}}],
        "entity": [{"role": "source", "what": {"reference": f"ImagingStudy/{study.imaging_study_id}"}}],
    }
    if reason:
        provenance["reason"] = [{"text": reason}]
    return provenance


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


# --------------------------------------------------------------------------------------------------------------------
# Findings with components, amendments, and the report for a study that could not be analysed
# --------------------------------------------------------------------------------------------------------------------


def build_cancelled_report_bundle(
    study: StudyContext, algorithm: Algorithm, reason: str, issued: str
) -> dict[str, Any]:
    """The study could not be analysed: a DiagnosticReport with status ``cancelled`` whose conclusion says why, so
    the clinician knows the AI did not run, with the Device and a Provenance.

    ``reason`` is a NotAnalyzableError's reason: it names series, modalities and counts, never the patient. Every
    entry is a conditional create: a report already charted for the study and model is left as it is.
    """
    device_id = device_identifier(algorithm)
    report_id = report_identifier(study.study_uid, algorithm)
    conclusion = not_analysed_conclusion(algorithm, reason)
    report = _report_header(study, algorithm, report_id, "cancelled", issued)
    report["conclusion"] = conclusion
    report["presentedForm"] = [_text_attachment(f"{conclusion}\nNo AI result is available for this study.")]
    provenance_id = provenance_identifier(study.study_uid, "", algorithm, "not-analysed")
    provenance = _provenance(study, provenance_id, report_id, device_id, issued, None, reason="not analysable")
    entries = [
        _entry(device_id, Device, _device(algorithm, device_id)),
        _entry(report_id, DiagnosticReport, report),
        _entry(provenance_id, Provenance, provenance, condition=f"_tag={IDENTIFIER_SYSTEM}|{provenance_id}"),
    ]
    return _validated(Bundle, {"resourceType": "Bundle", "type": "transaction", "entry": entries})


REASON_MAX_CHARS = 600
"""The longest reason a cancelled report's conclusion quotes."""


def not_analysed_conclusion(algorithm: Algorithm, reason: str) -> str:
    """The cancelled report's conclusion, in words: the AI did not run, and why.

    A long reason keeps its start (what failed) and its end (what was found), joined by an ellipsis.
    """
    why = " ".join(reason.split()).rstrip(".")
    if len(why) > REASON_MAX_CHARS:
        head = REASON_MAX_CHARS // 3
        why = f"{why[:head].rstrip()} ... {why[-(REASON_MAX_CHARS - head - 5) :].lstrip()}"
    return (
        f"Not analysed: the AI ({algorithm.title}, {algorithm.name} {algorithm.version}) did not run on this "
        f"study: {why}. There is no AI result; read the images as usual."
    )


def _finding_observation(
    study: StudyContext, algorithm: Algorithm, findings: Findings, f: CodedFinding, device_id: str, status: str
) -> dict[str, Any]:
    code = {"coding": [c.coding() for c in (f.code, *f.also_coded)], "text": f.text or f.code.display}
    entry = _observation_entry(study, algorithm, findings, f.key, device_id, status, code, f.body_site)
    resource = entry["resource"]
    resource["valueCodeableConcept"] = f.value.concept()
    if f.interpretation:
        resource["interpretation"] = [f.interpretation.concept()]
    if f.components:
        resource["component"] = [_finding_component(c) for c in f.components]
    return entry


def _finding_component(c: Component) -> dict[str, Any]:
    if c.concept is not None:
        return {"code": c.code.concept(), "valueCodeableConcept": c.concept.concept()}
    assert c.quantity is not None and c.unit is not None  # Component.__post_init__ guarantees it
    return {
        "code": c.code.concept(),
        "valueQuantity": {
            "value": round(c.quantity, c.decimals),
            "unit": c.unit.display,
            "system": codes.UCUM,
            "code": c.unit.code,
        },
    }


def _component_text(c: Component) -> str:
    if c.concept is not None:
        return c.concept.display
    assert c.quantity is not None and c.unit is not None
    return f"{c.code.display} {round(c.quantity, c.decimals):g} {c.unit.display}"


def _version_tag(algorithm: Algorithm) -> dict[str, str]:
    return {
        "system": codes.RESULT_VERSION_SYSTEM,
        "code": result_version(algorithm),
        "display": f"{algorithm.title} {algorithm.version}",
    }


def _result_entries(
    observations: list[dict[str, Any]], previous: PreviousReport | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The results' transaction entries, and the references the report gives them.

    First write: conditional creates. Amendment: the results already in the chart are updated in place (``ifMatch``
    their version, status ``amended``); new ones are conditional updates on their identifier (created, or updated
    where an earlier amendment had withdrawn them); those the new version no longer gives are marked ``cancelled``.
    """
    if previous is None:
        return [_entry(o["fullUrl"], Observation, o["resource"]) for o in observations], [
            o["fullUrl"] for o in observations
        ]
    stored_results = dict(previous.results)
    entries, references = [], []
    for o in observations:
        stored = stored_results.pop(o["fullUrl"], None)
        if stored is None:
            request = {"method": "PUT", "url": f"Observation?identifier={IDENTIFIER_SYSTEM}|{o['fullUrl']}"}
            entries.append(
                {"fullUrl": o["fullUrl"], "resource": _validated(Observation, o["resource"]), "request": request}
            )
            references.append(o["fullUrl"])
        else:
            entries.append(_update_entry(Observation, {**o["resource"], "status": "amended"}, stored))
            references.append(f"Observation/{stored['id']}")
    for stored in stored_results.values():
        entries.append(_update_entry(Observation, {**_client_meta(stored), "status": "cancelled"}, stored))
    return entries, references


def _report_entry(report_id: str, report: dict[str, Any], previous: PreviousReport | None) -> dict[str, Any]:
    if previous is None:
        return _entry(report_id, DiagnosticReport, report)
    return _update_entry(DiagnosticReport, report, previous.resource)


def _update_entry(model: type, resource: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Update the stored resource in place, only if nobody changed it since it was read (``ifMatch``)."""
    request = {"method": "PUT", "url": f"{resource['resourceType']}/{stored['id']}"}
    version = (stored.get("meta") or {}).get("versionId")
    if version:
        request["ifMatch"] = f'W/"{version}"'
    return {"resource": _validated(model, {**resource, "id": stored["id"]}), "request": request}


def _client_meta(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored resource without the meta elements the server manages (versionId, lastUpdated, source)."""
    meta = {k: v for k, v in (stored.get("meta") or {}).items() if k in ("security", "tag", "profile")}
    return {**{k: v for k, v in stored.items() if k != "meta"}, **({"meta": meta} if meta else {})}
