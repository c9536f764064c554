"""What gets written to the chart: a first report, nothing on a replay, an amendment for a new model version, a
refusal for another patient's study, a cancelled report only where no report stands."""

from __future__ import annotations

from typing import Any

import pytest

from imaging_cds.fhir.charting import chart_not_analysable, chart_report
from imaging_cds.fhir.client import FhirClient, FhirError
from tests.unit.test_report import ALGORITHM, FINDINGS, ISSUED, NEWER, STUDY, bundle, stored


class RecordingEhr(FhirClient):
    """Answers the previous-report search with ``chart`` and records the transactions posted."""

    def __init__(self, chart: list[dict[str, Any]]) -> None:
        super().__init__("https://ehr.example/fhir")
        self.chart = chart
        self.searches: list[tuple[str, dict[str, str]]] = []
        self.posted: list[dict[str, Any]] = []

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        self.searches.append((resource_type, params))
        return self.chart

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        self.posted.append(bundle)
        return {"entry": [{"response": {"location": "DiagnosticReport/new/_history/1"}}]}


def charted_before() -> list[dict[str, Any]]:
    previous = stored(bundle())
    return [previous.resource, *previous.results.values()]


def test_the_first_report_is_written_with_one_search_and_one_transaction() -> None:
    ehr = RecordingEhr([])
    charted = chart_report(ehr, STUDY, ALGORITHM, FINDINGS, "preliminary", ISSUED)
    assert charted.written and charted.reference == "DiagnosticReport/new"
    ((rtype, params),) = ehr.searches
    assert rtype == "DiagnosticReport" and params["_include"] == "DiagnosticReport:result"
    assert params["identifier"].startswith("urn:ietf:rfc:3986|urn:uuid:")
    assert len(ehr.posted) == 1


def test_a_replay_of_the_same_model_version_writes_nothing() -> None:
    ehr = RecordingEhr(charted_before())
    charted = chart_report(ehr, STUDY, ALGORITHM, FINDINGS, "preliminary", ISSUED)
    assert not charted.written and charted.reference == "DiagnosticReport/106"
    assert ehr.posted == []


def test_a_new_model_version_posts_the_amendment_after_the_ownership_check() -> None:
    ehr = RecordingEhr(charted_before())
    checks = []
    charted = chart_report(ehr, STUDY, NEWER, FINDINGS, "preliminary", ISSUED, lambda: checks.append("checked"))
    assert charted.written and checks == ["checked"]
    (posted,) = ehr.posted
    methods = {e["request"]["method"] for e in posted["entry"] if e["resource"]["resourceType"] != "Provenance"}
    assert methods == {"POST", "PUT"}  # the new Device is created, the report and its results updated


def test_results_already_charted_for_another_patient_are_not_moved() -> None:
    ehr = RecordingEhr(charted_before())
    misfiled = type(STUDY)(imaging_study_id="99", study_uid=STUDY.study_uid, subject="Patient/other")
    with pytest.raises(FhirError, match="already exist as DiagnosticReport/106 for another patient"):
        chart_report(ehr, misfiled, NEWER, FINDINGS, "preliminary", ISSUED)
    assert ehr.posted == []


def test_a_cancelled_report_is_written_only_where_no_report_stands() -> None:
    empty = RecordingEhr([])
    assert chart_not_analysable(empty, STUDY, ALGORITHM, "no series fits", ISSUED).written
    assert empty.posted[0]["entry"][1]["resource"]["status"] == "cancelled"
    charted = RecordingEhr(charted_before())
    kept = chart_not_analysable(charted, STUDY, NEWER, "no series fits", ISSUED)
    assert not kept.written and kept.reference == "DiagnosticReport/106" and charted.posted == []
