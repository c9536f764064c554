#!/usr/bin/env python3
"""Inference benchmark: every model in ``triton_repo/`` on a 300-slice sample study, Triton over gRPC against
in-process onnxruntime, in the same run.

    .venv/bin/python bench/inference.py [--slices 300] [--repeats 5] [--model-repository triton_repo]

Starts its own Triton (``scripts/sandbox up --only triton``) on loopback, serving the same model repository the
local backend reads. The volume is the synthetic chest CT that ``imaging-cds sample-study`` writes (HU, int16,
512x512 slices), converted to the model's input datatype. Each model's whole volume goes through the worker's
backends exactly as the worker calls them (``TritonBackend.infer`` / ``LocalOnnxBackend.infer``): on Triton as
requests of about 8 MiB within max_batch_size, several in flight; locally in runs of max_batch_size. The baseline
is local onnxruntime on the same file: ``ratio`` = local seconds / Triton seconds (1.0: no overhead; goal >= 0.8,
transport and batching overhead no more than a quarter of the work). Times are medians of ``--repeats`` interleaved
runs after one warm-up each; outputs are compared too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY  # noqa: E402
from imaging_cds.inference.local import LocalOnnxBackend  # noqa: E402
from imaging_cds.inference.manifest import ModelManifest, load_manifests  # noqa: E402
from imaging_cds.inference.triton import TritonBackend  # noqa: E402
from imaging_cds.sample.synthetic_ct import make_chest_ct  # noqa: E402

SANDBOX = REPO / "scripts" / "sandbox"
SANDBOX_UP = [sys.executable, str(SANDBOX), "up", "--only", "triton"]
GOAL = 0.8
_NUMPY = {"INT16": np.int16, "UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16, "INT32": np.int32}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imaging-cds-bench-inference-") as tmp:
        state = Path(tmp) / "sandbox"
        up = subprocess.run(
            [*SANDBOX_UP, "--state-dir", str(state), "--json", "--model-repository", str(args.model_repository)],
            capture_output=True,
            text=True,
            check=False,
        )
        if up.returncode != 0:
            print(up.stderr, file=sys.stderr)
            return 1
        try:
            url = json.loads(up.stdout.strip().splitlines()[-1])["IMAGING_CDS_TRITON_GRPC_URL"]
            report = run(url, args.model_repository, args.slices, args.repeats, args.seed)
        finally:
            subprocess.run([sys.executable, str(SANDBOX), "down", "--state-dir", str(state)], check=False)
    print(json.dumps(report, indent=2))
    return 0


def run(url: str, repository: Path, slices: int, repeats: int, seed: int) -> dict[str, object]:
    hu, _labels, _spacing = make_chest_ct(seed=seed, n_slices=slices)
    triton, local = TritonBackend(url), LocalOnnxBackend()
    results = []
    try:
        for model in load_manifests(repository):
            volume = np.ascontiguousarray(hu.astype(_NUMPY[model.input.datatype]))
            results.append(measure(model, volume, triton, local, repeats))
    finally:
        triton.close()
    return {
        "benchmark": "inference",
        "baseline": "in-process onnxruntime on the same ONNX file, same volume, same run",
        "ratio": "local_s / triton_s",
        "goal": f">= {GOAL}",
        "slices": slices,
        "megabytes_in": round(hu.nbytes / 1e6, 1),
        "cpus": os.cpu_count(),
        "repeats": repeats,
        "models": results,
    }


def measure(
    model: ModelManifest, volume: np.ndarray, triton: TritonBackend, local: LocalOnnxBackend, repeats: int
) -> dict[str, object]:
    triton.served_version(model)
    remote = triton.infer(model, volume)  # warm-up: connection, model, allocations
    here = local.infer(model, volume)
    local_times, triton_times = [], []
    for _ in range(max(1, repeats)):  # interleaved, so a noisy neighbour slows both alike
        local_times.append(_seconds(lambda: local.infer(model, volume)))
        triton_times.append(_seconds(lambda: triton.infer(model, volume)))
    local_s, triton_s = statistics.median(local_times), statistics.median(triton_times)
    return {
        "model": model.name,
        "version": model.version,
        "max_batch_size": model.max_batch,
        "slices_per_request": triton.items_per_request(model, volume),
        "requests_per_volume": -(-len(volume) // triton.items_per_request(model, volume)),
        "max_in_flight": triton.options.max_in_flight,
        "triton_s": round(triton_s, 4),
        "local_s": round(local_s, 4),
        "ratio": round(local_s / triton_s, 3),
        "meets_goal": local_s / triton_s >= GOAL,
        "outputs_identical": bool(np.array_equal(remote, here)),
    }


def _seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
