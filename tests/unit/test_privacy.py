"""Privacy by construction: nothing that identifies the patient reaches inference, the Bundle, or the output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from tritonclient.grpc import service_pb2

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY
from imaging_cds.imaging.slices import decode_ct_slice
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.inference.triton_wire import InputTensor, OutputTensor, encode_request, infer_request
from imaging_cds.sample.synthetic_ct import SampleStudy, write_sample_study


def request_tokens(shape: tuple[int, ...], model: str = "lung-density", output: str = "lung_candidate") -> set[str]:
    """Every word an inference request may hold once its pixels are removed: names, type, shape."""
    names = {"model_name:", f'"{model}"', "model_version:", '"1"', "inputs", "outputs", "{", "}", "name:"}
    tensors = {'"ct_hu"', "datatype:", '"INT16"', "shape:", f'"{output}"'}
    return names | tensors | {str(d) for d in shape}


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
    given = InputTensor(model.input.name, model.input.datatype, batch.shape, data=batch)
    wanted = OutputTensor(model.output.name)
    wire = encode_request(infer_request(model.triton_model, model.triton_version, [given], [wanted]))
    request = service_pb2.ModelInferRequest.FromString(wire)  # what TritonBackend sends, as Triton reads it
    assert request.raw_input_contents[0] == batch.tobytes()  # exactly the pixels, nothing appended
    del request.raw_input_contents[:]
    metadata = str(request)
    for marker in (*PHI_MARKERS, sample.study_instance_uid, sample.series_instance_uid):
        assert marker not in metadata
    assert set(metadata.split()) <= request_tokens(batch.shape)


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


class _RecordingTriton:
    """A gRPC server speaking Triton's KServe v2 protocol that keeps the raw bytes of every request it receives."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc

        self.received: list[bytes] = []
        self._pb = service_pb2

        def model_infer(raw: bytes, context: object) -> bytes:
            self.received.append(raw)
            request = service_pb2.ModelInferRequest.FromString(raw)
            shape = list(request.inputs[0].shape)
            response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1")
            if request.model_name == "lung-nodule-cad":  # (windows, 2 channels, z, y, x)
                name, shape = "nodule_map", [shape[0], 2, *shape[1:]]
            else:
                name = "lung_candidate"
            output = response.outputs.add(name=name, datatype="UINT8", shape=shape)
            del output  # the values travel in raw_output_contents
            response.raw_output_contents.append(bytes(int(np.prod(shape))))
            return bytes(response.SerializeToString())

        def model_ready(raw: bytes, context: object) -> bytes:
            self.received.append(raw)
            return bytes(service_pb2.ModelReadyResponse(ready=True).SerializeToString())

        handlers = {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer),  # no deserializer: raw bytes in
            "ModelReady": grpc.unary_unary_rpc_method_handler(model_ready),
        }
        limit = 64 * 1024 * 1024  # as Triton's own server: slabs of 512x512 slices are megabytes
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


def test_the_bytes_sent_to_triton_are_pixels_and_tensor_names_only(sample: SampleStudy) -> None:
    """The real pipeline (files -> decode -> slabs -> TritonBackend) against a server that records the wire bytes."""
    from dataclasses import replace

    from imaging_cds.imaging.files import FileStream
    from imaging_cds.inference.triton import TritonBackend
    from imaging_cds.worker.pipeline import infer_streamed
    from imaging_cds.worker.timing import StageTimer

    model = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")
    model = replace(model, selection=replace(model.selection, quality=replace(model.selection.quality, min_slices=1)))
    files = sorted(sample.study_dir.rglob("*.dcm"))[:40]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    triton = _RecordingTriton()
    backend = TritonBackend(f"127.0.0.1:{triton.port}")
    try:
        assert backend.served_version(model) == "1"
        volume, output = infer_streamed(
            sample.study_instance_uid,
            sample.series_instance_uid,
            FileStream(sample.study_instance_uid, files),
            model,
            backend,
            StageTimer(),
            slab=16,
        )
    finally:
        backend.close()
        triton.stop()
    assert output.shape == volume.hu.shape
    infer_requests = [r for r in triton.received if b"ct_hu" in r]
    assert len(infer_requests) == 3  # 16 + 16 + 8 slices
    identity: list[str] = list(PHI_MARKERS)
    for ds in headers:
        identity += [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
        identity += [str(ds.get(k, "")) for k in ("AccessionNumber", "StudyDate", "StudyTime") if ds.get(k)]
    sent_slices = set()
    for raw in triton.received:
        for marker in identity:  # as text, and as UTF-16 as some encoders write it
            assert marker.encode() not in raw and marker.encode("utf-16-le") not in raw

        request = service_pb2.ModelInferRequest.FromString(raw) if b"ct_hu" in raw else None
        if request is None:
            continue
        pixels = request.raw_input_contents[0]
        assert request.inputs[0].datatype == "INT16"
        n = int(request.inputs[0].shape[0])
        assert len(pixels) == n * 512 * 512 * 2  # nothing appended to the pixels
        slab = np.frombuffer(pixels, dtype=np.int16).reshape(n, 512, 512)
        sent_slices |= {slab[k].tobytes() for k in range(n)}
        del request.raw_input_contents[:]
        assert set(str(request).split()) <= request_tokens((n, 512, 512))
    assert sent_slices == {volume.hu[k].tobytes() for k in range(volume.hu.shape[0])}  # the HU pixels, exactly


def test_the_windows_a_volume_model_is_sent_are_pixels_and_tensor_names_only(sample: SampleStudy) -> None:
    """The nodule CAD's path (resample, windows) through TritonBackend, against the recording server."""
    from imaging_cds.imaging.files import FileStream
    from imaging_cds.inference.triton import TritonBackend
    from imaging_cds.inference.windows import infer_volume, resample
    from imaging_cds.worker.pipeline import analyze_series_with
    from imaging_cds.worker.timing import StageTimer

    model = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-nodule-cad")
    assert model.preprocessing is not None
    files = sorted(sample.study_dir.rglob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files[:20]]
    triton = _RecordingTriton()
    backend = TritonBackend(f"127.0.0.1:{triton.port}")
    try:
        (run,) = analyze_series_with(
            sample.study_instance_uid,
            sample.series_instance_uid,
            FileStream(sample.study_instance_uid, files),
            [model],
            backend,
            StageTimer(),
        )
        assert run.analysis is not None  # all-zero outputs: no nodule, a report that says so
        volume = run.analysis.volume
        resampled, _grid = resample(volume, model.preprocessing)
        sent = infer_volume(volume, model, backend).windows
    finally:
        backend.close()
        triton.stop()
    identity: list[str] = list(PHI_MARKERS)
    for ds in headers:
        identity += [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
        identity += [str(ds.get(k, "")) for k in ("AccessionNumber", "StudyDate", "StudyTime") if ds.get(k)]

    windows = 0
    for raw in triton.received:
        for marker in identity:
            assert marker.encode() not in raw and marker.encode("utf-16-le") not in raw
        if b"ct_hu" not in raw:
            continue
        request = service_pb2.ModelInferRequest.FromString(raw)
        shape = tuple(int(d) for d in request.inputs[0].shape)
        assert request.inputs[0].datatype == "INT16" and len(shape) == 4
        assert len(request.raw_input_contents[0]) == int(np.prod(shape)) * 2  # the window's HU, nothing appended
        pixels = np.frombuffer(request.raw_input_contents[0], dtype=np.int16)
        assert pixels.min() >= resampled.min() and pixels.max() <= resampled.max()
        del request.raw_input_contents[:]
        assert set(str(request).split()) <= request_tokens(shape, "lung-nodule-cad", "nodule_map")
        windows += shape[0]
    assert windows == 2 * sent  # the pipeline's run and infer_volume's: every window went, and only windows
