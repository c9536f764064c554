"""Inference on an NVIDIA Triton Inference Server over gRPC (KServe v2 protocol)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from imaging_cds.errors import TransientError
from imaging_cds.inference.manifest import ModelManifest


class TritonBackend:
    """One gRPC channel to one Triton server, shared by the worker's threads."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url=url)

    def infer(self, model: ModelManifest, batch: np.ndarray) -> np.ndarray:
        request = grpcclient.InferInput(model.input.name, list(batch.shape), model.input.datatype)
        request.set_data_from_numpy(batch)
        try:
            result = self._client.infer(
                model.triton_model,
                [request],
                model_version=model.triton_version,
                outputs=[grpcclient.InferRequestedOutput(model.output.name)],
                client_timeout=self._timeout_s,
            )
        except InferenceServerException as err:
            raise TransientError(
                f"Triton at {self.url}: model {model.triton_model} v{model.triton_version} failed "
                f"({err.status()}: {err.message()}); the job will be retried"
            ) from err
        output: np.ndarray | None = result.as_numpy(model.output.name)
        if output is None:
            raise RuntimeError(f"Triton returned no {model.output.name!r} for {model.triton_model}")
        return output

    def served_version(self, model: ModelManifest) -> str:
        try:
            ready = self._client.is_model_ready(model.triton_model, model.triton_version)
        except InferenceServerException as err:
            raise TransientError(f"Triton at {self.url} unreachable ({err.message()}); will retry") from err
        if not ready:
            raise TransientError(
                f"Triton at {self.url}: model {model.triton_model} v{model.triton_version} is not ready; "
                "the job will be retried"
            )
        return model.triton_version

    def close(self) -> None:
        self._client.close()
