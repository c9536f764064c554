"""Privacy by construction: nothing that identifies the patient reaches inference, the Bundle, or the output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc._utils import _get_inference_request

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY
from imaging_cds.imaging.slices import decode_ct_slice
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.sample.synthetic_ct import SampleStudy, write_sample_study

PHI_MARKERS = ("Synthetic^Patient", "SYN-0", "Synthetic Hospital", "Synthetic^Referrer", "19600101")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleStudy:
    return write_sample_study(tmp_path_factory.mktemp("privacy"), seed=4, n_slices=200)


def test_the_sample_really_carries_a_patient_identity(sample: SampleStudy) -> None:
    ds = pydicom.dcmread(next(sample.study_dir.rglob("*.dcm")))
    header = str(ds)
    assert all(marker in header for marker in PHI_MARKERS), "the privacy tests would prove nothing"


def test_an_inference_request_carries_pixels_and_model_names_only(sample: SampleStudy) -> None:
    model = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")
    files = sorted(sample.study_dir.rglob("*.dcm"))[:8]
    slices = [decode_ct_slice(pydicom.dcmread(p), sample.study_instance_uid) for p in files]
    batch = np.stack([s.hu for s in slices])
    request_input = grpcclient.InferInput(model.input.name, list(batch.shape), model.input.datatype)
    request_input.set_data_from_numpy(batch)
    request = _get_inference_request(
        model_name=model.triton_model,
        inputs=[request_input],
        model_version=model.triton_version,
        request_id="",
        outputs=[grpcclient.InferRequestedOutput(model.output.name)],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    assert request.raw_input_contents[0] == batch.tobytes()  # exactly the pixels, nothing appended
    del request.raw_input_contents[:]
    metadata = str(request)
    for marker in (*PHI_MARKERS, sample.study_instance_uid, sample.series_instance_uid):
        assert marker not in metadata
    assert set(metadata.split()) <= {
        "model_name:",
        '"lung-density"',
        "model_version:",
        '"1"',
        "inputs",
        "outputs",
        "{",
        "}",
        "name:",
        '"ct_hu"',
        "datatype:",
        '"INT16"',
        "shape:",
        *(str(d) for d in batch.shape),
        '"lung_candidate"',
        "id:",
        '""',
    }


def test_analyze_output_and_bundle_carry_no_patient_identity(sample: SampleStudy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "imaging_cds.cli", "analyze", str(sample.study_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    texts = {"stdout": run.stdout, "stderr": run.stderr, "bundle.json": (out / "bundle.json").read_text()}
    for name, text in texts.items():
        for marker in PHI_MARKERS:
            assert marker not in text, f"{marker!r} in {name}"
