"""Inference on an NVIDIA Triton Inference Server over gRPC (KServe v2 protocol).

One :class:`TritonBackend` per process holds one gRPC channel, shared by every thread and job. Each request has a
deadline (``timeout_s``); a server that is UNAVAILABLE (restarting, not yet listening, model reloading) is retried a
bounded number of times with exponential backoff, then the job gets a :class:`TransientError` and the job engine's
own backoff takes over. Requests name the manifest's pinned model version and are refused when another version
answers. A batch goes as requests of about ``request_bytes`` (never more than the model's ``max_batch_size`` items),
at most ``max_in_flight`` of them outstanding per process, so Triton's dynamic batcher is kept busy without an
unbounded client-side queue.

Tensors travel inside the gRPC messages unless ``shared_memory="system"``. Inside the messages they bypass
protobuf on this side (``triton_wire``: ``ModelInfer`` goes through a stub on tritonclient's channel whose
serializers append the input bytes from the array and read the output bytes in place), which halves the client's
CPU per volume. With ``shared_memory="system"`` each request's input and output go through POSIX shared memory
(``/dev/shm``) registered with Triton, and only the request's metadata goes over gRPC. That needs Triton on the
same host (in Kubernetes: a sidecar in the worker's pod sharing an in-memory ``/dev/shm``). It saves Triton's
copies and the loopback transfer of every tensor: on the 2-core test machine most of what remains of Triton's
overhead (``bench/inference.py``). When the server cannot open the regions (another host,
another ``/dev/shm``) the backend logs why once and sends tensors over gRPC from then on.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as system_shm
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from imaging_cds.config import Settings
from imaging_cds.errors import TransientError
from imaging_cds.inference.backend import ROUTINE_PRIORITY, split_batch
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.inference.triton_wire import (
    InferAnswer,
    InferRequest,
    InputTensor,
    OutputTensor,
    decode_response,
    encode_request,
    infer_request,
)

log = logging.getLogger(__name__)

RETRYABLE = ("StatusCode.UNAVAILABLE",)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SHARED_MEMORY_MODES = ("none", "system")
UNREGISTER_ATTEMPTS, UNREGISTER_WAIT_S = 40, 0.05
# gRPC waits longer and longer between attempts to reconnect to a server that is down (up to 120 s by default): a
# worker waiting for a Triton that is loading its models would notice it up to two minutes late.
MAX_RECONNECT_BACKOFF_MS = 5000
POLL_TIMEOUT_S = 5.0  # deadline of a readiness poll (served_version(retry=False)): a poller must stay responsive
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
    # "system": input and output tensors through POSIX shared memory registered with Triton (same host only);
    # "none": inside the gRPC messages.
    shared_memory: str = "none"


class _Failed(Exception):
    """The error that ended a request to Triton, after ``attempts`` attempts."""

    def __init__(self, error: InferenceServerException, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


class SharedMemoryError(Exception):
    """A shared-memory region could not be made, registered or used. ``fatal``: this Triton cannot use the
    process's shared memory at all (tensors go over gRPC from now on); otherwise only this request goes over gRPC
    and the region is registered again before its next use."""

    def __init__(self, message: str, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass
class _Region:
    """One POSIX shared-memory object (``/dev/shm/<name>``) registered with Triton under the same name."""

    name: str
    byte_size: int
    handle: Any  # tritonclient.utils.shared_memory.SharedMemoryRegion

    @property
    def key(self) -> str:
        return f"/{self.name}"


@dataclass
class _Slot:
    """The input and output regions of one request in flight, reused by the requests that take the slot in turn.
    ``stale``: Triton may have lost the registrations (it restarted); register again before the next use."""

    index: int
    regions: dict[str, _Region] = field(default_factory=dict)  # "input" / "output"
    stale: bool = False


class SystemSharedMemory:
    """A fixed number of slots (one per request in flight), each a pair of regions that grow to the largest
    request seen; registered with Triton lazily, unregistered and unlinked by :meth:`close`."""

    def __init__(
        self,
        client: grpcclient.InferenceServerClient,
        url: str,
        slots: int,
        timeout_s: float,
        retrying: Callable[[Callable[[], object]], object],
    ) -> None:
        self._client = client
        self._url = url
        self._timeout_s = timeout_s
        self._retrying = retrying  # the backend's policy for UNAVAILABLE
        self._prefix = f"imaging-cds-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._made = itertools.count()
        self._all = [_Slot(i) for i in range(max(1, slots))]
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for slot in self._all:
            self._free.put(slot)

    @contextmanager
    def slot(self) -> Iterator[_Slot]:
        """A free slot for one request (callers hold the in-flight semaphore, so one is always free soon)."""
        slot = self._free.get(timeout=self._timeout_s)
        try:
            if slot.stale:
                self._register_again(slot)
            yield slot
        finally:
            self._free.put(slot)

    def write_input(self, slot: _Slot, batch: np.ndarray) -> _Region:
        region = self.region(slot, "input", batch.nbytes)
        system_shm.set_shared_memory_region(region.handle, [batch])
        return region

    def read_output(self, slot: _Slot, datatype: str, shape: list[int]) -> np.ndarray:
        """A copy of the output Triton wrote into the slot's output region (the region is reused at once)."""
        view = system_shm.get_contents_as_numpy(slot.regions["output"].handle, triton_to_np_dtype(datatype), shape)
        return np.array(view, copy=True)

    def region(self, slot: _Slot, role: str, byte_size: int) -> _Region:
        """The slot's ``role`` region, made (or replaced by a larger one) and registered to hold ``byte_size``."""
        region = slot.regions.get(role)
        if region is not None and region.byte_size >= byte_size:
            return region
        if region is not None:
            self._release(region)
            del slot.regions[role]
        # A new name for every region made: Triton may still hold the old one for a moment.
        region = self._create(f"{self._prefix}-{slot.index}-{role}-{next(self._made)}", max(byte_size, 1))
        slot.regions[role] = region
        return region

    def close(self) -> None:
        for slot in self._all:
            for region in slot.regions.values():
                self._release(region)
            slot.regions.clear()

    def _create(self, name: str, byte_size: int) -> _Region:
        try:
            handle = system_shm.create_shared_memory_region(name, f"/{name}", byte_size, create_only=True)
        except system_shm.SharedMemoryException as err:
            raise SharedMemoryError(f"cannot create /dev/shm/{name} ({byte_size} bytes): {err}", fatal=True) from err
        region = _Region(name, byte_size, handle)
        try:
            self._register(region)
        except BaseException:
            _destroy(region)
            raise
        return region

    def _register(self, region: _Region) -> None:
        try:
            self._retrying(
                lambda: self._client.register_system_shared_memory(
                    region.name, region.key, region.byte_size, client_timeout=self._timeout_s
                )
            )
        except _Failed as failed:
            err = failed.error
            if err.status() in RETRYABLE:
                raise TransientError(
                    f"Triton at {self._url} unavailable while registering shared memory ({err.message()}) after "
                    f"{failed.attempts} attempt(s); the job will be retried"
                ) from err
            raise SharedMemoryError(
                f"Triton at {self._url} cannot map /dev/shm/{region.name} ({err.status()}: {err.message()}); "
                "is it on another host or in a container without this pod's /dev/shm?",
                fatal=True,
            ) from err

    def _register_again(self, slot: _Slot) -> None:
        for region in slot.regions.values():
            self._unregister(region)
            self._register(region)
        slot.stale = False

    def _unregister(self, region: _Region) -> None:
        """Unregisters the region; Triton lets go of a request's regions a moment after its answer, so "in use"
        is waited out briefly. A server that is down or restarted has nothing left to unregister."""
        for attempt in range(UNREGISTER_ATTEMPTS):
            try:
                self._client.unregister_system_shared_memory(region.name, client_timeout=self._timeout_s)
                return
            except InferenceServerException as err:
                if "in use" not in (err.message() or "") or attempt == UNREGISTER_ATTEMPTS - 1:
                    log.debug("Triton at %s: unregistering %s failed: %s", self._url, region.name, err.message())
                    return
                time.sleep(UNREGISTER_WAIT_S)

    def _release(self, region: _Region) -> None:
        self._unregister(region)
        _destroy(region)


class _Gathered:
    """The outputs of one batch's requests, put together along axis 0 as they arrive from the pool's threads."""

    def __init__(self, items: int) -> None:
        self._items = items
        self._lock = threading.Lock()
        self._array: np.ndarray | None = None

    def put(self, start: int, items: int, part: np.ndarray) -> None:
        """``part``: the output of the request whose ``items`` batch items begin at ``start``."""
        if part.ndim == 0 or len(part) != items:
            raise RuntimeError(f"Triton answered {items} batch items with an output of shape {list(part.shape)}")
        with self._lock:
            if self._array is None:
                self._array = np.empty((self._items, *part.shape[1:]), dtype=part.dtype)
            array = self._array
        if array.shape[1:] != part.shape[1:] or array.dtype != part.dtype:
            raise RuntimeError(
                f"Triton answered one request of a batch with {part.dtype}{list(part.shape)}, another with "
                f"{array.dtype}{list(array.shape[1:])} per item"
            )
        array[start : start + len(part)] = part

    def result(self) -> np.ndarray:
        assert self._array is not None, "no request of the batch was answered"
        return self._array


class TritonBackend:
    """One gRPC channel to one Triton server, shared by the worker's threads."""

    def __init__(self, url: str, timeout_s: float = 120.0, options: TritonOptions | None = None) -> None:
        self.url = url
        self.options = options or TritonOptions(timeout_s=timeout_s)
        o = self.options
        if bool(o.tls_cert_file) != bool(o.tls_key_file):
            raise ValueError("Triton TLS: a client certificate and its key go together")
        if o.shared_memory not in SHARED_MEMORY_MODES:
            raise ValueError(f"Triton shared memory: {o.shared_memory!r} is not one of {SHARED_MEMORY_MODES}")
        self._client = grpcclient.InferenceServerClient(
            url=url,
            ssl=o.tls,
            root_certificates=o.tls_ca_file or None,
            private_key=o.tls_key_file or None,
            certificate_chain=o.tls_cert_file or None,
            channel_args=_channel_args(),
        )
        # ModelInfer goes through this stub on the client's own channel (the one channel every thread shares),
        # with triton_wire's serializers in place of protobuf's (tritonclient is pinned: _channel is its channel).
        self._infer_call = self._client._channel.unary_unary(
            MODEL_INFER,
            request_serializer=encode_request,
            response_deserializer=decode_response,
            _registered_method=True,
        )
        slots = max(1, o.max_in_flight)
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="triton")
        self._in_flight = threading.BoundedSemaphore(slots)
        # The regions in use; None with shared_memory="none" or after a fallback to gRPC (then _shm_to_close
        # still holds them: another thread may be using its slot).
        self._shm: SystemSharedMemory | None = None
        if o.shared_memory == "system":
            self._shm = SystemSharedMemory(self._client, url, slots, o.timeout_s, self._retrying)
        self._shm_to_close = self._shm
        self._fallback_lock = threading.Lock()
        # Output bytes per batch item, per (model, version, input item shape, dtype): sizes the output regions.
        # Learnt from the first answer over gRPC, so a model's output shape needs no configuration.
        self._output_item_bytes: dict[tuple[str, str, tuple[int, ...], str], int] = {}

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
                shared_memory=settings.triton_shared_memory,
            ),
        )

    @property
    def transport(self) -> str:
        """How tensors travel now: "system-shared-memory", or "grpc" (configured so, or fallen back to it)."""
        return "system-shared-memory" if self._shm is not None else "grpc"

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = ROUTINE_PRIORITY) -> np.ndarray:
        """The model's output for ``batch`` (axis 0 = batch), in requests of at most ``max_batch_size``."""
        chunks = split_batch(batch, self.items_per_request(model, batch))
        if len(chunks) == 1:
            return self._infer_one(model, chunks[0], priority)
        gathered = _Gathered(len(batch))
        starts = itertools.accumulate((len(c) for c in chunks[:-1]), initial=0)
        # Each answer is copied into place as it arrives, while the other requests are still at Triton.
        list(self._pool.map(lambda s, c: gathered.put(s, len(c), self._infer_one(model, c, priority)), starts, chunks))
        return gathered.result()

    def items_per_request(self, model: ModelManifest, batch: np.ndarray) -> int:
        """Batch items per request: about ``request_bytes`` of input, at least 1, at most max_batch_size."""
        item_bytes = max(1, batch[0].nbytes if len(batch) else 1)
        return max(1, min(model.max_batch, self.options.request_bytes // item_bytes))

    def _infer_one(self, model: ModelManifest, batch: np.ndarray, priority: int) -> np.ndarray:
        with self._in_flight:
            shm = self._shm
            if shm is not None and "BYTES" not in (model.input.datatype, model.output.datatype):  # fixed-size only
                try:
                    return self._infer_shared(shm, model, batch, priority)
                except SharedMemoryError as err:
                    self._shared_memory_failed(err)
            return self._infer_grpc(model, batch, priority)

    def _infer_grpc(self, model: ModelManifest, batch: np.ndarray, priority: int) -> np.ndarray:
        given = InputTensor(model.input.name, model.input.datatype, batch.shape, data=batch)
        request = infer_request(
            model.triton_model, model.triton_version, [given], [OutputTensor(model.output.name)], priority
        )
        return self._output_of(model, batch, self._request(model, request))

    def _infer_shared(
        self, shm: SystemSharedMemory, model: ModelManifest, batch: np.ndarray, priority: int
    ) -> np.ndarray:
        """One request whose tensors go through the slot's regions; the output comes over gRPC while its size per
        item is not known yet (the first request of a model and input shape)."""
        item_bytes = self._output_item_bytes.get(_item_key(model, batch))
        with shm.slot() as slot:
            region = shm.write_input(slot, batch)
            given = InputTensor(
                model.input.name, model.input.datatype, batch.shape, shared_memory=(region.name, batch.nbytes)
            )
            if item_bytes is None:
                wanted = OutputTensor(model.output.name)
                request = infer_request(model.triton_model, model.triton_version, [given], [wanted], priority)
                return self._output_of(model, batch, self._request(model, request, slot))
            output_bytes = item_bytes * len(batch)
            wanted = OutputTensor(model.output.name, (shm.region(slot, "output", output_bytes).name, output_bytes))
            request = infer_request(model.triton_model, model.triton_version, [given], [wanted], priority)
            tensor = self._request(model, request, slot).output(model.output.name)
            if tensor is None:
                raise RuntimeError(f"Triton returned no {model.output.name!r} for {model.triton_model}")
            return shm.read_output(slot, tensor.datatype, [int(d) for d in tensor.shape])

    def _output_of(self, model: ModelManifest, batch: np.ndarray, answer: InferAnswer) -> np.ndarray:
        """The output carried in the gRPC answer; remembers its size per item for the shared-memory path."""
        output = answer.as_numpy(model.output.name)
        if output is None:
            raise RuntimeError(f"Triton returned no {model.output.name!r} for {model.triton_model}")
        self._output_item_bytes[_item_key(model, batch)] = output.nbytes // max(1, len(batch))
        return output

    def _shared_memory_failed(self, err: SharedMemoryError) -> None:
        if not err.fatal:
            log.warning("Triton at %s: %s; this request goes over gRPC", self.url, err)
            return
        with self._fallback_lock:  # requests in flight fail together: say it once
            first, self._shm = self._shm is not None, None
        if first:
            log.warning("Triton at %s: %s; tensors go over gRPC from now on", self.url, err)

    def _request(self, model: ModelManifest, request: InferRequest, slot: _Slot | None = None) -> InferAnswer:
        """One inference request for the pinned version; ``slot``: its tensors are in that slot's regions."""
        answer = self._call(model, lambda: self._model_infer(request), slot)
        answered = answer.model_version
        if answered and answered != model.triton_version:
            raise TransientError(
                f"Triton at {self.url}: model {model.triton_model} answered as version {answered}, the manifest "
                f"pins {model.triton_version}; the job will be retried (deploy the pinned version)"
            )
        return answer

    def _model_infer(self, request: InferRequest) -> InferAnswer:
        """``ModelInfer`` on the shared channel, its tensors outside protobuf (``triton_wire``); gRPC errors
        become tritonclient's InferenceServerException, as from the client's own calls (an answer that does not
        parse is gRPC's INTERNAL error)."""
        try:
            answer: InferAnswer = self._infer_call(request, timeout=self.options.timeout_s)
        except grpc.RpcError as err:
            raise InferenceServerException(
                msg=err.details(), status=str(err.code()), debug_details=err.debug_error_string()
            ) from None
        return answer

    def _call(
        self, model: ModelManifest, request: Callable[[], T], slot: _Slot | None = None, retries: int | None = None
    ) -> T:
        """``request()`` with :meth:`_retrying`; a failure becomes a :class:`TransientError` for the job. With a
        ``slot``, an error about shared memory (Triton restarted and forgot the regions, an output larger than
        its region) becomes a :class:`SharedMemoryError`: the request goes again over gRPC and the slot's regions
        are registered again before their next use. ``retries``: instead of ``options.retries``."""
        try:
            return self._retrying(request, retries)
        except _Failed as failed:
            err = failed.error
            if slot is not None and "shared memory" in (err.message() or "").lower():
                slot.stale = True
                raise SharedMemoryError(
                    f"request with shared memory failed ({err.status()}: {err.message()})", fatal=False
                ) from err
            raise TransientError(
                f"Triton at {self.url}: model {model.triton_model} v{model.triton_version} failed "
                f"({err.status()}: {err.message()}) after {failed.attempts} attempt(s); the job will be retried"
            ) from err

    def _retrying(self, request: Callable[[], T], retries: int | None = None) -> T:
        """``request()``, retried on UNAVAILABLE (``options.retries`` times unless ``retries`` says) with bounded
        exponential backoff; other errors at once."""
        o = self.options
        retries = o.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                return request()
            except InferenceServerException as err:
                if err.status() not in RETRYABLE or attempt == retries:
                    raise _Failed(err, attempt + 1) from err
                wait = min(o.backoff_cap_s, o.backoff_s * 2**attempt)
                log.warning("Triton at %s unavailable; retry %d of %d in %.2f s", self.url, attempt + 1, retries, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def served_version(self, model: ModelManifest, *, retry: bool = True) -> str:
        """The pinned version, once Triton says it is ready (with ``retry``, retried while the server is
        UNAVAILABLE; without, one attempt with a deadline of ``POLL_TIMEOUT_S``)."""
        timeout_s = self.options.timeout_s if retry else min(self.options.timeout_s, POLL_TIMEOUT_S)
        ready = self._call(
            model,
            lambda: self._client.is_model_ready(model.triton_model, model.triton_version, client_timeout=timeout_s),
            retries=None if retry else 0,
        )
        if not ready:
            raise TransientError(
                f"Triton at {self.url}: model {model.triton_model} v{model.triton_version} is not ready; "
                "the job will be retried"
            )
        return model.triton_version

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._shm_to_close is not None:
            self._shm_to_close.close()
        self._client.close()


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options (no message size limit, its keepalive defaults), and a ceiling on
    the reconnect backoff."""
    keepalive = grpcclient.KeepAliveOptions()
    unlimited = 2**31 - 1
    return [
        ("grpc.max_send_message_length", unlimited),
        ("grpc.max_receive_message_length", unlimited),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


def _item_key(model: ModelManifest, batch: np.ndarray) -> tuple[str, str, tuple[int, ...], str]:
    return (model.triton_model, model.triton_version, tuple(batch.shape[1:]), batch.dtype.str)


def _destroy(region: _Region) -> None:
    """Unmaps and unlinks the region; one already unlinked by someone else is only unmapped."""
    try:
        system_shm.destroy_shared_memory_region(region.handle)
    except (system_shm.SharedMemoryException, OSError) as err:
        log.debug("shared memory %s: %s", region.key, err)
