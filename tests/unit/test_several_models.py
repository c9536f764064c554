"""Several models on one study: one read of the series, each model its own quality verdict and findings, and the
generic classification findings a hospital's own model gets from its manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.analysis.classification import classification_findings
from imaging_cds.errors import ModelConfigurationError
from imaging_cds.fhir import codes
from imaging_cds.imaging.files import FileStream
from imaging_cds.imaging.quality import QualityCheckFailed
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import ModelManifest, load_manifest
from imaging_cds.sample.synthetic_ct import SampleStudy, write_sample_study
from imaging_cds.worker.embedded import analyze_folder, result_summary
from imaging_cds.worker.pipeline import analyze_series_with
from imaging_cds.worker.timing import StageTimer
from tests.model_factory import TOY_MODEL, repository_with_toy_model


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return repository_with_toy_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def coarse_study(tmp_path_factory: pytest.TempPathFactory) -> SampleStudy:
    """64 slices over the whole chest (4.3 mm apart): within the toy model's limits, not lung-density's."""
    return write_sample_study(tmp_path_factory.mktemp("coarse"), seed=1, n_slices=64)


class CountingBackend(LocalOnnxBackend):
    def __init__(self) -> None:
        super().__init__()
        self.slices: dict[str, int] = {}

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = 0) -> np.ndarray:
        self.slices[model.name] = self.slices.get(model.name, 0) + len(batch)
        return super().infer(model, batch, priority)


def test_two_models_read_the_series_once_and_each_gets_its_own_verdict(
    repository: Path, coarse_study: SampleStudy
) -> None:
    lung, toy = load_manifest(repository / "lung-density"), load_manifest(repository / TOY_MODEL)
    files = sorted(coarse_study.study_dir.rglob("*.dcm"))
    backend = CountingBackend()
    timer = StageTimer()
    lung_run, toy_run = analyze_series_with(
        coarse_study.study_instance_uid,
        coarse_study.series_instance_uid,
        FileStream(coarse_study.study_instance_uid, files),
        [lung, toy],
        backend,
        timer,
    )
    assert backend.slices == {"lung-density": 64, TOY_MODEL: 64}  # every slice to each slice model, decoded once
    assert lung_run.model is lung and lung_run.analysis is None
    assert isinstance(lung_run.not_analysable, QualityCheckFailed)
    assert {"too_few_slices", "slice_spacing"} <= set(lung_run.not_analysable.verdict.failed_checks())
    assert toy_run.not_analysable is None and toy_run.analysis is not None
    (finding,) = toy_run.analysis.findings.coded_findings
    assert finding.code.code == "toy-finding" and finding.key == TOY_MODEL
    assert toy_run.analysis.algorithm.version == "0.1.0"


def test_analyze_charts_the_models_that_could_and_names_the_others(
    repository: Path, coarse_study: SampleStudy, tmp_path: Path
) -> None:
    models = [load_manifest(repository / "lung-density"), load_manifest(repository / TOY_MODEL)]
    result = analyze_folder(coarse_study.study_dir, tmp_path / "out", models, LocalOnnxBackend())
    summary = result_summary(result)
    assert [m["model"] for m in summary["models"]] == [f"{TOY_MODEL} 0.1.0"]
    ((name, reason),) = result.not_analysable
    assert name == "lung-density" and "no series fits" in reason and "images 64, expected at least 100" in reason
    assert result.key_image_path == tmp_path / "out" / "key_image.png" and result.key_image_path.exists()


def toy_volume(n: int) -> CtVolume:
    hu = np.full((n, 16, 16), -800, dtype=np.int16)
    return CtVolume("1.2.3", "1.2.3.4", hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(str(i) for i in range(n)))


def test_classification_findings_follow_the_manifest(repository: Path) -> None:
    model = load_manifest(repository / TOY_MODEL)
    scores = np.array([[0.1], [0.7], [0.2], [0.3]], dtype=np.float32)
    found = classification_findings(model, toy_volume(4), scores)
    (finding,) = found.coded_findings
    assert finding.value == codes.PRESENT and finding.interpretation == codes.INTERPRETATION_ABNORMAL
    assert finding.components[0].quantity == pytest.approx(0.7) and finding.body_site is None
    assert "probability 0.70" in found.conclusion and found.conclusion_codes == (finding.code,)
    assert "3 of 4 from the top" in found.key_image_title  # the slice scored highest
    assert model.classification is not None
    mean = replace(model, classification=replace(model.classification, aggregate="mean"))
    (absent,) = classification_findings(mean, toy_volume(4), scores).coded_findings
    assert absent.value == codes.ABSENT and absent.components[0].quantity == pytest.approx(0.325)


@pytest.mark.parametrize(
    "output",
    [np.full((3, 1), 0.5, np.float32), np.full((4, 2), 0.5, np.float32), np.array([0.1, 1.5, 0.2, 0.3]),
     np.array([0.1, np.nan, 0.2, 0.3])],
    ids=["wrong-length", "two-columns", "not-a-probability", "nan"],
)  # fmt: skip
def test_an_output_that_is_not_one_probability_per_slice_is_refused(repository: Path, output: np.ndarray) -> None:
    with pytest.raises(ModelConfigurationError, match=TOY_MODEL):
        classification_findings(load_manifest(repository / TOY_MODEL), toy_volume(4), output)


def test_an_image_no_model_can_read_ends_every_model_as_not_analysable(repository: Path, tmp_path: Path) -> None:
    """Broken DICOM in the series: each model gets the reason (the worker charts a cancelled report for each), no
    exception escapes to lose the study."""
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 100)
    models = [load_manifest(repository / "lung-density"), load_manifest(repository / TOY_MODEL)]
    runs = analyze_series_with("1.2.3", "1.2.3.4", FileStream("1.2.3", [broken]), models, LocalOnnxBackend(),
                               StageTimer())  # fmt: skip
    assert [r.model for r in runs] == models
    for run in runs:
        assert run.analysis is None and run.not_analysable is not None
        assert "1.2.3" in str(run.not_analysable) and "expected CT" in run.not_analysable.reason
