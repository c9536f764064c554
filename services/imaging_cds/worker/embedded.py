"""The embedded default: one study from a local folder through the whole pipeline, no servers.

Same stages as the worker service, with the series read from disk instead of DICOMweb, inference by onnxruntime on
the same ONNX file, and the FHIR transaction Bundle and key image written to a folder instead of the EHR.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from imaging_cds.dicomweb.selection import plan_series
from imaging_cds.dicomweb.series import SeriesSummary, orientation_name, split_multi_value
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.fhir.report import StudyContext, build_report_bundle
from imaging_cds.imaging.files import FileStream
from imaging_cds.imaging.instance import frame_geometries
from imaging_cds.inference.backend import InferenceBackend
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.worker.pipeline import ModelRun, SeriesAnalysis, analyze_series_with
from imaging_cds.worker.timing import StageTimer


@dataclass(frozen=True)
class LocalStudy:
    study_uid: str
    series: dict[str, list[Path]]  # series UID -> files
    summaries: list[SeriesSummary]


@dataclass(frozen=True)
class AnalyzeResult:
    """The analyses (one per model that analysed the study), the models that could not and why, the one FHIR
    transaction Bundle holding every model's report, and each analysis' key image."""

    analyses: list[SeriesAnalysis]
    bundle_path: Path
    key_image_paths: list[Path]
    stage_seconds: dict[str, float]
    not_analysable: list[tuple[str, str]] = field(default_factory=list)  # (model, reason)

    @property
    def analysis(self) -> SeriesAnalysis:
        return self.analyses[0]

    @property
    def key_image_path(self) -> Path:
        return self.key_image_paths[0]


def scan_study(folder: Path) -> LocalStudy:
    """Index the DICOM files under folder (headers only). Exactly one study is expected."""
    series: dict[str, list[Path]] = defaultdict(list)
    headers: dict[str, pydicom.Dataset] = {}
    studies: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue  # not DICOM (ground_truth.json, a README...): skipped, as a PACS import would
        if "SeriesInstanceUID" not in ds or "StudyInstanceUID" not in ds:
            continue
        studies.add(str(ds.StudyInstanceUID))
        series[str(ds.SeriesInstanceUID)].append(path)
        headers.setdefault(str(ds.SeriesInstanceUID), ds)
    if not studies:
        raise NotAnalyzableError("(none)", f"no DICOM images with study and series UIDs under {folder}")
    if len(studies) > 1:
        raise NotAnalyzableError(
            sorted(studies)[0], f"{folder} holds {len(studies)} studies; analyze one study folder at a time"
        )
    summaries = [_summary(uid, ds, len(series[uid])) for uid, ds in headers.items()]
    return LocalStudy(study_uid=studies.pop(), series=dict(series), summaries=summaries)


def analyze_folder(
    folder: Path,
    out_dir: Path,
    models: ModelManifest | Sequence[ModelManifest],
    backend: InferenceBackend,
    subject: str = "Patient/unknown",
    imaging_study_id: str | None = None,
    status: str = "preliminary",
) -> AnalyzeResult:
    """Every model on the series it accepts (one read of a series several models share), one transaction Bundle
    with each model's report (``out_dir/bundle.json``), and the key images (``key_image.png`` for the first model,
    ``key_image-<model>.png`` for the others). Raises NotAnalyzableError when no model could analyse the study."""
    models = [models] if isinstance(models, ModelManifest) else list(models)
    timer = StageTimer()
    with timer.stage("scan"):
        study = scan_study(folder)
    plan = plan_series(study.study_uid, study.summaries, models)
    runs: list[ModelRun] = []
    for chosen, readers in plan.reads:
        files = FileStream(study.study_uid, study.series[chosen.series_uid], chosen.frames_per_instance)
        runs += analyze_series_with(study.study_uid, chosen.series_uid, files, readers, backend, timer)
    runs += [ModelRun(model, not_analysable=err) for model, err in plan.rejected]
    analyses = [r.analysis for r in runs if r.analysis is not None]
    refused = [(r.model.name, r.not_analysable.reason) for r in runs if r.not_analysable is not None]
    if not analyses:
        if len(runs) == 1 and runs[0].not_analysable is not None:
            raise runs[0].not_analysable
        reasons = [reason if len(refused) == 1 else f"{name}: {reason}" for name, reason in refused]
        raise NotAnalyzableError(study.study_uid, " | ".join(reasons))
    context = StudyContext(
        imaging_study_id=imaging_study_id or f"local-{study.study_uid}"[:64],
        study_uid=study.study_uid,
        subject=subject,
    )
    with timer.stage("fhir-bundle"):
        issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        bundles = [build_report_bundle(context, a.algorithm, a.findings, status, issued) for a in analyses]
        bundle = {**bundles[0], "entry": [e for b in bundles for e in b["entry"]]}
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_path = out_dir / "bundle.json"
    bundle_path.write_text(json.dumps(bundle, indent=2) + "\n")
    key_images = []
    for index, a in enumerate(analyses):
        path = out_dir / ("key_image.png" if index == 0 else f"key_image-{a.algorithm.name}.png")
        path.write_bytes(a.findings.key_image_png)
        key_images.append(path)
    return AnalyzeResult(analyses, bundle_path, key_images, timer.seconds(), refused)


def result_summary(result: AnalyzeResult) -> dict[str, Any]:
    """The result as JSON: the first model's findings at the top level (as before several models), every model's
    under ``models``."""
    per_model = [_model_summary(a, path) for a, path in zip(result.analyses, result.key_image_paths, strict=True)]
    return {
        "study_uid": result.analysis.volume.study_uid,
        **per_model[0],
        "models": per_model,
        "not_analysable": [{"model": name, "reason": reason} for name, reason in result.not_analysable],
        "bundle": str(result.bundle_path),
        "stage_seconds": result.stage_seconds,
    }


def _model_summary(analysis: SeriesAnalysis, key_image: Path) -> dict[str, Any]:
    findings = analysis.findings
    return {
        "series_uid": findings.series_uid,
        "model": f"{analysis.algorithm.name} {analysis.algorithm.version}",
        "measurements": {
            m.measure.key: {
                "value": round(m.value, m.measure.decimals),
                "unit": m.measure.unit.code,  # UCUM
                "display_unit": m.measure.unit.display,
            }
            for m in findings.measurements
        },
        "findings": [
            {"key": f.key, "finding": f.text or f.code.display, "value": f.value.display}
            for f in findings.coded_findings
        ],
        "conclusion": findings.conclusion,
        "key_image": str(key_image),
    }


def _summary(series_uid: str, ds: pydicom.Dataset, n_files: int) -> SeriesSummary:
    """What series rules look at, from one file's header (the series' first)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    orientation = ds.get("ImageOrientationPatient")
    if orientation is None:  # enhanced images keep it in the functional groups
        geometry = frame_geometries(ds, 1)
        orientation = geometry[0].orientation if geometry else None
    thickness = ds.get("SliceThickness")
    return SeriesSummary(
        series_uid=series_uid,
        modality=str(ds.get("Modality", "")),
        body_part=str(ds.get("BodyPartExamined", "")),
        description=str(ds.get("SeriesDescription", "")),
        n_instances=n_files,
        image_type=split_multi_value(ds.get("ImageType")),
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
        orientation=orientation_name([float(v) for v in orientation] if orientation else None),
        frames_per_instance=frames,
    )
