"""A hospital's own models, added as folders with no code change, are listed, checked and served end to end: a
classifier and a segmentation model, each charted from its manifest alone."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.config import Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.errors import TransientError
from imaging_cds.fhir.client import FhirClient
from imaging_cds.inference.backend import STAT_PRIORITY
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.inference.triton import TritonBackend
from imaging_cds.jobs.queue import queue_from_settings
from imaging_cds.models import configured_models
from imaging_cds.sample.synthetic_ct import make_chest_ct, write_sample_study
from imaging_cds.worker.service import Worker
from tests.conftest import SANDBOX, service_env
from tests.fhir_validation import assert_valid_r4
from tests.model_factory import (
    SEGMENTER_AIR_HU,
    SEGMENTER_BONE_HU,
    TOY_MODEL,
    TOY_SEGMENTER,
    repository_with_toy_model,
)
from tests.services import create_study_in_ehr, store_folder

pytestmark = pytest.mark.services

CLI = [sys.executable, "-m", "imaging_cds.cli"]
SANDBOX_UP = [sys.executable, str(SANDBOX), "up"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return repository_with_toy_model(tmp_path_factory.mktemp("byom"))


@pytest.fixture(scope="module")
def triton_url(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Triton alone, serving the copied repository with the added folder (``scripts/sandbox --only triton``)."""
    state = tmp_path_factory.mktemp("byom-sandbox")
    up = subprocess.run(
        [*SANDBOX_UP, "--state-dir", str(state), "--json", "--only", "triton", "--model-repository", str(repository)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield json.loads(up.stdout.strip().splitlines()[-1])["IMAGING_CDS_TRITON_GRPC_URL"]
    finally:
        subprocess.run([sys.executable, str(SANDBOX), "down", "--state-dir", str(state)], timeout=120)


def test_model_added_as_a_folder_is_listed_checked_and_served_with_identical_results(
    repository: Path, triton_url: str
) -> None:
    listed = subprocess.run(
        [*CLI, "models", "list", "--json", "--model-repository", str(repository)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert TOY_MODEL in {row["name"] for row in json.loads(listed.stdout)}
    checked = subprocess.run(
        [*CLI, "models", "check", "--model-repository", str(repository)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{TOY_MODEL}: ok" in checked.stdout and f"{TOY_SEGMENTER}: ok" in checked.stdout

    model = load_manifest(repository / TOY_MODEL)
    hu, _labels, _spacing = make_chest_ct(seed=1, n_slices=40)  # five requests of max_batch_size slices
    triton = TritonBackend(triton_url)
    local = LocalOnnxBackend()
    try:
        assert triton.served_version(model) == "2"  # the version the manifest pins, not Triton's latest
        remote = triton.infer(model, hu)
        urgent = triton.infer(model, hu, priority=STAT_PRIORITY)
        here = local.infer(model, hu)
    finally:
        triton.close()
    assert remote.shape == here.shape == (len(hu), 1)
    assert remote.dtype == here.dtype == np.float32
    np.testing.assert_array_equal(remote, here)
    np.testing.assert_array_equal(urgent, here)
    assert float(here.min()) < float(here.max())  # slices differ, so the comparison is about real outputs


def test_a_version_triton_does_not_serve_is_refused_not_silently_replaced(repository: Path, triton_url: str) -> None:
    unpinned = dataclasses.replace(load_manifest(repository / TOY_MODEL), triton_version="1")  # Triton serves 2 only
    triton = TritonBackend(triton_url)
    try:
        with pytest.raises(TransientError, match=f"{TOY_MODEL} v1"):
            triton.served_version(unpinned)
        with pytest.raises(TransientError, match=f"{TOY_MODEL} v1"):
            triton.infer(unpinned, np.zeros((2, 8, 8), dtype=np.int16))
    finally:
        triton.close()


def test_the_added_model_charts_a_study_end_to_end_with_no_code_change(
    repository: Path, triton_url: str, sandbox: dict[str, str], tmp_path: Path
) -> None:
    """The worker, configured only by settings (the copied repository, the added model's name), takes a study from
    the PACS, runs the new model on Triton and charts its finding in the EHR: from its manifest alone."""
    settings = _worker_settings(sandbox, triton_url, repository, TOY_MODEL)
    models = configured_models(settings, None)  # what `imaging-cds worker` runs with these settings
    assert [m.name for m in models] == [TOY_MODEL]
    sample = write_sample_study(tmp_path, seed=4, n_slices=64)  # 4.3 mm apart: within the toy manifest's 5 mm
    model = models[0]
    expected = float(LocalOnnxBackend().infer(model, make_chest_ct(seed=4, n_slices=64)[0]).max())
    triton = TritonBackend(triton_url)
    with FhirClient(settings.fhir_url) as fhir, PacsClient(settings.dicomweb_url, settings.dicomweb_username,
                                                            settings.dicomweb_password) as pacs:  # fmt: skip
        store_folder(pacs, sample.study_dir)
        study = create_study_in_ehr(fhir, sample.study_instance_uid, settings.dicomweb_url, sample.n_instances)
        try:
            outcome = Worker(settings, queue_from_settings(settings), fhir, pacs, triton, models).process_study(
                study["id"]
            )
        finally:
            triton.close()
        (report,) = fhir.search("DiagnosticReport", {"subject": study["subject"]["reference"]})
        (finding,) = fhir.search("Observation", {"subject": study["subject"]["reference"]})
    assert outcome.report_references == (f"DiagnosticReport/{report['id']}",)
    assert report["status"] == "preliminary" and report["meta"]["tag"][0]["code"] == f"{TOY_MODEL}@0.1.0"
    assert finding["code"]["coding"][0]["code"] == "toy-finding" and "bodySite" not in finding
    (probability,) = finding["component"]
    assert probability["valueQuantity"]["value"] == round(expected, 2)
    present = expected >= 0.5
    assert finding["valueCodeableConcept"]["coding"][0]["display"] == ("Present" if present else "Absent")
    assert f"probability {expected:.2f}" in report["conclusion"]
    assert_valid_r4([report, finding])


def test_an_added_segmentation_model_is_served_and_charts_its_structures_with_no_code_change(
    repository: Path, triton_url: str, sandbox: dict[str, str], tmp_path: Path
) -> None:
    """The toy segmenter's label map, from Triton (identical to onnxruntime's), becomes one Observation per label in
    the EHR: its anatomy as code and bodySite, Present with volume, mean and standard deviation as components, each
    equal to what numpy computes from the same phantom."""
    settings = _worker_settings(sandbox, triton_url, repository, TOY_SEGMENTER)
    (model,) = configured_models(settings, None)
    hu, _labels, spacing = make_chest_ct(seed=5, n_slices=64)
    triton = TritonBackend(triton_url)
    try:
        np.testing.assert_array_equal(triton.infer(model, hu), LocalOnnxBackend().infer(model, hu))
        sample = write_sample_study(tmp_path, seed=5, n_slices=64)
        with FhirClient(settings.fhir_url) as fhir, PacsClient(settings.dicomweb_url, settings.dicomweb_username,
                                                                settings.dicomweb_password) as pacs:  # fmt: skip
            store_folder(pacs, sample.study_dir)
            study = create_study_in_ehr(fhir, sample.study_instance_uid, settings.dicomweb_url, sample.n_instances)
            Worker(settings, queue_from_settings(settings), fhir, pacs, triton, [model]).process_study(study["id"])
            (report,) = fhir.search("DiagnosticReport", {"subject": study["subject"]["reference"]})
            observations = fhir.search("Observation", {"subject": study["subject"]["reference"]})
    finally:
        triton.close()
    by_site = {o["bodySite"]["coding"][0]["code"]: o for o in observations}
    assert set(by_site) == {"272673000", "air-like"}
    voxel_ml = float(np.prod(spacing)) / 1000.0
    bone = hu[hu > SEGMENTER_BONE_HU].astype(np.float64)
    expected = {
        "118565006": (round(bone.size * voxel_ml, 1), "mL"),
        "373098007": (round(float(bone.mean())), "[hnsf'U]"),
        "386136009": (round(float(bone.std())), "[hnsf'U]"),
    }
    charted = {
        c["code"]["coding"][0]["code"]: (c["valueQuantity"]["value"], c["valueQuantity"]["code"])
        for c in by_site["272673000"]["component"]
    }
    assert charted == expected
    ((air_code, air_volume),) = [
        (c["code"]["coding"][0]["code"], c["valueQuantity"]["value"]) for c in by_site["air-like"]["component"]
    ]
    assert (air_code, air_volume) == ("118565006", round(int((hu < SEGMENTER_AIR_HU).sum()) * voxel_ml, 1))
    assert all(o["valueCodeableConcept"]["coding"][0]["display"] == "Present" for o in observations)
    assert f"Bone structure {bone.size * voxel_ml:.1f} mL" in report["conclusion"]
    assert_valid_r4([report, *observations])


def _worker_settings(sandbox: dict[str, str], triton_url: str, repository: Path, model: str) -> Settings:
    """A worker's settings for the sandbox, with Triton serving ``repository`` and ``model`` as its only model."""
    env = service_env(
        sandbox,
        IMAGING_CDS_TRITON_GRPC_URL=triton_url,
        IMAGING_CDS_MODEL_REPOSITORY=str(repository),
        IMAGING_CDS_MODELS=model,
    )
    return Settings.from_env(env)
