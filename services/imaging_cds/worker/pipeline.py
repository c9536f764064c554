"""The analysis pipeline, shared by the worker service and the embedded ``imaging-cds analyze``.

    instances (WADO-RS parts or files, as bytes) -> decode into the preallocated volume (HU, geometry only)
        -> infer each slab as soon as its slices are in -> order, canonical frame, quality checks
        -> post-process (model-specific findings) -> FHIR Bundle

Decoding and inference overlap with retrieval: the lung-density model works slice by slice, so each slab of
slices goes to the inference backend as soon as it has arrived, while the rest of the series still streams in.
A slab is a view of the volume array (no copy); only pixel arrays reach the backend. The model's output is
written into one preallocated array slot by slot and ordered with the volume at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imaging_cds.analysis.findings import ANALYZERS
from imaging_cds.fhir.report import Algorithm, Findings
from imaging_cds.imaging.decode import Instance, SeriesDecoder, shared_pool
from imaging_cds.imaging.volume import CtVolume, VolumeBuilder
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
    instances: Iterable[Instance],
    model: ModelManifest,
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> SeriesAnalysis:
    """``instances``: the series' instances as Part 10 bytes (or pydicom Datasets), in any order. When the
    iterable has an ``expected_images`` attribute (``PacsClient.iter_series``, ``read_files``), the volume is
    allocated once at that size."""
    served = backend.served_version(model)
    volume, output = infer_streamed(study_uid, series_uid, instances, model, backend, timer, slab)
    with timer.stage("post-process"):
        findings = ANALYZERS[model.name](volume, output, radiomics=model.radiomics)
    algorithm = Algorithm(name=model.name, title=model.title, version=model.version, served_version=served)
    return SeriesAnalysis(volume=volume, algorithm=algorithm, findings=findings)


def infer_streamed(
    study_uid: str,
    series_uid: str,
    instances: Iterable[Instance],
    model: ModelManifest,
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> tuple[CtVolume, np.ndarray]:
    """Decode instances as they arrive, infer each full slab while the next arrives, then assemble and check.

    Returns the volume and the model output in the volume's (z, y, x) order. Raises QualityCheckFailed (a
    NotAnalyzableError) when the series fails a quality check.
    """
    slab = max(1, min(slab, model.max_batch))
    builder = VolumeBuilder(study_uid, series_uid, int(getattr(instances, "expected_images", 0) or 0))
    decoder = SeriesDecoder(builder, shared_pool())
    pending: list[tuple[int, Future[np.ndarray]]] = []
    sent = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer") as pool:

        def send(upto: int) -> None:
            nonlocal sent
            while sent < upto:
                stop = min(sent + slab, upto)
                pixels = builder.slab(sent, stop)
                pending.append((sent, pool.submit(_timed_infer, backend, model, pixels, timer)))
                sent = stop

        try:
            for instance in timer.iterate("retrieve", instances):
                with timer.stage("decode"):
                    decoder.add(instance)
                ready = builder.ready
                if ready - sent >= slab:
                    send(ready - (ready - sent) % slab)
            with timer.stage("decode"):
                decoder.close()
            send(builder.ready)
        except BaseException:
            decoder.abandon()
            raise
        with timer.stage("infer-wait"):  # the slabs still in flight after the last image arrived
            n = builder.reserved
            output: np.ndarray | None = None
            for start, future in pending:
                result = future.result()
                if output is None:
                    output = np.empty((n, *result.shape[1:]), dtype=result.dtype)
                if start + result.shape[0] > n or (start + result.shape[0] != n and result.shape[0] != slab):
                    raise RuntimeError(f"model {model.name} returned {result.shape[0]} slices for a slab at {start}")
                output[start : start + result.shape[0]] = result
    with timer.stage("assemble"):
        if output is None:  # no image at all: finish() says so
            return builder.finish(model.selection.quality), np.empty((0,), dtype=np.uint8)
        volume, (ordered,) = builder.finish_with(model.selection.quality, [output])
    return volume, ordered


def _timed_infer(backend: InferenceBackend, model: ModelManifest, pixels: np.ndarray, timer: StageTimer) -> np.ndarray:
    with timer.stage("infer"):
        return backend.infer(model, pixels)
