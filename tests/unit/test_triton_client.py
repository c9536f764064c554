"""The Triton client's behaviour that needs no server: bounded retries, settings, STAT priority pass-through."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

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

    def served_version(self, model: ModelManifest) -> str:
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
