#!/usr/bin/env python3
"""Build the ONNX models in ``triton_repo/`` from code, deterministically.

    python scripts/build_models.py                      # writes triton_repo/lung-density/{1/model.onnx,config.pbtxt}
    python scripts/build_models.py --out /tmp/repo      # same files under another model repository
    python scripts/build_models.py --evaluate 0 1 2 3 4 # also measure the model against synthetic phantoms

Every run writes byte-identical files: the graph is assembled with ``onnx.helper`` from constants, with a fixed
producer name and version and no timestamps. A unit test rebuilds into a temporary folder and compares bytes with
the committed ``model.onnx``.

lung-density
------------
Input ``ct_hu`` INT16 [N, H, W] (N axial slices, HU already rescaled and clipped to [-1024, 3071]); output
``lung_candidate`` UINT8 [N, H, W], 1 where the voxel, after a 3x3 binomial in-plane smoothing (edge-padded, so the
output keeps the input size), is below -400 HU: air-like tissue, which includes the lungs, airways and the air around
the patient. The 3D connected-component post-processing that turns candidates into lungs is
``imaging_cds.analysis.lung_density.extract_lungs``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "triton_repo"

PRODUCER_NAME = "imaging-cds scripts/build_models.py"
PRODUCER_VERSION = "1.0.0"
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; onnxruntime 1.31 and Triton's onnxruntime backend load it

LUNG_DENSITY_MODEL = "lung-density"
LUNG_THRESHOLD_HU = -400.0
MAX_BATCH_SIZE = 64


def lung_density_graph() -> onnx.ModelProto:
    """The lung-candidate graph: Cast -> Unsqueeze -> Pad(edge) -> Conv 3x3 binomial -> Squeeze -> Less -> Cast."""
    binomial = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / np.float32(16.0)
    initializers = [
        numpy_helper.from_array(binomial.reshape(1, 1, 3, 3), name="smooth_kernel"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), name="channel_axis"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), name="edge_pads"),
        numpy_helper.from_array(np.array(LUNG_THRESHOLD_HU, dtype=np.float32), name="lung_threshold_hu"),
    ]
    nodes = [
        helper.make_node("Cast", ["ct_hu"], ["hu_float"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["hu_float", "channel_axis"], ["hu_nchw"], name="add_channel"),
        helper.make_node("Pad", ["hu_nchw", "edge_pads"], ["hu_padded"], name="pad_edges", mode="edge"),
        helper.make_node(
            "Conv",
            ["hu_padded", "smooth_kernel"],
            ["smoothed_nchw"],
            name="smooth_in_plane",
            kernel_shape=[3, 3],
            pads=[0, 0, 0, 0],
            strides=[1, 1],
        ),
        helper.make_node("Squeeze", ["smoothed_nchw", "channel_axis"], ["smoothed"], name="drop_channel"),
        helper.make_node("Less", ["smoothed", "lung_threshold_hu"], ["is_candidate"], name="threshold"),
        helper.make_node("Cast", ["is_candidate"], ["lung_candidate"], name="to_uint8", to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "lung_density",
        inputs=[helper.make_tensor_value_info("ct_hu", TensorProto.INT16, ["slices", "rows", "columns"])],
        outputs=[helper.make_tensor_value_info("lung_candidate", TensorProto.UINT8, ["slices", "rows", "columns"])],
        initializer=initializers,
        doc_string="Lung candidates: air-like voxels (< -400 HU after 3x3 in-plane smoothing). Not for clinical use.",
    )
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        doc_string="imaging-cds lung-density: classical threshold segmentation as an ONNX graph (no trained weights).",
    )
    model.model_version = 1
    onnx.checker.check_model(model, full_check=True)
    return model


LUNG_DENSITY_CONFIG = f"""\
name: "{LUNG_DENSITY_MODEL}"
backend: "onnxruntime"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{
    name: "ct_hu"
    data_type: TYPE_INT16
    dims: [ -1, -1 ]
  }}
]
output [
  {{
    name: "lung_candidate"
    data_type: TYPE_UINT8
    dims: [ -1, -1 ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
  priority_levels: 2
  default_priority_level: 2
}}
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
"""


def write_lung_density(out: Path) -> Path:
    """Write ``<out>/lung-density/1/model.onnx`` and ``config.pbtxt``; returns the model path."""
    model_dir = out / LUNG_DENSITY_MODEL
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    model_path = model_dir / "1" / "model.onnx"
    model_path.write_bytes(lung_density_graph().SerializeToString(deterministic=True))
    (model_dir / "config.pbtxt").write_text(LUNG_DENSITY_CONFIG, encoding="utf-8")
    return model_path


def evaluate_lung_density(model_path: Path, seeds: list[int]) -> str:
    """Run the model and post-processing on synthetic phantoms; a Markdown table of errors vs ground truth."""
    import onnxruntime as ort

    from imaging_cds.analysis.lung_density import extract_lungs, measure_lung_density
    from imaging_cds.sample.synthetic_ct import ground_truth, make_chest_ct

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rows = [
        "| seed | lung volume mL (truth) | volume error % | LAA-950 % (truth) | LAA-950 error pp "
        "| MLD error HU | P15 error HU |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed in seeds:
        hu, labels, spacing = make_chest_ct(seed)
        truth = ground_truth(hu, labels, spacing)
        started = time.perf_counter()
        candidate = np.concatenate(
            [
                session.run(["lung_candidate"], {"ct_hu": hu[i : i + MAX_BATCH_SIZE]})[0]
                for i in range(0, hu.shape[0], MAX_BATCH_SIZE)
            ]
        )
        inferred = time.perf_counter()
        measures = measure_lung_density(hu, extract_lungs(candidate, spacing), spacing)
        measured = time.perf_counter()
        volume_error = 100.0 * (measures.lung_volume_ml - truth["lung_volume_ml"]) / truth["lung_volume_ml"]
        rows.append(
            f"| {seed} | {measures.lung_volume_ml:.0f} ({truth['lung_volume_ml']:.0f}) | {volume_error:+.2f} "
            f"| {measures.laa950_percent:.2f} ({truth['laa950_percent']:.2f}) "
            f"| {measures.laa950_percent - truth['laa950_percent']:+.3f} "
            f"| {measures.mean_lung_density_hu - truth['mean_lung_density_hu']:+.2f} "
            f"| {measures.p15_hu - truth['p15_hu']:+.1f} |"
        )
        print(
            f"seed {seed}: inference {inferred - started:.2f} s, extract + measure {measured - inferred:.2f} s",
            file=sys.stderr,
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model repository root (default: triton_repo)")
    parser.add_argument(
        "--evaluate",
        type=int,
        nargs="*",
        metavar="SEED",
        help="also measure lung-density on these synthetic phantom seeds and print a table",
    )
    args = parser.parse_args(argv)
    model_path = write_lung_density(args.out)
    print(f"wrote {model_path}")
    if args.evaluate:
        print(evaluate_lung_density(model_path, args.evaluate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
