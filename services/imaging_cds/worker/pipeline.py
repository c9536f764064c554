"""The analysis pipeline, shared by the worker service and the embedded ``imaging-cds analyze``.

    instances (WADO-RS parts or files, as bytes) -> decode into the preallocated volume (HU, geometry only)
        -> slice models: infer each slab as soon as its slices are in
        -> order, canonical frame, quality checks (each model's own limits)
        -> volume models: resample, sliding windows, infer       } side by side
        -> post-process (model-specific findings)                 }
        -> one Findings per model -> FHIR Bundle per model

Decoding and inference overlap with retrieval: a slice model (no ``preprocessing`` in its manifest, such as
``lung-density``) works slice by slice, so each slab of slices goes to the inference backend as soon as it has
arrived, while the rest of the series still streams in. A slab is a view of the volume array (no copy); only pixel
arrays reach the backend. Each model's output is written into one preallocated array slot by slot and ordered with
the volume at the end. A volume model (``preprocessing``: resampling and sliding windows, such as
``lung-nodule-cad``) needs the whole ordered volume; its windows are inferred while the slice models' outputs are
post-processed. Several models reading one series share one retrieval and one decoded volume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from imaging_cds.analysis.findings import analyze_slices, analyze_volume
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.fhir.report import Algorithm, Findings
from imaging_cds.imaging.decode import Instance, SeriesDecoder, shared_pool
from imaging_cds.imaging.quality import QualityCheckFailed
from imaging_cds.imaging.volume import CtVolume, VolumeBuilder
from imaging_cds.inference.backend import InferenceBackend
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.inference.windows import infer_volume
from imaging_cds.worker.timing import StageTimer


@dataclass(frozen=True)
class SeriesAnalysis:
    volume: CtVolume
    algorithm: Algorithm
    findings: Findings


@dataclass(frozen=True)
class ModelRun:
    """One model's result on one series: its analysis, or why the series could not be analysed by it."""

    model: ModelManifest
    analysis: SeriesAnalysis | None = None
    not_analysable: NotAnalyzableError | None = None


@dataclass
class _Streamed:
    builder: VolumeBuilder
    outputs: dict[str, np.ndarray]  # slice model name -> output, in slot (arrival) order


def analyze_series(
    study_uid: str,
    series_uid: str,
    instances: Iterable[Instance],
    model: ModelManifest,
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> SeriesAnalysis:
    """One model on one series; raises NotAnalyzableError (QualityCheckFailed for a failed check) when it cannot."""
    (run,) = analyze_series_with(study_uid, series_uid, instances, [model], backend, timer, slab)
    if run.analysis is None:
        assert run.not_analysable is not None
        raise run.not_analysable
    return run.analysis


def analyze_series_with(
    study_uid: str,
    series_uid: str,
    instances: Iterable[Instance],
    models: Sequence[ModelManifest],
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> list[ModelRun]:
    """Several models on one series, retrieved and decoded once; one ModelRun per model, in ``models``' order.

    ``instances``: the series' instances as Part 10 bytes (or pydicom Datasets), in any order. When the iterable
    has an ``expected_images`` attribute (``PacsClient.iter_series``, ``read_files``), the volume is allocated once
    at that size. Transient errors (PACS, Triton) propagate: the whole study is tried again.
    """
    served = {m.name: backend.served_version(m) for m in models}
    slice_models = [m for m in models if m.preprocessing is None]
    try:
        streamed = _stream(study_uid, series_uid, instances, slice_models, backend, timer, slab)
    except NotAnalyzableError as err:  # an image that is not a usable CT: no model can read the series
        return [ModelRun(m, not_analysable=err) for m in models]
    try:
        verdicts = {m.name: streamed.builder.check(m.selection.quality) for m in models}
    except NotAnalyzableError as err:  # no image at all
        return [ModelRun(m, not_analysable=err) for m in models]
    passing = [m for m in models if verdicts[m.name].passed]
    failed = {m.name: QualityCheckFailed(study_uid, verdicts[m.name]) for m in models if m not in passing}
    if not passing:
        return [ModelRun(m, not_analysable=failed[m.name]) for m in models]
    passing_slice = [m for m in passing if m.preprocessing is None]
    with timer.stage("assemble"):
        volume, ordered = streamed.builder.finish_with(
            passing[0].selection.quality, [streamed.outputs[m.name] for m in passing_slice]
        )
    outputs = dict(zip((m.name for m in passing_slice), ordered, strict=True))

    def run_volume_model(model: ModelManifest) -> Findings:
        with timer.stage("infer"):
            result = infer_volume(volume, model, backend)
        with timer.stage("post-process"):
            return analyze_volume(model, volume, result)

    findings: dict[str, Findings | NotAnalyzableError] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="volume-model") as pool:
        volume_runs = {m.name: pool.submit(run_volume_model, m) for m in passing if m.preprocessing is not None}
        for m in passing_slice:
            with timer.stage("post-process"):
                findings[m.name] = _or_not_analysable(partial(analyze_slices, m, volume, outputs[m.name]))
        for name, future in volume_runs.items():
            findings[name] = _or_not_analysable(future.result)
    runs = []
    for m in models:
        if m.name in failed:
            runs.append(ModelRun(m, not_analysable=failed[m.name]))
            continue
        found = findings[m.name]
        if isinstance(found, NotAnalyzableError):
            runs.append(ModelRun(m, not_analysable=found))
            continue
        algorithm = Algorithm(name=m.name, title=m.title, version=m.version, served_version=served[m.name])
        runs.append(ModelRun(m, analysis=SeriesAnalysis(volume=volume, algorithm=algorithm, findings=found)))
    return runs


def _or_not_analysable(call: Callable[[], Findings]) -> Findings | NotAnalyzableError:
    try:
        return call()
    except NotAnalyzableError as err:
        return err


def infer_streamed(
    study_uid: str,
    series_uid: str,
    instances: Iterable[Instance],
    model: ModelManifest,
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> tuple[CtVolume, np.ndarray]:
    """One slice model: decode instances as they arrive, infer each full slab while the next arrives, then
    assemble and check. Returns the volume and the model output in the volume's (z, y, x) order. Raises
    QualityCheckFailed (a NotAnalyzableError) when the series fails a quality check."""
    streamed = _stream(study_uid, series_uid, instances, [model], backend, timer, slab)
    with timer.stage("assemble"):
        if model.name not in streamed.outputs:  # no image at all: finish() says so
            return streamed.builder.finish(model.selection.quality), np.empty((0,), dtype=np.uint8)
        volume, (ordered,) = streamed.builder.finish_with(model.selection.quality, [streamed.outputs[model.name]])
    return volume, ordered


def _stream(
    study_uid: str,
    series_uid: str,
    instances: Iterable[Instance],
    models: Sequence[ModelManifest],
    backend: InferenceBackend,
    timer: StageTimer,
    slab: int = 32,
) -> _Streamed:
    """Decode the instances into a VolumeBuilder as they arrive; send each full slab to every slice model."""
    slab = max(1, min([slab, *(m.max_batch for m in models)]))
    builder = VolumeBuilder(study_uid, series_uid, int(getattr(instances, "expected_images", 0) or 0))
    decoder = SeriesDecoder(builder, shared_pool())
    pending: list[tuple[ModelManifest, int, Future[np.ndarray]]] = []
    sent = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer") as pool:

        def send(upto: int) -> None:
            nonlocal sent
            while sent < upto:
                stop = min(sent + slab, upto)
                pixels = builder.slab(sent, stop)
                for model in models:
                    pending.append((model, sent, pool.submit(_timed_infer, backend, model, pixels, timer)))
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
            outputs: dict[str, np.ndarray] = {}
            for model, start, future in pending:
                result = future.result()
                output = outputs.get(model.name)
                if output is None:
                    output = outputs[model.name] = np.empty((n, *result.shape[1:]), dtype=result.dtype)
                if start + result.shape[0] > n or (start + result.shape[0] != n and result.shape[0] != slab):
                    raise RuntimeError(f"model {model.name} returned {result.shape[0]} slices for a slab at {start}")
                output[start : start + result.shape[0]] = result
    return _Streamed(builder=builder, outputs=outputs)


def _timed_infer(backend: InferenceBackend, model: ModelManifest, pixels: np.ndarray, timer: StageTimer) -> np.ndarray:
    with timer.stage("infer"):
        return backend.infer(model, pixels)
