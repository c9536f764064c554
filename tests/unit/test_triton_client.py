"""The Triton client's behaviour that needs no Triton: bounded retries, deadlines, broken and wrong-version
answers, settings, STAT priority pass-through, batches split and put back together."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY, Settings
from imaging_cds.errors import TransientError
from imaging_cds.inference.backend import STAT_PRIORITY, split_batch, with_priority
from imaging_cds.inference.manifest import ModelManifest, load_manifest
from imaging_cds.inference.triton import TritonBackend, TritonOptions
from imaging_cds.jobs.model import Job, Priority, StudyRef
from imaging_cds.worker.service import _inference_priority

MODEL = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_triton_is_retried_a_bounded_number_of_times_then_transient() -> None:
    backend = TritonBackend(
        f"127.0.0.1:{_closed_port()}", options=TritonOptions(timeout_s=2.0, retries=2, backoff_s=0.05)
    )
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match=r"UNAVAILABLE.*after 3 attempt\(s\); the job will be retried"):
            backend.infer(MODEL, np.zeros((2, 8, 8), dtype=np.int16))
        with pytest.raises(TransientError, match="lung-density v1"):
            backend.served_version(MODEL)
    finally:
        backend.close()
    assert time.monotonic() - started < 5.0  # 0.05 + 0.1 s of backoff each, not the job engine's minutes


def test_triton_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "IMAGING_CDS_TRITON_GRPC_URL": "triton.internal:8001",
            "IMAGING_CDS_TRITON_TIMEOUT_S": "30",
            "IMAGING_CDS_TRITON_RETRIES": "5",
            "IMAGING_CDS_TRITON_MAX_IN_FLIGHT": "2",
            "IMAGING_CDS_TRITON_TLS": "true",
        }
    )
    backend = TritonBackend.from_settings(settings)
    try:
        assert backend.url == "triton.internal:8001"
        assert backend.options == TritonOptions(timeout_s=30.0, retries=5, max_in_flight=2, tls=True)
    finally:
        backend.close()
    with pytest.raises(ValueError, match="TRITON_TLS_CERT_FILE and IMAGING_CDS_TRITON_TLS_KEY_FILE"):
        Settings.from_env({"IMAGING_CDS_TRITON_TLS_CERT_FILE": "/etc/tls/tls.crt"})


class _Recorder:
    def __init__(self) -> None:
        self.priorities: list[int] = []

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = 0) -> np.ndarray:
        self.priorities.append(priority)
        return batch

    def served_version(self, model: ModelManifest, *, retry: bool = True) -> str:
        return "1"

    def close(self) -> None:
        raise AssertionError("a job's view must not close the shared backend")


def test_stat_jobs_ask_triton_for_the_highest_priority() -> None:
    stat = Job(job_id="j1", study=StudyRef("s1"), priority=Priority.STAT)
    routine = Job(job_id="j2", study=StudyRef("s2"))
    assert _inference_priority(stat) == STAT_PRIORITY
    assert _inference_priority(routine) == 0
    assert _inference_priority(None) == 0

    shared = _Recorder()
    assert with_priority(shared, 0) is shared
    urgent = with_priority(shared, _inference_priority(stat))
    urgent.infer(MODEL, np.zeros((1, 2, 2), dtype=np.int16))
    urgent.close()
    assert shared.priorities == [STAT_PRIORITY]


def test_batches_are_split_within_max_batch_size() -> None:
    chunks = split_batch(np.arange(10), 4)
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert all(c.flags.c_contiguous for c in chunks)


class _ScriptedTriton:
    """A loopback gRPC server that answers ModelInfer with ``answer(raw_request)``: for the client's behaviour on
    slow and broken answers, which a healthy Triton does not give on demand."""

    def __init__(self, answer: Callable[[bytes], bytes], request_bytes: int = 8 << 20) -> None:
        self.options = TritonOptions(timeout_s=0.3, retries=2, backoff_s=0.05, request_bytes=request_bytes)
        handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(lambda raw, _context: answer(raw))}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def __enter__(self) -> TritonBackend:
        self.backend = TritonBackend(f"127.0.0.1:{self.port}", options=self.options)
        return self.backend

    def __exit__(self, *exc: object) -> None:
        self.backend.close()
        self.server.stop(grace=None)


def test_a_request_past_its_deadline_fails_once_as_transient() -> None:
    calls: list[bytes] = []

    def slow(raw: bytes) -> bytes:
        calls.append(raw)
        time.sleep(1.0)
        return b""

    deadline = pytest.raises(TransientError, match=r"DEADLINE_EXCEEDED.*after 1 attempt\(s\); the job will be retried")
    with _ScriptedTriton(slow) as backend, deadline:
        backend.infer(MODEL, np.zeros((2, 8, 8), dtype=np.int16))
    assert len(calls) == 1  # a deadline is not retried: the job engine's backoff decides


def test_an_answer_that_does_not_parse_fails_as_transient_and_names_the_model() -> None:
    broken = _ScriptedTriton(lambda raw: b"\x32\xff\xff\xff\x7f")  # field 6 longer than the message
    with broken as backend, pytest.raises(TransientError, match=r"lung-density v1 failed \(StatusCode.INTERNAL"):
        backend.infer(MODEL, np.zeros((2, 8, 8), dtype=np.int16))


def test_an_answer_from_another_model_version_is_refused() -> None:
    def other_version(raw: bytes) -> bytes:
        request = service_pb2.ModelInferRequest.FromString(raw)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="2")
        response.outputs.add(name="lung_candidate", datatype="UINT8", shape=list(request.inputs[0].shape))
        response.raw_output_contents.append(bytes(len(request.raw_input_contents[0]) // 2))
        return bytes(response.SerializeToString())

    refused = pytest.raises(TransientError, match="answered as version 2, the manifest pins 1")
    with _ScriptedTriton(other_version) as backend, refused:
        backend.infer(MODEL, np.zeros((2, 8, 8), dtype=np.int16))


def test_the_answers_of_a_split_batch_are_put_back_in_order() -> None:
    def echo_low_byte(raw: bytes) -> bytes:
        request = service_pb2.ModelInferRequest.FromString(raw)
        hu = np.frombuffer(request.raw_input_contents[0], dtype=np.int16)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="lung_candidate", datatype="UINT8", shape=list(request.inputs[0].shape))
        response.raw_output_contents.append((hu % 256).astype(np.uint8).tobytes())
        time.sleep(0.05 * float(hu.flat[0] % 3))  # answers arrive out of order
        return bytes(response.SerializeToString())

    batch = np.arange(20 * 4 * 4, dtype=np.int16).reshape(20, 4, 4) * 7
    with _ScriptedTriton(echo_low_byte, request_bytes=3 * batch[0].nbytes) as backend:
        out = backend.infer(MODEL, batch)
    np.testing.assert_array_equal(out, (batch % 256).astype(np.uint8))  # 7 requests of 3, 3, ..., 2 slices
