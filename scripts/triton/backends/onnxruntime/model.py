"""ONNX Runtime for Triton as a "Python-based backend" (CPU).

The PyPI Triton build (nvidia-pytriton 0.7.0, tritonserver 2.51) has only the Python backend. Triton loads
`<backend-directory>/onnxruntime/model.py` for every model whose config says `backend: "onnxruntime"` or
`platform: "onnxruntime_onnx"`, so the standard model repository runs unchanged here and on NVIDIA's image
(which has the native onnxruntime backend).

- runs `<model_dir>/<version>/<default_model_filename or model.onnx>` with onnxruntime on the CPU;
- honours the config's input/output names and datatypes (every config.pbtxt needs full input/output blocks:
  there is no auto-complete without the C++ backend);
- models with max_batch_size > 0: the requests of one dynamic batch are concatenated along axis 0 into ONE
  onnxruntime run and the outputs are split back (requests may carry different batch sizes). Requests that
  cannot be joined (different non-batch dims or different sets of inputs) run in separate groups;
- threads: config `parameters { key: "intra_op_thread_count" value: { string_value: "N" } }` (and
  `inter_op_thread_count`) as for the native backend; default intra-op threads = the CPUs this process may use
  (onnxruntime's own default, which the worker's in-process LocalOnnxBackend keeps) divided among the model's
  CPU instances (`instance_group` counts), so that several instances do not oversubscribe the cores. (On the
  2-core test machine lung-density's `count: 2` with one thread each overlaps one instance's tensor copies, which
  Triton and this stub make one core at a time, with the other's compute, and onnxruntime needs about a quarter
  less CPU for its light 3x3 convolution on one thread than on two; the nodule CAD, a few large windows per
  volume, keeps `count: 1` with both threads.)
- spinning: onnxruntime's intra-op threads busy-wait for work by default. Inside Triton they would take the cores
  that Triton's gRPC threads and this stub need to move the next request's tensors (on the 2-core test machine
  that cost about a quarter more CPU per volume), so they sleep instead unless the config sets
  `parameters { key: "allow_spinning" value: { string_value: "1" } }`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def _param(config: dict[str, Any], key: str) -> str | None:
    value = (config.get("parameters") or {}).get(key)
    if isinstance(value, dict):
        return value.get("string_value")
    return None


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _to_ort(arr: np.ndarray, ort_type: str | None) -> np.ndarray:
    if arr.dtype == np.object_:  # TYPE_STRING / BYTES: Triton gives bytes, onnxruntime wants str
        decode = np.vectorize(lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x), otypes=[object])
        return decode(arr)
    want = _ORT_TYPES.get(ort_type or "")
    if want is not None and want is not np.object_ and arr.dtype != want:
        return arr.astype(want)
    return arr


def _to_triton(arr: np.ndarray, dtype: Any) -> np.ndarray:
    if dtype == np.object_ or dtype is object:
        return np.vectorize(lambda x: x.encode("utf-8") if isinstance(x, str) else x, otypes=[object])(
            np.asarray(arr, dtype=object)
        )
    arr = np.asarray(arr)
    return arr if arr.dtype == dtype else arr.astype(dtype)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.config = json.loads(args["model_config"])
        self.name = self.config.get("name") or args.get("model_name", "?")
        filename = self.config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{self.name}: ONNX file {path} not found")
        self.max_batch_size = int(self.config.get("max_batch_size") or 0)

        self.session = ort.InferenceSession(
            path, sess_options=self._session_options(), providers=["CPUExecutionProvider"]
        )

        model_inputs = {i.name: i for i in self.session.get_inputs()}
        model_outputs = {o.name for o in self.session.get_outputs()}
        self.inputs: list[str] = []
        self.ort_types: dict[str, str] = {}
        for inp in self.config.get("input", []):
            name = inp["name"]
            if name not in model_inputs:
                raise pb_utils.TritonModelException(
                    f"{self.name}: config input '{name}' is not an input of {filename}: {sorted(model_inputs)}"
                )
            self.inputs.append(name)
            self.ort_types[name] = model_inputs[name].type
        self.outputs: dict[str, Any] = {}
        for out in self.config.get("output", []):
            name = out["name"]
            if name not in model_outputs:
                raise pb_utils.TritonModelException(
                    f"{self.name}: config output '{name}' is not an output of {filename}: {sorted(model_outputs)}"
                )
            self.outputs[name] = pb_utils.triton_string_to_numpy(out["data_type"])
        if not self.outputs:
            raise pb_utils.TritonModelException(f"{self.name}: config.pbtxt declares no output")
        self.output_names = list(self.outputs)

    def _session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        threads = _param(self.config, "intra_op_thread_count")
        opts.intra_op_num_threads = int(threads) if threads else max(1, _usable_cpus() // self._instances())
        opts.inter_op_num_threads = int(_param(self.config, "inter_op_thread_count") or 1)
        spinning = (_param(self.config, "allow_spinning") or "0").strip()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "1" else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return opts

    def _instances(self) -> int:
        """CPU instances of this model (each its own stub process, running at the same time)."""
        groups = self.config.get("instance_group") or [{}]
        return max(1, sum(int(g.get("count") or 1) for g in groups if g.get("kind", "KIND_CPU") == "KIND_CPU"))

    def _requested(self, request: Any) -> list[str]:
        try:
            names = list(request.requested_output_names())
        except AttributeError:
            names = []
        return [n for n in names if n in self.outputs] or self.output_names

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = _to_ort(tensor.as_numpy(), self.ort_types.get(name))
        return feeds

    def _respond(self, results: dict[str, np.ndarray], wanted: list[str]) -> Any:
        tensors = [pb_utils.Tensor(n, _to_triton(results[n], self.outputs[n])) for n in wanted]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, e: Exception) -> Any:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        feeds: list[dict[str, np.ndarray] | None] = []
        for i, request in enumerate(requests):
            try:
                feeds.append(self._feeds(request))
            except Exception as e:  # bad input in one request must not fail the others
                feeds.append(None)
                responses[i] = self._error(e)

        if self.max_batch_size > 0:
            # group joinable requests: same inputs, same non-batch dims and dtypes
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, f in enumerate(feeds):
                if f is None:
                    continue
                key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(f.items()))
                groups.setdefault(key, []).append(i)
            for idx in groups.values():
                self._run_batched(requests, feeds, responses, idx)
        else:
            for i, f in enumerate(feeds):
                if f is not None:
                    try:
                        out = self.session.run(self.output_names, f)
                        results = dict(zip(self.output_names, out, strict=True))
                        responses[i] = self._respond(results, self._requested(requests[i]))
                    except Exception as e:
                        responses[i] = self._error(e)
        return responses

    def _run_batched(self, requests: list[Any], feeds: list[Any], responses: list[Any], idx: list[int]) -> None:
        try:
            if len(idx) == 1:
                joined = feeds[idx[0]]
            else:
                joined = {n: np.concatenate([feeds[i][n] for i in idx], axis=0) for n in feeds[idx[0]]}
            out = dict(zip(self.output_names, self.session.run(self.output_names, joined), strict=True))
            sizes = [next(iter(feeds[i].values())).shape[0] if feeds[i] else 0 for i in idx]
            total = sum(sizes)
            for n, a in out.items():
                if len(idx) > 1 and (a.ndim == 0 or a.shape[0] != total):
                    raise ValueError(f"output '{n}' has shape {a.shape}, not batch-major with {total} rows")
            bounds = np.cumsum(sizes)[:-1]
            parts = {n: (np.split(a, bounds, axis=0) if len(idx) > 1 else [a]) for n, a in out.items()}
            for k, i in enumerate(idx):
                responses[i] = self._respond({n: p[k] for n, p in parts.items()}, self._requested(requests[i]))
        except Exception as e:
            if len(idx) > 1:  # e.g. a model with a fixed batch dimension: fall back to one run per request
                for i in idx:
                    self._run_batched(requests, feeds, responses, [i])
                return
            responses[idx[0]] = self._error(e)

    def finalize(self) -> None:
        self.session = None
