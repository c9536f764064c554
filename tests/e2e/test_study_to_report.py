"""End to end on the real services: an ImagingStudy in the EHR becomes a DiagnosticReport in the patient's chart.

Redis, Orthanc (DICOMweb), Triton and the FHIR server come from scripts/sandbox; the gateway and a worker run as
`imaging-cds gateway` / `imaging-cds worker` processes, exactly as an operator starts them.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from pydicom.data import get_testdata_file

from imaging_cds.config import Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.fhir.client import FhirClient
from imaging_cds.inference.manifest import load_manifest, load_manifests
from imaging_cds.inference.triton import TritonBackend
from imaging_cds.jobs.queue import queue_from_settings
from imaging_cds.sample.synthetic_ct import SampleStudy, write_sample_study
from imaging_cds.v1 import jobs_pb2, jobs_pb2_grpc
from imaging_cds.worker.service import Worker
from tests.conftest import service_env
from tests.fhir_validation import assert_valid_r4
from tests.services import create_study_in_ehr, free_port, imaging_cds_process, store_folder, wait_for

pytestmark = pytest.mark.services

PHI_MARKERS = ("Synthetic^Patient", "SYN-0", "Synthetic Hospital", "Synthetic^Referrer", "19600101")
SECRET = "e2e-webhook-secret"


@dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    fhir: FhirClient
    pacs: PacsClient
    grpc: jobs_pb2_grpc.JobServiceStub
    channel: grpc.Channel
    webhook: str
    logs: list[Path]
    state_dir: Path


@pytest.fixture(scope="module")
def stack(sandbox: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    http_port, grpc_port = free_port(), free_port()
    webhook = f"http://127.0.0.1:{http_port}/fhir/notify"
    env = service_env(
        sandbox,
        IMAGING_CDS_HTTP_PORT=str(http_port),
        IMAGING_CDS_GRPC_PORT=str(grpc_port),
        IMAGING_CDS_PUBLIC_WEBHOOK_URL=webhook,
        IMAGING_CDS_WEBHOOK_SECRET=SECRET,
        IMAGING_CDS_STABILITY_WINDOW_S="2",
        IMAGING_CDS_METRICS_PORT=str(free_port()),  # the worker's; the gateway's are GET /metrics
    )
    settings = Settings.from_env(env)
    with (
        imaging_cds_process("gateway", env, logs / "gateway.log"),
        imaging_cds_process("worker", env, logs / "worker.log"),
        FhirClient(settings.fhir_url) as fhir,
        PacsClient(settings.dicomweb_url, settings.dicomweb_username, settings.dicomweb_password) as pacs,
        grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        wait_for("gateway /readyz", lambda: httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200)
        health = health_pb2_grpc.HealthStub(channel)
        wait_for("gRPC health SERVING", lambda: _serving(health))
        wait_for("our Subscription active on the FHIR server", lambda: _subscribed(fhir, webhook))
        yield Stack(
            env,
            settings,
            fhir,
            pacs,
            jobs_pb2_grpc.JobServiceStub(channel),
            channel,
            webhook,
            [logs / "gateway.log", logs / "worker.log"],
            Path(sandbox["_STATE_DIR"]),
        )


def _subscribed(fhir: FhirClient, webhook: str) -> bool:
    return any(s["channel"]["endpoint"] == webhook and s["status"] == "active" for s in fhir.search("Subscription", {}))


def submit_or_existing(stub: jobs_pb2_grpc.JobServiceStub, imaging_study_id: str) -> str:
    """Submit the study; when a notification already queued it, the existing job (ALREADY_EXISTS + job-id)."""
    ref = jobs_pb2.StudyReference(imaging_study_id=imaging_study_id)
    try:
        return str(stub.Submit(jobs_pb2.SubmitRequest(study=ref), timeout=10).job_id)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
        return dict(err.trailing_metadata())["job-id"]  # type: ignore[attr-defined]


def _serving(health: health_pb2_grpc.HealthStub) -> bool:
    try:
        reply = health.Check(health_pb2.HealthCheckRequest(service="imaging_cds.v1.JobService"), timeout=2)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def chest_ct(tmp_path_factory: pytest.TempPathFactory) -> SampleStudy:
    return write_sample_study(tmp_path_factory.mktemp("chest"), seed=3)


@pytest.fixture(scope="module")
def charted(stack: Stack, chest_ct: SampleStudy) -> dict[str, Any]:
    """Store the chest CT in the PACS, announce it in the EHR, wait for the report in the chart."""
    store_folder(stack.pacs, chest_ct.study_dir)
    study = create_study_in_ehr(
        stack.fhir, chest_ct.study_instance_uid, stack.settings.dicomweb_url, chest_ct.n_instances, with_order=True
    )
    subject = study["subject"]["reference"]
    models = load_manifests(stack.settings.model_repository)
    reports = wait_for(
        "a DiagnosticReport for the patient from each model",
        lambda: (
            (found := stack.fhir.search("DiagnosticReport", {"subject": subject}))
            and len(found) == len(models)
            and found
        ),
        timeout_s=300,
        every_s=2,
    )
    return {
        "study": study,
        "subject": subject,
        "report": report_of(reports, "lung-density"),
        "nodule_report": report_of(reports, "lung-nodule-cad"),
    }


def report_of(reports: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """The report that ``model`` wrote (its meta.tag names model@version)."""
    (report,) = [r for r in reports if r["meta"]["tag"][0]["code"].split("@")[0] == model]
    return report


def chart_of(stack: Stack, subject: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """What an EHR shows for the patient, in one search: the reports and, included, their results by id."""
    found = stack.fhir.search("DiagnosticReport", {"patient": subject, "_include": "DiagnosticReport:result"})
    reports = [r for r in found if r["resourceType"] == "DiagnosticReport"]
    results = {r["id"]: r for r in found if r["resourceType"] == "Observation"}
    return reports, results


def test_chest_ct_becomes_a_report_in_the_patients_chart(
    stack: Stack, chest_ct: SampleStudy, charted: dict[str, Any]
) -> None:
    reports, results = chart_of(stack, charted["subject"])
    report = report_of(reports, "lung-density")
    assert report["id"] == charted["report"]["id"]
    assert report["status"] == "preliminary"
    assert report["code"]["coding"][0]["code"] == "18748-4"
    assert report["meta"]["security"][0]["code"] == "AIAST"
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{charted['study']['id']}"
    assert report["basedOn"] == charted["study"]["basedOn"]  # the order the study was done for
    observations = {}
    for ref in report["result"]:
        obs = results[ref["reference"].split("/")[-1]]
        observations[obs["code"]["coding"][0]["code"]] = obs
        assert obs["derivedFrom"] == [{"reference": f"ImagingStudy/{charted['study']['id']}"}]
        assert obs["bodySite"]["coding"][0]["code"] == "39607008" and obs["device"]["reference"].startswith("Device/")
    truth = chest_ct.ground_truth
    volume = observations["lung-volume"]["valueQuantity"]
    assert volume["code"] == "mL"
    assert abs(volume["value"] - truth["lung_volume_ml"]) <= 0.03 * truth["lung_volume_ml"]
    laa = observations["laa-950"]["valueQuantity"]
    assert laa["code"] == "%"
    assert abs(laa["value"] - truth["laa950_percent"]) <= 1.0
    emphysema_expected = truth["laa950_percent"] >= 5.0
    assert observations["laa-950"]["interpretation"][0]["coding"][0]["code"] == ("H" if emphysema_expected else "N")
    mld = observations["mean-lung-density"]["valueQuantity"]
    assert mld["code"] == "[hnsf'U]" and abs(mld["value"] - truth["mean_lung_density_hu"]) <= 10
    assert abs(observations["p15-lung-density"]["valueQuantity"]["value"] - truth["p15_hu"]) <= 10
    # The finding, with its size and location as components.
    emphysema = observations["87433001"]
    presence = emphysema["valueCodeableConcept"]["coding"][0]["display"]
    assert presence == ("Present" if emphysema_expected else "Absent")
    size = {c["code"]["coding"][0]["code"]: c for c in emphysema["component"]}
    truth_laa_ml = truth["laa950_percent"] / 100 * truth["lung_volume_ml"]
    assert abs(size["laa-950-volume"]["valueQuantity"]["value"] - truth_laa_ml) <= 0.1 * truth_laa_ml
    assert {"363698007", "272741003"} <= set(size)  # finding site (lung zone) and laterality
    assert f"{laa['value']:.1f} % of lung volume" in report["conclusion"]
    assert ("conclusionCode" in report) is emphysema_expected
    # The key image: a PNG of one CT slice, labelled, small enough for any EHR.
    (image,) = [f for f in report["presentedForm"] if f["contentType"] == "image/png"]
    png = base64.b64decode(image["data"])
    decoded = Image.open(io.BytesIO(png))
    decoded.load()
    assert decoded.format == "PNG" and decoded.size == (512, 512) and len(png) < 300_000
    assert image["title"].startswith("Key image: axial slice")
    device = stack.fhir.read(observations["lung-volume"]["device"]["reference"])
    assert device is not None and device["modelNumber"] == "lung-density"
    assert {v["type"]["text"] for v in device["version"]} == {"algorithm", "triton-model-version"}
    # The manifest's radiomics section: IBSI statistics and intensity histogram of the lung, one component each.
    radiomics = observations["ibsi-radiomics"]
    components = {c["code"]["coding"][0]["code"]: c for c in radiomics["component"]}
    assert len(components) == 41 and radiomics["method"]["text"].startswith("IBSI 1 configuration C")
    assert components["Q4LE"]["valueQuantity"]["code"] == "[hnsf'U]"


def test_nodule_cad_findings_are_charted_where_the_nodules_are(
    stack: Stack, chest_ct: SampleStudy, charted: dict[str, Any]
) -> None:
    """The second model's report: each nodule an Observation (RadElement, RadLex and SNOMED CT codings) with its
    diameter, probability, centre (LPS, mm) and side; the study's known nodules are among them."""
    reports, results = chart_of(stack, charted["subject"])
    report = report_of(reports, "lung-nodule-cad")
    assert report["status"] == "preliminary" and report["code"]["coding"][0]["code"] == "18748-4"
    nodules = [results[r["reference"].split("/")[-1]] for r in report["result"]]
    assert nodules and all(n["valueCodeableConcept"]["coding"][0]["display"] == "Present" for n in nodules)
    found = []
    for n in nodules:
        assert [c["code"] for c in n["code"]["coding"]] == ["RDES195", "RID50149", "786838002"]
        parts = {c["code"]["coding"][0]["code"]: c for c in n["component"]}
        assert parts["81827009"]["valueQuantity"]["code"] == "mm"
        assert 0.0 <= parts["detection-probability"]["valueQuantity"]["value"] <= 1.0
        centre = [parts[f"centre-lps-{a}"]["valueQuantity"]["value"] for a in "xyz"]
        side = parts["272741003"]["valueCodeableConcept"]["coding"][0]["display"]
        found.append((centre, parts["81827009"]["valueQuantity"]["value"], side))
    for truth in chest_ct.ground_truth["nodules"]:
        if truth["diameter_mm"] < 6.0:
            continue  # the model card states its sensitivity by size; 6 mm and larger must be found here
        near = [
            (diameter, side)
            for centre, diameter, side in found
            if sum((a - b) ** 2 for a, b in zip(centre, truth["centre_lps_mm"], strict=True)) ** 0.5
            <= max(truth["diameter_mm"] / 2.0, 5.0)
        ]
        assert near, f"no finding at the {truth['diameter_mm']:.1f} mm nodule at {truth['centre_lps_mm']}"
        assert near[0][1].lower() == truth["side"]
    assert "pulmonary nodule" in report["conclusion"]
    (image,) = [f for f in report["presentedForm"] if f["contentType"] == "image/png"]
    assert "most probable nodule" in image["title"]


def test_the_job_is_visible_over_grpc_and_a_duplicate_submit_names_it(stack: Stack, charted: dict[str, Any]) -> None:
    ref = jobs_pb2.StudyReference(imaging_study_id=charted["study"]["id"])
    with pytest.raises(grpc.RpcError) as duplicate:
        stack.grpc.Submit(jobs_pb2.SubmitRequest(study=ref), timeout=10)
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    job_id = dict(duplicate.value.trailing_metadata())["job-id"]  # type: ignore[attr-defined]
    final = list(stack.grpc.WatchJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=60))[-1]
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert final.report_reference == f"DiagnosticReport/{charted['report']['id']}"
    assert list(final.report_references) == [
        f"DiagnosticReport/{charted['report']['id']}",
        f"DiagnosticReport/{charted['nodule_report']['id']}",
    ]
    assert "lung-density: report" in final.outcome and "lung-nodule-cad: report" in final.outcome
    assert {"retrieve", "infer", "post-process", "fhir-write"} <= set(final.stage_seconds)


def test_replayed_notification_creates_no_second_report(stack: Stack, charted: dict[str, Any]) -> None:
    study = stack.fhir.read(f"ImagingStudy/{charted['study']['id']}")
    reply = httpx.put(
        f"{stack.webhook}/ImagingStudy/{charted['study']['id']}",
        content=json.dumps(study),
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/fhir+json"},
    )
    assert reply.status_code == 202 and reply.json()["duplicate"] is True
    # At-least-once delivery means a worker may process the same study again: the write must be a no-op.
    model = load_manifest(stack.settings.model_repository / "lung-density")
    queue = queue_from_settings(stack.settings)
    backend = TritonBackend(stack.settings.triton_grpc_url)
    try:
        Worker(stack.settings, queue, stack.fhir, stack.pacs, backend, model).process_study(charted["study"]["id"])
    finally:
        backend.close()
    reports = stack.fhir.search("DiagnosticReport", {"subject": charted["subject"]})
    report = report_of(reports, "lung-density")
    assert report["meta"]["versionId"] == "1" and len(reports) == 2
    observations = stack.fhir.search("Observation", {"subject": charted["subject"]})
    assert len(report["result"]) == 6  # measurements, the emphysema finding, radiomics
    assert len(observations) == sum(len(r["result"]) for r in reports)


def test_a_new_model_version_amends_the_report_and_keeps_its_history(stack: Stack, charted: dict[str, Any]) -> None:
    model = load_manifest(stack.settings.model_repository / "lung-density")
    newer = dataclasses.replace(model, version=f"{model.version}-amended")
    queue = queue_from_settings(stack.settings)
    backend = TritonBackend(stack.settings.triton_grpc_url)
    try:
        worker = Worker(stack.settings, queue, stack.fhir, stack.pacs, backend, newer)
        outcome = worker.process_study(charted["study"]["id"])
        again = worker.process_study(charted["study"]["id"])  # a replay of the new version changes nothing
    finally:
        backend.close()
    first = charted["report"]
    assert outcome.report_reference == again.report_reference == f"DiagnosticReport/{first['id']}"
    reports, included = chart_of(stack, charted["subject"])
    report = report_of(reports, "lung-density")
    results = {k: v for k, v in included.items() if f"Observation/{k}" in {r["reference"] for r in report["result"]}}
    assert report["id"] == first["id"] and report["identifier"] == first["identifier"]
    assert report["status"] == "amended" and report["meta"]["tag"][0]["code"] == f"lung-density@{newer.version}"
    assert sorted(r["reference"] for r in report["result"]) == sorted(r["reference"] for r in first["result"])
    history = stack.fhir.history(f"DiagnosticReport/{first['id']}")
    assert [h["status"] for h in history] == ["amended", "preliminary"]
    for obs in results.values():
        assert obs["status"] == "amended" and newer.version in obs["method"]["text"]
        assert len(stack.fhir.history(f"Observation/{obs['id']}")) == 2
    assert len(stack.fhir.search("Observation", {"subject": charted["subject"]})) == len(included)
    device = stack.fhir.read(next(iter(results.values()))["device"]["reference"])
    assert device is not None and newer.version in {v["value"] for v in device["version"]}
    provenances = stack.fhir.search("Provenance", {"target": f"DiagnosticReport/{first['id']}"})
    assert sorted(p["activity"]["coding"][0]["code"] for p in provenances) == ["CREATE", "UPDATE"]


def test_the_same_dicom_study_under_another_patient_fails_visibly_and_writes_nothing(
    stack: Stack, chest_ct: SampleStudy, charted: dict[str, Any]
) -> None:
    misfiled = create_study_in_ehr(
        stack.fhir, chest_ct.study_instance_uid, stack.settings.dicomweb_url, chest_ct.n_instances
    )
    job_id = submit_or_existing(stack.grpc, misfiled["id"])
    final = list(stack.grpc.WatchJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=120))[-1]
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert "for another patient" in final.outcome and charted["report"]["id"] in final.outcome
    assert stack.fhir.search("DiagnosticReport", {"subject": misfiled["subject"]["reference"]}) == []
    assert len(stack.fhir.search("DiagnosticReport", {"subject": charted["subject"]})) == 2  # one per model


def test_malformed_or_unauthenticated_notifications_enqueue_nothing(stack: Stack) -> None:
    queue = queue_from_settings(stack.settings)
    before = queue.stream_length()
    auth = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/fhir+json"}
    assert httpx.put(f"{stack.webhook}/ImagingStudy/1", content=b"{oops", headers=auth).status_code == 400
    assert httpx.post(stack.webhook, content=b"[1, 2]", headers=auth).status_code == 400
    assert httpx.put(f"{stack.webhook}/ImagingStudy/1", content=b"", headers={}).status_code == 401
    huge = b"{" + b" " * 2_000_000 + b"}"
    assert httpx.put(f"{stack.webhook}/ImagingStudy/1", content=huge, headers=auth).status_code == 413
    assert queue.stream_length() == before
    assert httpx.get(stack.webhook.replace("/fhir/notify", "/healthz")).status_code == 200


def test_a_study_that_is_not_a_chest_ct_gets_a_cancelled_report_that_says_why(stack: Stack, tmp_path: Path) -> None:
    head = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    mr = Path(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
    import pydicom

    folder = tmp_path / "not-chest"
    folder.mkdir()
    study_uid = "1.2.826.0.1.3680043.8.498.99887766"
    for i, source in enumerate((head, mr)):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = f"{study_uid}.{i + 1}"
        ds.SOPInstanceUID = f"{study_uid}.{i + 1}.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{i}.dcm")
    store_folder(stack.pacs, folder)
    study = create_study_in_ehr(stack.fhir, study_uid, stack.settings.dicomweb_url, 2)
    job_id = submit_or_existing(stack.grpc, study["id"])
    final = list(stack.grpc.WatchJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=120))[-1]
    assert final.state == jobs_pb2.JOB_STATE_NOT_ANALYZABLE
    assert study_uid in final.outcome and "no series fits" in final.outcome and "MR" in final.outcome
    reports = stack.fhir.search("DiagnosticReport", {"subject": study["subject"]["reference"]})
    assert len(reports) == len(load_manifests(stack.settings.model_repository))  # each model says why it did not run
    for report in reports:
        assert f"cancelled report DiagnosticReport/{report['id']} written" in final.outcome
        assert report["status"] == "cancelled" and "result" not in report
        assert report["conclusion"].startswith("Not analysed: the AI (")
        assert "no series fits" in report["conclusion"] and "MR" in report["conclusion"]
        assert not [marker for marker in PHI_MARKERS if marker in json.dumps(report)]


def test_grpc_rejects_bad_requests_with_proper_codes(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stack.grpc.Submit(jobs_pb2.SubmitRequest(study=jobs_pb2.StudyReference(imaging_study_id="../x")), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stack.grpc.GetJob(jobs_pb2.GetJobRequest(job_id="no-such-job"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_count_the_work_and_name_no_patient(
    stack: Stack, chest_ct: SampleStudy, charted: dict[str, Any]
) -> None:
    gateway = httpx.get(f"http://127.0.0.1:{stack.settings.http_port}/metrics").text
    worker = httpx.get(f"http://127.0.0.1:{stack.settings.metrics_port}/metrics").text

    def value(text: str, sample: str) -> float:
        (line,) = [line for line in text.splitlines() if line.startswith(sample + " ")]
        return float(line.split()[-1])

    assert value(gateway, 'imaging_cds_notifications_total{outcome="queued"}') >= 1
    assert value(gateway, "imaging_cds_queue_up") == 1.0
    assert value(gateway, 'imaging_cds_queue_jobs{part="succeeded"}') >= 1
    assert value(worker, 'imaging_cds_jobs_finished_total{state="succeeded"}') >= 1
    for model in ("lung-density", "lung-nodule-cad"):
        assert value(worker, f'imaging_cds_reports_total{{kind="results",model="{model}"}}') >= 1
    assert value(worker, 'imaging_cds_stage_seconds_count{stage="post-process"}') >= 1
    study = charted["study"]
    identifiers = [*PHI_MARKERS, chest_ct.study_instance_uid, chest_ct.series_instance_uid, study["id"]]
    identifiers.append(study["subject"]["reference"].split("/")[-1])
    for text in (gateway, worker):
        for marker in identifiers:
            assert marker not in text


def test_no_patient_identity_in_any_log(stack: Stack, charted: dict[str, Any]) -> None:
    # Our own processes, and Triton's log: what reached inference. (The PACS and the EHR hold the identity.)
    logs = [*stack.logs, *sorted(p for p in stack.state_dir.rglob("*.log") if "triton" in p.name)]
    assert any(p.stat().st_size > 0 for p in stack.logs)
    for path in logs:
        text = path.read_text(errors="replace")
        for marker in PHI_MARKERS:
            assert marker not in text, f"{marker!r} found in {path.name}"


def test_every_resource_written_to_the_ehr_is_valid_r4(stack: Stack, charted: dict[str, Any]) -> None:
    """Everything the services wrote to the FHIR server in this session (this module's tests and the e2e modules
    before it), every stored version of every report included: R4 JSON schema and Medplum's validator."""
    written: list[dict[str, Any]] = []
    for rtype in ("DiagnosticReport", "Observation", "Device", "Provenance", "Subscription"):
        written += list(stack.fhir.search_all(rtype, {"_count": "200"}))
    reports = [r for r in written if r["resourceType"] == "DiagnosticReport"]
    for report in reports:
        written += stack.fhir.history(f"DiagnosticReport/{report['id']}")[1:]
    kinds = {r["resourceType"] for r in written}
    assert {"DiagnosticReport", "Observation", "Device", "Provenance", "Subscription"} <= kinds
    assert {r["status"] for r in reports} >= {"amended", "cancelled"}
    assert_valid_r4(written)
