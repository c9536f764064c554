"""Where models run: the same ONNX files, on a Triton server (the services) or in-process (``analyze``).

A backend takes a batch (axis 0 = the model's batch axis) and returns the model's output for it; a batch longer than
``manifest.max_batch`` is sent as several requests of at most that many. Requests carry pixel arrays only: no DICOM
header, no UID, no patient data.

``priority`` follows Triton's convention: 0 = the model's default level, 1 = the most urgent. A STAT job asks for
:data:`STAT_PRIORITY`; a backend without queues (onnxruntime in-process) ignores it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from imaging_cds.inference.manifest import ModelManifest

ROUTINE_PRIORITY = 0
STAT_PRIORITY = 1


class InferenceBackend(Protocol):
    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = ROUTINE_PRIORITY) -> np.ndarray: ...

    def served_version(self, model: ModelManifest, *, retry: bool = True) -> str:
        """The model version that actually answers (Triton's, or the local file's). ``retry``: a server that is
        unavailable is tried again a few times first (as for a job); False: one attempt, for a caller that polls.
        An unavailable or not-ready model raises TransientError."""
        ...

    def close(self) -> None: ...


class PrioritizedBackend:
    """A backend whose every request carries one priority (a STAT job's), so the pipeline need not know it."""

    def __init__(self, backend: InferenceBackend, priority: int) -> None:
        self._backend = backend
        self.priority = priority

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = ROUTINE_PRIORITY) -> np.ndarray:
        return self._backend.infer(model, batch, priority or self.priority)

    def served_version(self, model: ModelManifest, *, retry: bool = True) -> str:
        return self._backend.served_version(model, retry=retry)

    def close(self) -> None:
        """The wrapped backend is shared: closing a job's view of it closes nothing."""


def with_priority(backend: InferenceBackend, priority: int) -> InferenceBackend:
    return backend if priority == ROUTINE_PRIORITY else PrioritizedBackend(backend, priority)


def split_batch(batch: np.ndarray, max_batch: int) -> list[np.ndarray]:
    """Axis-0 chunks of at most ``max_batch`` (a model's max_batch_size), contiguous for the wire."""
    step = max(1, max_batch)
    return [np.ascontiguousarray(batch[i : i + step]) for i in range(0, max(len(batch), 1), step)]
