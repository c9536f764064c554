"""The analysis pipeline, shared by the worker service and the embedded ``imaging-cds analyze``.

    instances -> decode (HU, geometry only) -> infer in slabs -> assemble + geometry checks
              -> post-process (model-specific findings) -> FHIR Bundle

Decoding and inference overlap with retrieval: the lung-density model works slice by slice, so each slab of
slices goes to the inference backend as soon as it has arrived, while the rest of the series still streams in.
Only pixel arrays reach the backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pydicom

from imaging_cds.analysis.findings import ANALYZERS
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.fhir.report import Algorithm, Findings
from imaging_cds.imaging.slices import CtSlice, decode_ct_slice
from imaging_cds.imaging.volume import CtVolume, assemble_volume
from imaging_cds.inference.backend import InferenceBackend
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.worker.timing import StageTimer


@dataclass(frozen=True)
class SeriesAnalysis:
    volume: CtVolume
    algorithm: Algorithm
    findings: Findings


def analyze_series(
    study_uid: str,
    series_uid: str,
    instances: Iterable[pydicom.Dataset],
    model: ModelManifest,
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> SeriesAnalysis:
    served = backend.served_version(model)
    volume, output = infer_streamed(study_uid, series_uid, instances, model, backend, timer, slab)
    with timer.stage("post-process"):
        findings = ANALYZERS[model.name](volume, output)
    algorithm = Algorithm(name=model.name, title=model.title, version=model.version, served_version=served)
    return SeriesAnalysis(volume=volume, algorithm=algorithm, findings=findings)


def infer_streamed(
    study_uid: str,
    series_uid: str,
    instances: Iterable[pydicom.Dataset],
    model: ModelManifest,
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> tuple[CtVolume, np.ndarray]:
    """Decode instances as they arrive, infer each full slab while the next arrives, then assemble.

    Returns the volume and the model output stacked in the volume's (z, y, x) slice order.
    """
    slab = max(1, min(slab, model.max_batch))
    slices: list[CtSlice] = []
    pending: list[tuple[list[str], Future[np.ndarray]]] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer") as pool:

        def submit(batch: list[CtSlice]) -> None:
            pixels = np.stack([s.hu for s in batch])
            pending.append(([s.sop_uid for s in batch], pool.submit(_timed_infer, backend, model, pixels, timer)))

        batch: list[CtSlice] = []
        for ds in timer.iterate("retrieve", instances):
            with timer.stage("decode"):
                ct = decode_ct_slice(ds, study_uid)
            if slices and ct.hu.shape != slices[0].hu.shape:
                raise NotAnalyzableError(
                    study_uid, f"series {series_uid}: image sizes differ ({slices[0].hu.shape} and {ct.hu.shape})"
                )
            slices.append(ct)
            batch.append(ct)
            if len(batch) == slab:
                submit(batch)
                batch = []
        if batch:
            submit(batch)
        outputs: dict[str, np.ndarray] = {}
        for sop_uids, future in pending:
            result = future.result()
            if result.shape[0] != len(sop_uids):
                raise RuntimeError(f"model {model.name} returned {result.shape[0]} slices for {len(sop_uids)}")
            outputs.update(zip(sop_uids, result, strict=True))
    with timer.stage("assemble"):
        volume = assemble_volume(study_uid, series_uid, slices, model.selection.max_slice_spacing_mm)
        output = np.stack([outputs[uid] for uid in volume.sop_uids])
    return volume, output


def _timed_infer(backend: InferenceBackend, model: ModelManifest, pixels: np.ndarray, timer: StageTimer) -> np.ndarray:
    with timer.stage("infer"):
        return backend.infer(model, pixels)
