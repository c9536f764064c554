"""`imaging-cds models list|check`: a model folder whose manifest, config.pbtxt and ONNX file disagree is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.cli import main
from imaging_cds.config import DEFAULT_MODEL_REPOSITORY
from imaging_cds.inference.check import check_model, check_repository
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import load_manifest
from tests.model_factory import TOY_MAX_BATCH, TOY_MODEL, repository_with_toy_model, write_toy_model


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    return repository_with_toy_model(tmp_path)


def test_committed_repository_passes_the_check() -> None:
    checks = check_repository(DEFAULT_MODEL_REPOSITORY)
    assert checks and all(c.ok for c in checks), [c.problems for c in checks]


def test_a_model_added_as_a_folder_is_listed_and_checked(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--model-repository", str(repository), "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed[TOY_MODEL]["task"] == "classification"
    assert listed[TOY_MODEL]["triton_version"] == "2"
    assert "lung-density" in listed

    assert main(["models", "check", "--model-repository", str(repository)]) == 0
    out = capsys.readouterr().out
    assert f"{TOY_MODEL}: ok" in out and "lung-density: ok" in out


def test_added_model_runs_locally_in_chunks_of_max_batch_size(repository: Path) -> None:
    model = load_manifest(repository / TOY_MODEL)
    batch = np.full((TOY_MAX_BATCH * 2 + 3, 16, 16), -500, dtype=np.int16)
    output = LocalOnnxBackend().infer(model, batch)
    assert output.shape == (len(batch), 1) and output.dtype == np.float32
    np.testing.assert_allclose(output, 1 / (1 + np.exp(0.0)), rtol=1e-6)  # sigmoid(-500/1000 + 0.5)


def _problems(folder: Path) -> str:
    check = check_model(folder)
    assert not check.ok
    return "\n".join(check.problems)


def test_max_batch_size_that_differs_from_the_manifest_is_named(tmp_path: Path) -> None:
    folder = write_toy_model(tmp_path)
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 16"))
    assert "max_batch_size 16 but the manifest's triton.max_batch_size is 8" in _problems(folder)


def test_datatype_and_name_mismatches_are_named(tmp_path: Path) -> None:
    folder = write_toy_model(tmp_path, output="score", output_type="TYPE_FP16")
    problems = _problems(folder)
    assert "no output 'probability'" in problems

    folder = write_toy_model(tmp_path, name="typed", output_type="TYPE_FP16")
    assert "output 'probability' is TYPE_FP16, the manifest says FP32 (TYPE_FP32)" in _problems(folder)

    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("name: ct_hu, datatype: INT16", "name: ct_hu, datatype: FP32"))
    problems = _problems(folder)
    assert "input 'ct_hu' is tensor(int16), the manifest says FP32" in problems


def test_onnx_file_that_does_not_load_or_is_missing_is_named(tmp_path: Path) -> None:
    folder = write_toy_model(tmp_path)
    (folder / "2" / "model.onnx").write_bytes(b"not an onnx file")
    assert "onnxruntime cannot load it" in _problems(folder)
    (folder / "2" / "model.onnx").unlink()
    assert "model.onnx: missing" in _problems(folder)


def test_pinned_version_that_triton_would_not_serve_is_named(tmp_path: Path) -> None:
    folder = write_toy_model(tmp_path)
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("versions: [ 2 ]", "versions: [ 3 ]"))
    assert "does not load version 2" in _problems(folder)


def test_malformed_manifest_fails_the_check_with_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_toy_model(tmp_path)
    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("task: classification\n", ""))
    assert main(["models", "check", "--model-repository", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{TOY_MODEL}: PROBLEMS" in out and "'task'" in out


def test_a_model_the_worker_could_not_chart_is_named_and_the_worker_refuses_to_start(repository: Path) -> None:
    """Without a classification section (what its output means) nothing in imaging-cds knows how to chart the toy
    model: `models check` says so, and a worker configured with it refuses to start instead of failing every job."""
    from imaging_cds.config import Settings
    from imaging_cds.inference.manifest import ManifestError
    from imaging_cds.models import configured_models

    manifest = repository / TOY_MODEL / "manifest.yaml"
    text = manifest.read_text()
    manifest.write_text(text[: text.index("classification:")])
    (problem,) = check_model(repository / TOY_MODEL).problems
    assert str(manifest) in problem and "no post-processing" in problem
    settings = Settings.from_env({"IMAGING_CDS_MODEL_REPOSITORY": str(repository), "IMAGING_CDS_MODELS": TOY_MODEL})
    with pytest.raises(ManifestError, match="a classification or a segmentation section"):
        configured_models(settings, None)
    assert [m.name for m in configured_models(settings, ["lung-density"])] == ["lung-density"]


def test_a_classification_section_that_makes_no_sense_is_refused(repository: Path) -> None:
    manifest = repository / TOY_MODEL / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("threshold: 0.5", "threshold: 5"))
    (problem,) = check_model(repository / TOY_MODEL).problems
    assert "classification.threshold" in problem


def test_analyze_with_a_model_nothing_charts_says_so_and_exits_1(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = repository / TOY_MODEL / "manifest.yaml"
    text = manifest.read_text()
    manifest.write_text(text[: text.index("classification:")])
    code = main(["analyze", str(tmp_path), "--out", str(tmp_path / "out"), "--model-repository", str(repository)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and TOY_MODEL in err and "no post-processing" in err
