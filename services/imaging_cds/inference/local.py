"""In-process inference with onnxruntime on the ONNX files in ``triton_repo/`` (the embedded default)."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from imaging_cds.inference.manifest import ModelManifest


class LocalOnnxBackend:
    def __init__(self, threads: int = 0) -> None:
        self._threads = threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def _session(self, model: ModelManifest) -> ort.InferenceSession:
        with self._lock:
            session = self._sessions.get(model.name)
            if session is None:
                options = ort.SessionOptions()
                if self._threads:
                    options.intra_op_num_threads = self._threads
                session = ort.InferenceSession(
                    str(model.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
                )
                self._sessions[model.name] = session
            return session

    def infer(self, model: ModelManifest, batch: np.ndarray) -> np.ndarray:
        outputs = self._session(model).run([model.output.name], {model.input.name: batch})
        return np.asarray(outputs[0])

    def served_version(self, model: ModelManifest) -> str:
        return model.triton_version

    def close(self) -> None:
        self._sessions.clear()
