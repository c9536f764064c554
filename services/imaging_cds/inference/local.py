"""In-process inference with onnxruntime on the ONNX files in ``triton_repo/`` (the embedded default)."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from imaging_cds.inference.backend import ROUTINE_PRIORITY, split_batch
from imaging_cds.inference.manifest import ModelManifest


class LocalOnnxBackend:
    """One onnxruntime session per model file, shared by threads (``InferenceSession.run`` is thread-safe)."""

    def __init__(self, threads: int = 0) -> None:
        self._threads = threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def _session(self, model: ModelManifest) -> ort.InferenceSession:
        key = str(model.onnx_path)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                options = ort.SessionOptions()
                if self._threads:
                    options.intra_op_num_threads = self._threads
                session = ort.InferenceSession(key, sess_options=options, providers=["CPUExecutionProvider"])
                self._sessions[key] = session
            return session

    def infer(self, model: ModelManifest, batch: np.ndarray, priority: int = ROUTINE_PRIORITY) -> np.ndarray:
        """Runs ``batch`` in chunks of ``max_batch`` like Triton would; ``priority`` has no meaning in-process."""
        session = self._session(model)
        outputs = [
            np.asarray(session.run([model.output.name], {model.input.name: chunk})[0])
            for chunk in split_batch(batch, model.max_batch)
        ]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def served_version(self, model: ModelManifest, *, retry: bool = True) -> str:
        return model.triton_version

    def close(self) -> None:
        self._sessions.clear()
