#!/usr/bin/env python3
"""Inference benchmark: every model in ``triton_repo/`` on a 300-slice sample study, Triton over gRPC against
in-process onnxruntime, in the same run.

    .venv/bin/python bench/inference.py [--slices 300] [--repeats 7] [--model-repository triton_repo]

Starts its own Triton (``scripts/sandbox up --only triton``) on loopback, serving the same model repository the
local backend reads. The volume is the synthetic chest CT that ``imaging-cds sample-study`` writes (HU, int16,
512x512 slices), converted to the model's input datatype; a volume model (``preprocessing`` in its manifest) gets
it resampled once and then its sliding windows run, as the worker does (``imaging_cds.inference.windows``).

Each model's input goes through the worker's backends exactly as the worker calls them (``TritonBackend.infer`` /
``LocalOnnxBackend.infer``): on Triton as requests of about 8 MiB within max_batch_size, several in flight; locally
in runs of max_batch_size. Triton is measured with both transports of ``TritonBackend``: tensors inside the gRPC
messages (``grpc``, the default) and tensors in POSIX shared memory registered with Triton (``system-shared-memory``,
``IMAGING_CDS_TRITON_SHARED_MEMORY=system``; Triton on the same host). The baseline is local onnxruntime on the same
file: ``ratio`` = local seconds / Triton seconds (1.0: no overhead; goal >= 0.8, transport and batching overhead no
more than a quarter of the work). The three are interleaved, one warm-up each; times are medians with min and max
over ``--repeats`` runs, and ``pair_ratio`` gives the spread of the ratio run by run (a noisy neighbour on a shared
machine slows one run of each alike). ``cpu_s`` is CPU time per run (medians): the benchmark process for local and
for Triton's client side, Triton's processes (the server, where the sandbox's native onnxruntime backend runs the
model, and any backend stub processes) for its server side; on a machine that shares its cores it says where the
work went better than wall-clock time. Outputs are compared too.

``--transport-only`` measures what moving the tensors costs by itself: it serves a copy of the repository in which
each model's graph is replaced by one ``Cast`` of its input to its output datatype (same names, datatypes and
shapes: models whose output has the input's shape; others are left out and listed). Triton's seconds are then the
floor under the real model's, on each transport; its ``ratio`` means nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY  # noqa: E402
from imaging_cds.inference.backend import InferenceBackend  # noqa: E402
from imaging_cds.inference.local import LocalOnnxBackend  # noqa: E402
from imaging_cds.inference.manifest import ModelManifest, load_manifests  # noqa: E402
from imaging_cds.inference.triton import TritonBackend, TritonOptions  # noqa: E402
from imaging_cds.sample.synthetic_ct import make_chest_ct  # noqa: E402
from tests.services import SandboxError, sandbox  # noqa: E402

GOAL = 0.8
TRANSPORTS = ("grpc", "system-shared-memory")
_NUMPY = {"INT16": np.int16, "UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16, "INT32": np.int32}
_TICKS = os.sysconf("SC_CLK_TCK")

Workload = Callable[[InferenceBackend], np.ndarray]


@dataclass
class Runs:
    """Wall-clock and CPU seconds of the runs of one backend on one model."""

    seconds: list[float] = field(default_factory=list)
    client_cpu_s: list[float] = field(default_factory=list)
    server_cpu_s: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> dict[str, float]:
        return {"median": _round(self.median()), "min": _round(min(self.seconds)), "max": _round(max(self.seconds))}


class TritonProcesses:
    """CPU time of the Triton server and its children (Python backend stubs, if a model uses one), from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> float:
        return sum(_process_cpu_s(p) for p in (self.pid, *_children(self.pid)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument(
        "--transport-only", action="store_true", help="serve Cast-only stand-ins of the models: the cost of the tensors"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imaging-cds-bench-inference-") as tmp:
        repository: Path = args.model_repository
        left_out: dict[str, str] = {}
        if args.transport_only:
            repository, left_out = transport_probes(args.model_repository, Path(tmp) / "probes")
        options = ("--only", "triton", "--model-repository", str(repository))
        try:
            with sandbox(Path(tmp) / "sandbox", *options) as info:
                server = TritonProcesses(int(info["pids"]["triton"]))
                url = info["IMAGING_CDS_TRITON_GRPC_URL"]
                report = run(url, server, repository, args.slices, args.repeats, args.seed)
        except SandboxError as err:
            print(err, file=sys.stderr)
            return 1
    if args.transport_only:
        report["transport_only"] = (
            "each model's graph replaced by a Cast of its input to its output datatype, same names, datatypes and "
            "shapes: Triton's seconds are what the tensors cost by themselves; ratio means nothing here"
        )
        report["left_out"] = left_out
    print(json.dumps(report, indent=2))
    return 0


def transport_probes(repository: Path, out: Path) -> tuple[Path, dict[str, str]]:
    """A copy of ``repository`` whose models only cast their input to their output; the models whose output shape
    is not their input's are left out (name -> why)."""
    shutil.copytree(repository, out)
    left_out = {}
    for model in load_manifests(out):
        graph = onnx.load(str(model.onnx_path))
        (given,), (answer,) = graph.graph.input, graph.graph.output
        if _dims(given) != _dims(answer):
            left_out[model.name] = f"output shape {_dims(answer)} is not the input's {_dims(given)}"
            shutil.rmtree(model.onnx_path.parent.parent)
            continue
        cast = helper.make_node("Cast", [given.name], [answer.name], to=answer.type.tensor_type.elem_type)
        probe = helper.make_model(
            helper.make_graph([cast], f"{model.name}-transport-probe", [given], [answer]),
            opset_imports=list(graph.opset_import),
            ir_version=graph.ir_version,
        )
        onnx.save(probe, str(model.onnx_path))
    return out, left_out


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def run(url: str, server: TritonProcesses, repository: Path, slices: int, repeats: int, seed: int) -> dict[str, object]:
    hu, _labels, spacing = make_chest_ct(seed=seed, n_slices=slices)
    local = LocalOnnxBackend()
    tritons = {t: TritonBackend(url, options=TritonOptions(shared_memory=_setting(t))) for t in TRANSPORTS}
    results = []
    try:
        for model in load_manifests(repository):
            workload, described = _workload(model, hu, spacing)
            results.append(measure(model, workload, described, local, tritons, server, repeats))
    finally:
        for triton in tritons.values():
            triton.close()
    return {
        "benchmark": "inference",
        "baseline": "in-process onnxruntime (LocalOnnxBackend, as the worker runs it) on the same ONNX file, same "
        "volume, same run",
        "ratio": "local_s / triton_s (medians)",
        "goal": f">= {GOAL}",
        "transports": {
            "grpc": "tensors inside the gRPC messages (IMAGING_CDS_TRITON_SHARED_MEMORY=none, the default)",
            "system-shared-memory": "tensors in POSIX shared memory registered with Triton, metadata over gRPC "
            "(IMAGING_CDS_TRITON_SHARED_MEMORY=system; Triton on the same host)",
        },
        "slices": slices,
        "megabytes_in": round(hu.nbytes / 1e6, 1),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "repeats": repeats,
        "models": results,
    }


def measure(
    model: ModelManifest,
    workload: Workload,
    described: str,
    local: LocalOnnxBackend,
    tritons: dict[str, TritonBackend],
    server: TritonProcesses,
    repeats: int,
) -> dict[str, object]:
    """Interleaved runs of ``workload`` on local onnxruntime and on each Triton transport, after one warm-up."""
    tritons[TRANSPORTS[0]].served_version(model)
    reference = workload(local)
    identical = {t: bool(np.array_equal(workload(b), reference)) for t, b in tritons.items()}
    local_runs, triton_runs = Runs(), {t: Runs() for t in tritons}
    for _ in range(max(1, repeats)):  # interleaved, so a noisy neighbour slows all alike
        _timed(workload, local, local_runs, server)
        for transport, backend in tritons.items():
            _timed(workload, backend, triton_runs[transport], server)
    grpc = tritons[TRANSPORTS[0]]
    return {
        "model": model.name,
        "version": model.version,
        "input": described,
        "max_batch_size": model.max_batch,
        "max_in_flight": grpc.options.max_in_flight,
        "request_bytes": grpc.options.request_bytes,
        "local": {"seconds": local_runs.spread(), "cpu_s": _round(statistics.median(local_runs.client_cpu_s))},
        "triton": {
            transport: _triton_figures(local_runs, runs, tritons[transport].transport, identical[transport])
            for transport, runs in triton_runs.items()
        },
    }


def _triton_figures(local: Runs, runs: Runs, used: str, identical: bool) -> dict[str, object]:
    """One transport's figures; ``transport`` is what was actually used (a failed shared-memory registration
    falls back to gRPC, and says so here)."""
    ratio = local.median() / runs.median()
    pairs = [a / b for a, b in zip(local.seconds, runs.seconds, strict=True)]
    return {
        "transport": used,
        "seconds": runs.spread(),
        "ratio": round(ratio, 3),
        "pair_ratio": {
            "median": round(statistics.median(pairs), 3),
            "min": round(min(pairs), 3),
            "max": round(max(pairs), 3),
        },
        "meets_goal": ratio >= GOAL,
        "cpu_s": {
            "client": _round(statistics.median(runs.client_cpu_s)),
            "server": _round(statistics.median(runs.server_cpu_s)),
        },
        "outputs_identical": identical,
    }


def _workload(model: ModelManifest, hu: np.ndarray, spacing: tuple[float, float, float]) -> tuple[Workload, str]:
    """What the worker sends the model: the slices for a slice model; for a volume model the resampled volume's
    sliding windows (resampled once here: the same for both backends)."""
    volume = np.ascontiguousarray(hu.astype(_NUMPY[model.input.datatype]))
    if model.preprocessing is None:
        return (lambda backend: backend.infer(model, volume)), f"{len(volume)} slices {list(volume.shape)}"
    from imaging_cds.imaging.volume import CtVolume
    from imaging_cds.inference.windows import resample, run_windows

    ct = CtVolume("bench", "bench", hu, spacing, (0.0, 0.0, 0.0), tuple(f"bench#{i}" for i in range(len(hu))))
    resampled, _grid = resample(ct, model.preprocessing)
    window = model.preprocessing.window

    def windows(backend: InferenceBackend) -> np.ndarray:
        return run_windows(resampled, model, window, backend)[0]

    return windows, f"{len(hu)} slices resampled to {list(resampled.shape)}, sliding windows of {list(window.size)}"


def _timed(workload: Workload, backend: InferenceBackend, runs: Runs, server: TritonProcesses) -> None:
    client, served = _self_cpu_s(), server.cpu_s()
    started = time.perf_counter()
    workload(backend)
    runs.seconds.append(time.perf_counter() - started)
    runs.client_cpu_s.append(_self_cpu_s() - client)
    runs.server_cpu_s.append(server.cpu_s() - served)


def _setting(transport: str) -> str:
    return "system" if transport == "system-shared-memory" else "none"


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except FileNotFoundError:
        return []


def _round(seconds: float) -> float:
    return round(seconds, 4)


if __name__ == "__main__":
    sys.exit(main())
