"""The transaction Bundle and key image that `imaging-cds analyze` writes (the same builders the worker posts with):
valid R4 for the JSON schema and Medplum, and a key image a viewer can show."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from imaging_cds.analysis.lung_density import KEY_IMAGE_MAX_BYTES
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.sample.synthetic_ct import write_sample_study
from imaging_cds.worker.embedded import analyze_folder
from tests.fhir_validation import assert_valid_r4, bundle_and_entries

REPO = Path(__file__).resolve().parents[2]


def test_the_analyze_bundle_is_valid_r4_and_its_key_image_a_small_png(tmp_path: Path) -> None:
    sample = write_sample_study(tmp_path / "study", seed=6, n_slices=100)
    model = load_manifest(REPO / "triton_repo" / "lung-density")

    result = analyze_folder(sample.study_dir, tmp_path / "out", model, LocalOnnxBackend(), subject="Patient/p1")

    bundle = json.loads(result.bundle_path.read_text())
    assert_valid_r4(bundle_and_entries(bundle))
    (report,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    finding = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "87433001"
    )
    assert {c["code"]["coding"][0]["code"] for c in finding["component"]} >= {"laa-950-volume", "363698007"}
    png = result.key_image_path.read_bytes()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (512, 512) and len(png) < KEY_IMAGE_MAX_BYTES
    assert report["presentedForm"][0]["contentType"] == "image/png"


def test_every_models_report_in_one_bundle_is_valid_r4(tmp_path: Path) -> None:
    """`analyze` with every committed model: one transaction holding each model's Device, results, report and
    Provenance, no two entries with one fullUrl, each key image beside it."""
    from imaging_cds.inference.manifest import load_manifests

    sample = write_sample_study(tmp_path / "study", seed=3, n_slices=160)
    models = load_manifests(REPO / "triton_repo")
    result = analyze_folder(sample.study_dir, tmp_path / "out", models, LocalOnnxBackend(), subject="Patient/p1")

    assert [a.algorithm.name for a in result.analyses] == [m.name for m in models] and not result.not_analysable
    bundle = json.loads(result.bundle_path.read_text())
    assert_valid_r4(bundle_and_entries(bundle))
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls))
    reports = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert len(reports) == len(models)
    nodules = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "RDES195"
    ]
    assert nodules and {n["valueCodeableConcept"]["coding"][0]["display"] for n in nodules} <= {"Present", "Absent"}
    assert [p.name for p in result.key_image_paths] == ["key_image.png", "key_image-lung-nodule-cad.png"]
    assert all(p.exists() for p in result.key_image_paths)
