"""Writing a study's results into the patient's chart: a first report, a replay, an amendment, or a cancelled report.

There is one report per (study, model), found by its deterministic identifier. Before writing, the report already
in the chart (with its results, ``_include``) is read back, and decides what the one transaction does:

- none yet: conditional creates (two workers racing still chart it once);
- one written by the same model version: nothing to write (a replayed notification or a re-delivered job);
- one written by another model version: the amendment (``build_report_bundle(previous=...)``), guarded by ``ifMatch``
  so that two amendments racing cannot both apply;
- one for another patient (the same DICOM study filed under two patients): refused, nothing written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imaging_cds.fhir.client import FhirClient, FhirError
from imaging_cds.fhir.report import (
    IDENTIFIER_SYSTEM,
    Algorithm,
    Findings,
    PreviousReport,
    StudyContext,
    build_cancelled_report_bundle,
    build_report_bundle,
    report_identifier,
    result_version,
)


@dataclass(frozen=True)
class Charted:
    reference: str  # 'DiagnosticReport/<id>'
    written: bool  # False: the report was already there (a replay), or was left as it was


def find_previous_report(fhir: FhirClient, study_uid: str, algorithm: Algorithm) -> PreviousReport | None:
    """The report of this study and model in the chart, with its results, in one search."""
    identifier = report_identifier(study_uid, algorithm)
    resources = fhir.search(
        "DiagnosticReport",
        {"identifier": f"{IDENTIFIER_SYSTEM}|{identifier}", "_include": "DiagnosticReport:result"},
    )
    try:
        return PreviousReport.from_search(resources, identifier)
    except ValueError as err:
        raise FhirError(f"study {study_uid}: {err}; a person must merge them before results can be written") from err


def chart_report(
    fhir: FhirClient,
    study: StudyContext,
    algorithm: Algorithm,
    findings: Findings,
    status: str,
    issued: str,
    before_write: Callable[[], None] | None = None,
) -> Charted:
    """Write the results (first report or amendment) unless this model version's are already charted."""
    previous = find_previous_report(fhir, study.study_uid, algorithm)
    if previous is not None:
        _refuse_another_patients(study, previous)
        if previous.model_version == result_version(algorithm) and previous.status != "cancelled":
            return Charted(f"DiagnosticReport/{previous.id}", written=False)
    bundle = build_report_bundle(study, algorithm, findings, status, issued, previous=previous)
    if before_write is not None:
        before_write()
    return Charted(report_reference(study.study_uid, fhir.transaction(bundle)), written=True)


def chart_not_analysable(
    fhir: FhirClient,
    study: StudyContext,
    algorithm: Algorithm,
    reason: str,
    issued: str,
    before_write: Callable[[], None] | None = None,
) -> Charted:
    """A cancelled report that says why the AI did not run, unless a report of this study and model is already
    charted (an earlier result stands; an earlier cancelled report already says so)."""
    previous = find_previous_report(fhir, study.study_uid, algorithm)
    if previous is not None:
        return Charted(f"DiagnosticReport/{previous.id}", written=False)
    bundle = build_cancelled_report_bundle(study, algorithm, reason, issued)
    if before_write is not None:
        before_write()
    return Charted(report_reference(study.study_uid, fhir.transaction(bundle)), written=True)


def report_reference(study_uid: str, response: dict[str, Any]) -> str:
    """'DiagnosticReport/<id>' from a transaction-response; locations may be relative or absolute, with _history."""
    for entry in response.get("entry", []):
        parts = str((entry.get("response") or {}).get("location", "")).split("/")
        for i, part in enumerate(parts[:-1]):
            if part == "DiagnosticReport" and parts[i + 1]:
                return f"DiagnosticReport/{parts[i + 1]}"
    raise FhirError(f"study {study_uid}: transaction response names no DiagnosticReport")


def _refuse_another_patients(study: StudyContext, previous: PreviousReport) -> None:
    """Results derived from a DICOM study already charted for another patient are not copied or moved silently."""
    if previous.subject != study.subject:
        raise FhirError(
            f"study {study.study_uid}: its results already exist as DiagnosticReport/{previous.id} for another "
            f"patient than ImagingStudy/{study.imaging_study_id}'s; nothing new written; check for a patient merge "
            "or a mis-filed study, then replay"
        )
