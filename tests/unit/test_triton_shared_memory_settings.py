"""The shared-memory transport's settings and its behaviour with no Triton to register the regions with."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY, Settings
from imaging_cds.errors import TransientError
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.inference.triton import TritonBackend, TritonOptions

MODEL = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")


def test_shared_memory_is_off_unless_asked_for() -> None:
    assert Settings.from_env({}).triton_shared_memory == "none"
    backend = TritonBackend.from_settings(Settings.from_env({"IMAGING_CDS_TRITON_SHARED_MEMORY": "system"}))
    try:
        assert backend.options.shared_memory == "system"
        assert backend.transport == "system-shared-memory"
    finally:
        backend.close()
    plain = TritonBackend.from_settings(Settings.from_env({}))
    try:
        assert plain.transport == "grpc"
    finally:
        plain.close()


def test_an_unknown_shared_memory_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="IMAGING_CDS_TRITON_SHARED_MEMORY must be one of none, system"):
        Settings.from_env({"IMAGING_CDS_TRITON_SHARED_MEMORY": "cuda"})
    with pytest.raises(ValueError, match="'cuda' is not one of"):
        TritonBackend("127.0.0.1:1", options=TritonOptions(shared_memory="cuda"))


def test_an_unreachable_triton_is_transient_and_leaves_no_region_behind() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = TritonBackend(
        f"127.0.0.1:{port}",
        options=TritonOptions(shared_memory="system", timeout_s=2.0, retries=1, backoff_s=0.05),
    )
    try:
        with pytest.raises(TransientError, match="the job will be retried"):
            backend.infer(MODEL, np.zeros((2, 8, 8), dtype=np.int16))
        assert backend.transport == "system-shared-memory"  # a server that is down is no reason to give it up
    finally:
        backend.close()
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"imaging-cds-{os.getpid()}-")]
