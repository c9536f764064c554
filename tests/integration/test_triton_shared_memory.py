"""Tensors through system shared memory (``IMAGING_CDS_TRITON_SHARED_MEMORY=system``) on the real Triton: the same
outputs as in-process onnxruntime, regions reused and cleaned up, and a logged fallback to plain gRPC whenever the
server cannot use them."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as system_shm
from tritonclient.utils import InferenceServerException

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY
from imaging_cds.inference.backend import STAT_PRIORITY
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import ModelManifest, load_manifest, load_manifests
from imaging_cds.inference.triton import TritonBackend, TritonOptions
from imaging_cds.sample.synthetic_ct import make_chest_ct

pytestmark = pytest.mark.services

MODELS = load_manifests(DEFAULT_MODEL_REPOSITORY)
LUNG_DENSITY = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")
SHARED = TritonOptions(shared_memory="system", request_bytes=8 * 512 * 512 * 2)  # 8 slices a request


def ct_slices(n_slices: int) -> np.ndarray:
    hu, _labels, _spacing = make_chest_ct(seed=3, n_slices=max(n_slices, 40))
    return np.ascontiguousarray(hu[:n_slices])


def model_input(model: ModelManifest) -> np.ndarray:
    """More items than max_batch_size: slices for a slice model, (z, y, x) windows of the CT for a volume model."""
    n = model.max_batch + 7 if model.preprocessing is None else model.max_batch + 1
    if model.preprocessing is None:
        return ct_slices(n)
    hu = ct_slices(48)
    return np.stack([hu[z : z + 32, 200 + 8 * z : 264 + 8 * z, 160:224] for z in range(n)])


def registered(url: str) -> list[str]:
    client = grpcclient.InferenceServerClient(url)
    try:
        status: dict[str, Any] = client.get_system_shared_memory_status(as_json=True)
        return sorted(status.get("regions", {}))
    finally:
        client.close()


def our_shm_files() -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith(f"imaging-cds-{os.getpid()}-"))


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_outputs_through_shared_memory_are_identical_to_local(sandbox: dict[str, str], model: ModelManifest) -> None:
    url = sandbox["IMAGING_CDS_TRITON_GRPC_URL"]
    batch = model_input(model)
    here = LocalOnnxBackend().infer(model, batch)
    triton = TritonBackend(url, options=SHARED)
    try:
        for priority in (0, STAT_PRIORITY, 0):  # the first request learns the output size over gRPC
            remote = triton.infer(model, batch, priority=priority)
            assert remote.dtype == here.dtype and remote.shape == here.shape
            np.testing.assert_array_equal(remote, here)
        assert triton.transport == "system-shared-memory"
        # one input and one output region per request in flight, reused, not one per request
        assert len([r for r in registered(url) if r.startswith(f"imaging-cds-{os.getpid()}-")]) <= 2 * 3
    finally:
        triton.close()
    assert not [r for r in registered(url) if r.startswith(f"imaging-cds-{os.getpid()}-")]
    assert our_shm_files() == []


def test_regions_triton_forgot_are_registered_again(sandbox: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """A restarted Triton has no registrations: that request goes over gRPC, the next ones use shared memory."""
    url = sandbox["IMAGING_CDS_TRITON_GRPC_URL"]
    batch = ct_slices(8)
    here = LocalOnnxBackend().infer(LUNG_DENSITY, batch)
    triton = TritonBackend(url, options=replace(SHARED, max_in_flight=1))  # one slot: its regions are reused
    try:
        triton.infer(LUNG_DENSITY, batch)
        triton.infer(LUNG_DENSITY, batch)
        for name in registered(url):
            if name.startswith(f"imaging-cds-{os.getpid()}-"):
                _unregister(url, name)
        with caplog.at_level(logging.WARNING, logger="imaging_cds.inference.triton"):
            np.testing.assert_array_equal(triton.infer(LUNG_DENSITY, batch), here)
        assert "Unable to find shared memory region" in caplog.text and "this request goes over gRPC" in caplog.text
        np.testing.assert_array_equal(triton.infer(LUNG_DENSITY, batch), here)
        assert triton.transport == "system-shared-memory"
        assert [r for r in registered(url) if r.startswith(f"imaging-cds-{os.getpid()}-")]
    finally:
        triton.close()


def test_a_triton_that_cannot_map_the_regions_gets_tensors_over_grpc(
    sandbox: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with Triton on another host: the region the worker made is not in the server's /dev/shm."""
    create = system_shm.create_shared_memory_region

    def invisible_to_the_server(name: str, key: str, byte_size: int, create_only: bool = False) -> Any:
        handle = create(name, key, byte_size, create_only=create_only)
        Path("/dev/shm", key.lstrip("/")).unlink()
        return handle

    monkeypatch.setattr(system_shm, "create_shared_memory_region", invisible_to_the_server)
    url = sandbox["IMAGING_CDS_TRITON_GRPC_URL"]
    batch = ct_slices(20)
    here = LocalOnnxBackend().infer(LUNG_DENSITY, batch)
    triton = TritonBackend(url, options=SHARED)
    try:
        with caplog.at_level(logging.WARNING, logger="imaging_cds.inference.triton"):
            np.testing.assert_array_equal(triton.infer(LUNG_DENSITY, batch), here)
            np.testing.assert_array_equal(triton.infer(LUNG_DENSITY, batch), here)
        assert triton.transport == "grpc"
        fallbacks = [r.getMessage() for r in caplog.records if "tensors go over gRPC from now on" in r.getMessage()]
        assert len(fallbacks) == 1 and "cannot map /dev/shm/imaging-cds-" in fallbacks[0]
    finally:
        triton.close()
    assert not [r for r in registered(url) if r.startswith(f"imaging-cds-{os.getpid()}-")]


def _unregister(url: str, name: str) -> None:
    """As a restart would; Triton lets go of a request's regions a moment after answering it."""
    client = grpcclient.InferenceServerClient(url)
    try:
        for _ in range(40):
            try:
                client.unregister_system_shared_memory(name)
                return
            except InferenceServerException as err:
                if "in use" not in (err.message() or ""):
                    raise
                time.sleep(0.05)
        raise AssertionError(f"Triton kept {name} in use")
    finally:
        client.close()
