"""TLS to the real Triton (``IMAGING_CDS_TRITON_TLS*``): its gRPC port behind TLS with a client certificate asked
for (``scripts/sandbox up --triton-tls mutual``). With the hospital's CA and the worker's certificate every call
works, the tensors both inside the messages and through shared memory; without the certificate, with another CA,
or in plaintext the worker gets a transient error naming the model and no answer."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY, Settings
from imaging_cds.errors import TransientError
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.inference.triton import TritonBackend, TritonOptions
from imaging_cds.sample.synthetic_ct import make_chest_ct
from tests.services import sandbox

pytestmark = pytest.mark.services

LUNG_DENSITY = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density")


@pytest.fixture(scope="module")
def triton_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Triton serving lung-density only, gRPC behind mutual TLS; yields its ``IMAGING_CDS_*`` settings."""
    root = tmp_path_factory.mktemp("triton-tls")
    shutil.copytree(DEFAULT_MODEL_REPOSITORY / "lung-density", root / "repo" / "lung-density")
    options = ("--only", "triton", "--triton-tls", "mutual", "--model-repository", str(root / "repo"))
    with sandbox(root / "sandbox", *options) as info:
        yield {k: v for k, v in info.items() if k.startswith("IMAGING_CDS_")}


@pytest.fixture(scope="module")
def slices() -> np.ndarray:
    hu, _labels, _spacing = make_chest_ct(seed=5, n_slices=40)
    return np.ascontiguousarray(hu[:20])


def test_the_settings_name_the_ca_and_the_client_certificate(triton_tls: dict[str, str]) -> None:
    settings = Settings.from_env(triton_tls)
    assert settings.triton_tls and Path(settings.triton_tls_ca_file).is_file()
    assert Path(settings.triton_tls_cert_file).is_file() and Path(settings.triton_tls_key_file).is_file()


@pytest.mark.parametrize("shared_memory", ["none", "system"])
def test_with_the_ca_and_a_client_certificate_inference_works(
    triton_tls: dict[str, str], slices: np.ndarray, shared_memory: str
) -> None:
    settings = Settings.from_env({**triton_tls, "IMAGING_CDS_TRITON_SHARED_MEMORY": shared_memory})
    backend = TritonBackend.from_settings(settings)
    try:
        assert backend.options.tls and backend.served_version(LUNG_DENSITY) == "1"
        assert backend.items_per_request(LUNG_DENSITY, slices) < len(slices)  # two requests
        for _ in range(2):  # the second time with the output size known: shared memory both ways
            out = backend.infer(LUNG_DENSITY, slices)
        assert backend.transport == ("system-shared-memory" if shared_memory == "system" else "grpc")
    finally:
        backend.close()
    np.testing.assert_array_equal(out, LocalOnnxBackend().infer(LUNG_DENSITY, slices))


@pytest.mark.parametrize(
    "client",
    ["no client certificate", "another CA", "plaintext"],
)
def test_without_the_right_credentials_the_job_gets_a_transient_error(
    triton_tls: dict[str, str], slices: np.ndarray, client: str
) -> None:
    ca = triton_tls["IMAGING_CDS_TRITON_TLS_CA_FILE"]
    options = {
        "no client certificate": TritonOptions(retries=1, backoff_s=0.05, tls=True, tls_ca_file=ca),
        "another CA": TritonOptions(  # the client certificate is no CA of the server's certificate
            retries=1,
            backoff_s=0.05,
            tls=True,
            tls_ca_file=triton_tls["IMAGING_CDS_TRITON_TLS_CERT_FILE"],
            tls_cert_file=triton_tls["IMAGING_CDS_TRITON_TLS_CERT_FILE"],
            tls_key_file=triton_tls["IMAGING_CDS_TRITON_TLS_KEY_FILE"],
        ),
        "plaintext": TritonOptions(retries=1, backoff_s=0.05),
    }[client]
    backend = TritonBackend(triton_tls["IMAGING_CDS_TRITON_GRPC_URL"], options=options)
    try:
        with pytest.raises(TransientError, match=r"lung-density v1 failed \(StatusCode.UNAVAILABLE.*after 2 attempt"):
            backend.infer(LUNG_DENSITY, slices[:2])
    finally:
        backend.close()
