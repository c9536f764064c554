"""Where models run: the same ONNX files, on a Triton server (the services) or in-process (``analyze``).

A backend takes a batch (axis 0 = the model's batch axis, at most ``manifest.max_batch`` long) and returns the
model's output for it. Requests carry pixel arrays only: no DICOM header, no UID, no patient data.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from imaging_cds.inference.manifest import ModelManifest


class InferenceBackend(Protocol):
    def infer(self, model: ModelManifest, batch: np.ndarray) -> np.ndarray: ...

    def served_version(self, model: ModelManifest) -> str:
        """The model version that actually answers (Triton's, or the local file's)."""
        ...

    def close(self) -> None: ...
