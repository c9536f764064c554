"""The embedded default: one study from a local folder through the whole pipeline, no servers.

Same stages as the worker service, with the series read from disk instead of DICOMweb, inference by onnxruntime on
the same ONNX file, and the FHIR transaction Bundle and key image written to a folder instead of the EHR.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from imaging_cds.dicomweb.selection import select_series
from imaging_cds.dicomweb.series import SeriesSummary, orientation_name, split_multi_value
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.fhir.report import StudyContext, build_report_bundle
from imaging_cds.imaging.files import FileStream
from imaging_cds.imaging.instance import frame_geometries
from imaging_cds.inference.backend import InferenceBackend
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.worker.pipeline import SeriesAnalysis, analyze_series
from imaging_cds.worker.timing import StageTimer


@dataclass(frozen=True)
class LocalStudy:
    study_uid: str
    series: dict[str, list[Path]]  # series UID -> files
    summaries: list[SeriesSummary]


@dataclass(frozen=True)
class AnalyzeResult:
    analysis: SeriesAnalysis
    bundle_path: Path
    key_image_path: Path
    stage_seconds: dict[str, float]


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
    model: ModelManifest,
    backend: InferenceBackend,
    subject: str = "Patient/unknown",
    imaging_study_id: str | None = None,
    status: str = "preliminary",
) -> AnalyzeResult:
    timer = StageTimer()
    with timer.stage("scan"):
        study = scan_study(folder)
    chosen = select_series(study.study_uid, study.summaries, model.selection)
    analysis = analyze_series(
        study.study_uid,
        chosen.series_uid,
        FileStream(study.study_uid, study.series[chosen.series_uid], chosen.frames_per_instance),
        model,
        backend,
        timer,
    )
    context = StudyContext(
        imaging_study_id=imaging_study_id or f"local-{study.study_uid}"[:64],
        study_uid=study.study_uid,
        subject=subject,
    )
    with timer.stage("fhir-bundle"):
        issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        bundle = build_report_bundle(context, analysis.algorithm, analysis.findings, status, issued)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_path = out_dir / "bundle.json"
    key_image_path = out_dir / "key_image.png"
    bundle_path.write_text(json.dumps(bundle, indent=2) + "\n")
    key_image_path.write_bytes(analysis.findings.key_image_png)
    return AnalyzeResult(analysis, bundle_path, key_image_path, timer.seconds())


def result_summary(result: AnalyzeResult) -> dict[str, Any]:
    findings = result.analysis.findings
    return {
        "study_uid": result.analysis.volume.study_uid,
        "series_uid": findings.series_uid,
        "model": f"{result.analysis.algorithm.name} {result.analysis.algorithm.version}",
        "measurements": {
            m.measure.key: {
                "value": round(m.value, m.measure.decimals),
                "unit": m.measure.unit.code,  # UCUM
                "display_unit": m.measure.unit.display,
            }
            for m in findings.measurements
        },
        "conclusion": findings.conclusion,
        "bundle": str(result.bundle_path),
        "key_image": str(result.key_image_path),
        "stage_seconds": result.stage_seconds,
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
