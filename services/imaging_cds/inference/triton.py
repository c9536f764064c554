"""Inference on an NVIDIA Triton Inference Server over gRPC (KServe v2 protocol).

One :class:`TritonBackend` per process holds one gRPC channel, shared by every thread and job. Each request has a
deadline (``timeout_s``); a server that is UNAVAILABLE (restarting, not yet listening, model reloading) is retried a
bounded number of times with exponential backoff, then the job gets a :class:`TransientError` and the job engine's
own backoff takes over. Requests name the manifest's pinned model version and are refused when another version
answers. A batch goes as requests of about ``request_bytes`` (never more than the model's ``max_batch_size`` items),
at most ``max_in_flight`` of them outstanding per process, so Triton's dynamic batcher is kept busy without an
unbounded client-side queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from imaging_cds.config import Settings
from imaging_cds.errors import TransientError
from imaging_cds.inference.backend import ROUTINE_PRIORITY, split_batch
from imaging_cds.inference.manifest import ModelManifest

log = logging.getLogger(__name__)

RETRYABLE = ("StatusCode.UNAVAILABLE",)
T = TypeVar("T")


@dataclass(frozen=True)
class TritonOptions:
    """How the worker talks to Triton; every field has an ``IMAGING_CDS_TRITON_*`` setting (``config.py``)."""

    timeout_s: float = 120.0  # deadline of one request (gRPC client_timeout)
    retries: int = 3  # further attempts of a request that found the server UNAVAILABLE
    backoff_s: float = 0.25  # wait before the first retry; doubled each time, capped at backoff_cap_s
    backoff_cap_s: float = 4.0
    max_in_flight: int = 3  # requests one process keeps outstanding at Triton (splitting a batch)
    # Bytes of input per request: a long batch goes as requests of about this size (never more than the model's
    # max_batch_size items), so sending one overlaps Triton computing the previous; Triton's dynamic batcher joins
    # them again. 8 MiB = 16 slices of 512x512 int16: fastest on the CPU test server (bench/inference.py).
    request_bytes: int = 8 << 20
    tls: bool = False  # TLS on the gRPC channel (Triton behind a TLS-terminating proxy or with --grpc-use-ssl)
    tls_ca_file: str = ""  # PEM roots; empty: the system's
    tls_cert_file: str = ""  # PEM client certificate chain, for mutual TLS
    tls_key_file: str = ""


class TritonBackend:
    """One gRPC channel to one Triton server, shared by the worker's threads."""

    def __init__(self, url: str, timeout_s: float = 120.0, options: TritonOptions | None = None) -> None:
        self.url = url
        self.options = options or TritonOptions(timeout_s=timeout_s)
        o = self.options
        if bool(o.tls_cert_file) != bool(o.tls_key_file):
            raise ValueError("Triton TLS: a client certificate and its key go together")
        self._client = grpcclient.InferenceServerClient(
            url=url,
            ssl=o.tls,
            root_certificates=o.tls_ca_file or None,
            private_key=o.tls_key_file or None,
            certificate_chain=o.tls_cert_file or None,
        )
        self._pool = ThreadPoolExecutor(max_workers=max(1, o.max_in_flight), thread_name_prefix="triton")
        self._in_flight = threading.BoundedSemaphore(max(1, o.max_in_flight))

    @classmethod
    def from_settings(cls, settings: Settings) -> TritonBackend:
        return cls(
            settings.triton_grpc_url,
            options=TritonOptions(
                timeout_s=settings.triton_timeout_s,
                retries=settings.triton_retries,
                max_in_flight=settings.triton_max_in_flight,
                request_bytes=settings.triton_request_bytes,
                tls=settings.triton_tls,
                tls_ca_file=settings.triton_tls_ca_file,
                tls_cert_file=settings.triton_tls_cert_file,
                tls_key_file=settings.triton_tls_key_file,
            ),
        )

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = ROUTINE_PRIORITY) -> np.ndarray:
        """The model's output for ``batch`` (axis 0 = batch), in requests of at most ``max_batch_size``."""
        chunks = split_batch(batch, self.items_per_request(model, batch))
        if len(chunks) == 1:
            return self._infer_one(model, chunks[0], priority)
        outputs = list(self._pool.map(lambda c: self._infer_one(model, c, priority), chunks))
        return np.concatenate(outputs)

    def items_per_request(self, model: ModelManifest, batch: np.ndarray) -> int:
        """Batch items per request: about ``request_bytes`` of input, at least 1, at most max_batch_size."""
        item_bytes = max(1, batch[0].nbytes if len(batch) else 1)
        return max(1, min(model.max_batch, self.options.request_bytes // item_bytes))

    def _infer_one(self, model: ModelManifest, batch: np.ndarray, priority: int) -> np.ndarray:
        request = grpcclient.InferInput(model.input.name, list(batch.shape), model.input.datatype)
        request.set_data_from_numpy(batch)
        wanted = [grpcclient.InferRequestedOutput(model.output.name)]
        with self._in_flight:
            result = self._call(
                model,
                lambda: self._client.infer(
                    model.triton_model,
                    [request],
                    model_version=model.triton_version,
                    outputs=wanted,
                    priority=priority,
                    client_timeout=self.options.timeout_s,
                ),
            )
        answered = result.get_response().model_version
        if answered and answered != model.triton_version:
            raise TransientError(
                f"Triton at {self.url}: model {model.triton_model} answered as version {answered}, the manifest "
                f"pins {model.triton_version}; the job will be retried (deploy the pinned version)"
            )
        output: np.ndarray | None = result.as_numpy(model.output.name)
        if output is None:
            raise RuntimeError(f"Triton returned no {model.output.name!r} for {model.triton_model}")
        return output

    def _call(self, model: ModelManifest, request: Callable[[], T]) -> T:
        """``request()``, retried on UNAVAILABLE with bounded exponential backoff; other errors at once."""
        o = self.options
        for attempt in range(o.retries + 1):
            try:
                return request()
            except InferenceServerException as err:
                if err.status() not in RETRYABLE or attempt == o.retries:
                    raise TransientError(
                        f"Triton at {self.url}: model {model.triton_model} v{model.triton_version} failed "
                        f"({err.status()}: {err.message()}) after {attempt + 1} attempt(s); the job will be retried"
                    ) from err
                wait = min(o.backoff_cap_s, o.backoff_s * 2**attempt)
                log.warning(
                    "Triton at %s unavailable; retry %d of %d in %.2f s", self.url, attempt + 1, o.retries, wait
                )
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def served_version(self, model: ModelManifest) -> str:
        """The pinned version, once Triton says it is ready (retried while the server is UNAVAILABLE)."""
        ready = self._call(
            model,
            lambda: self._client.is_model_ready(
                model.triton_model, model.triton_version, client_timeout=self.options.timeout_s
            ),
        )
        if not ready:
            raise TransientError(
                f"Triton at {self.url}: model {model.triton_model} v{model.triton_version} is not ready; "
                "the job will be retried"
            )
        return model.triton_version

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()
