#!/usr/bin/env python3
"""Build the ONNX models in ``triton_repo/`` from code, deterministically.

    python scripts/build_models.py                      # writes triton_repo/{lung-density,lung-nodule-cad}/...
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

lung-nodule-cad
---------------
Input ``ct_hu`` INT16 [N, D, H, W]: N windows of a CT resampled to 2 mm isotropic voxels (the worker does that and
the tiling, ``imaging_cds.inference.windows``); output ``nodule_map`` UINT8 [N, 2, D, H, W]: the voxel's nodule
probability x 250 and the estimated nodule diameter in quarter millimetres (2 bytes per voxel, as the input). A
constructed, not trained, multi-scale blob detector: HU clipped to [-1000, -400] and scaled to [0, 1]; Gaussian
scale space at 1.3 and 2.1 mm on the 2 mm grid, and (after a grey-level opening that removes thin vessels and a
2x2x2 average) at 3.0, 4.3, 6.2 and 9.0 mm on a 4 mm grid, upsampled back (trilinear); at each scale the Hessian (finite
differences) and its largest and smallest eigenvalues in closed form; the scale-normalised blob response
``max(0, -largest) * sigma^2 * (largest / smallest)^2`` (bright in every direction, and about as curved along every
direction: a vessel's body, end or bifurcation scores low); the maximum over scales, with the diameter a
response-weighted average of the scales' diameters (3 x sigma); probability ``sigmoid(475 (response - 0.0545))``.
The slope and offset are a logistic regression of "candidate is a true nodule" on the response, over the candidates
of the training phantoms (seeds 100-119); held-out figures come from ``scripts/evaluate_nodule_cad.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
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
    """The lung-candidate graph: Cast -> Unsqueeze -> Pad(edge) -> Conv 1x3x3 binomial -> Squeeze -> Less -> Cast.

    The in-plane smoothing is a 3D convolution over (slices, rows, columns) with a 1x3x3 kernel, which computes the
    same sums as a 2D 3x3 one over a batch of slices. The 2D form was 2.4 times slower in onnxruntime at its default
    optimisation level (ORT_ENABLE_ALL, also Triton's): its NCHWc layout pass turns a 2D Conv into a convolution
    over blocks of 8 or 16 channels (16 with AVX-512), so a one-channel slice was computed and written 16 times wide
    and then reordered back (measured: 129 ms for 64 slices of 512 x 512 on one thread, of which 57 ms reordering;
    54 ms as 1x3x3, which that pass leaves alone, being 2D only)."""
    binomial = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / np.float32(16.0)
    initializers = [
        numpy_helper.from_array(binomial.reshape(1, 1, 1, 3, 3), name="smooth_kernel"),
        numpy_helper.from_array(np.array([0, 1], dtype=np.int64), name="batch_channel_axes"),
        numpy_helper.from_array(np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 1], dtype=np.int64), name="edge_pads"),
        numpy_helper.from_array(np.array(LUNG_THRESHOLD_HU, dtype=np.float32), name="lung_threshold_hu"),
    ]
    nodes = [
        helper.make_node("Cast", ["ct_hu"], ["hu_float"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["hu_float", "batch_channel_axes"], ["hu_ncdhw"], name="as_one_volume"),
        helper.make_node("Pad", ["hu_ncdhw", "edge_pads"], ["hu_padded"], name="pad_edges", mode="edge"),
        helper.make_node(
            "Conv",
            ["hu_padded", "smooth_kernel"],
            ["smoothed_ncdhw"],
            name="smooth_in_plane",
            kernel_shape=[1, 3, 3],
            pads=[0, 0, 0, 0, 0, 0],
            strides=[1, 1, 1],
        ),
        helper.make_node("Squeeze", ["smoothed_ncdhw", "batch_channel_axes"], ["smoothed"], name="as_slices"),
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
    return finished_model(
        graph, "imaging-cds lung-density: classical threshold segmentation as an ONNX graph (no trained weights)."
    )


def finished_model(graph: onnx.GraphProto, doc_string: str) -> onnx.ModelProto:
    """``graph`` as a model with our fixed producer, opset and IR version (no timestamps), checked in full."""
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        doc_string=doc_string,
    )
    model.model_version = 1
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------------------------------------------------
# lung-nodule-cad
# --------------------------------------------------------------------------------------------------------------------

LUNG_NODULE_CAD_MODEL = "lung-nodule-cad"
NODULE_SPACING_MM = 2.0
"""The worker resamples the CT to this isotropic spacing before it is cut into windows (the manifest says so too)."""
NODULE_HU_WINDOW = (-1000.0, -400.0)
"""HU are clipped to this window and mapped to [0, 1]: lung parenchyma (about -850 HU) is 0.25, ground glass
(-650 to -450 HU) 0.6-0.9 and anything solid 1, so subsolid nodules stand out almost as much as solid ones."""
NODULE_FINE_SCALES_MM = (1.3, 2.1)
"""Gaussian scales (sigma, mm) evaluated on the 2 mm grid: nodules of about 4-8 mm."""
NODULE_COARSE_SCALES_MM = (3.0, 4.3, 6.2, 9.0)
"""Scales evaluated on a 4 mm grid (2x2x2 average of the 2.1 mm smoothed volume): nodules of about 10-30 mm."""
NODULE_COARSE_OPENING_VOXELS = 3
"""Side (voxels of the 2 mm grid) of the cube of the grey-level opening applied before the coarse level; 0: none."""
NODULE_DIAMETER_PER_SIGMA = 3.0
"""Diameter (mm) of the sphere whose blob response peaks at scale sigma (mm); calibrated on training phantoms."""
NODULE_SCALE_WEIGHT_POWER = 4.0
NODULE_SPHERICITY_POWER = 2.0
"""The blob response is multiplied by (largest / smallest Hessian eigenvalue) to this power: vessel ends and
bifurcations, curved more across than along, are suppressed."""
"""The diameter is the average of the scales' diameters weighted by their blob response to this power."""
NODULE_LOGIT_SLOPE = 475.0
NODULE_LOGIT_OFFSET = 0.0545
"""probability = sigmoid(slope * (blob response - offset)): a logistic regression of "this candidate is a true
nodule" on the blob response of the candidates found in the training phantoms (seeds 100-119, 200 per scan)."""
NODULE_MAX_BATCH_SIZE = 4
NODULE_PROBABILITY_STEP = 250.0  # output channel 0: round(probability * 250)
NODULE_DIAMETER_STEP = 4.0  # output channel 1: round(diameter_mm * 4), i.e. quarter millimetres, at most 63.75 mm
_EPS = 1e-6


def _gaussian_kernel(sigma_voxels: float) -> npt.NDArray[np.float32]:
    """A sampled, normalised 1D Gaussian of +-3 sigma (at least one tap each side)."""
    radius = max(1, math.ceil(3.0 * sigma_voxels))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma_voxels) ** 2)
    return np.asarray(g / g.sum(), dtype=np.float32)


def _hessian_kernels() -> npt.NDArray[np.float32]:
    """Finite-difference second derivatives as a (6, 1, 3, 3, 3) Conv weight: zz, yy, xx, zy, zx, yx (in voxels)."""
    k = np.zeros((6, 1, 3, 3, 3), dtype=np.float32)
    second = np.array([1.0, -2.0, 1.0], dtype=np.float32)
    k[0, 0, :, 1, 1] = second
    k[1, 0, 1, :, 1] = second
    k[2, 0, 1, 1, :] = second
    cross = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]], dtype=np.float32) / np.float32(4.0)
    k[3, 0, :, :, 1] = cross
    k[4, 0, :, 1, :] = cross
    k[5, 0, 1, :, :] = cross
    return k


class _GraphBuilder:
    """Nodes and initializers of one ONNX graph, named deterministically in creation order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: npt.ArrayLike, hint: str, dtype: type = np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int = 1, **attrs: object) -> str:
        names = [self.name(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0] + "_op", **attrs))
        return names[0] if outputs == 1 else ",".join(names)

    def split(self, x: str, parts: int, hint: str) -> list[str]:
        return self.op("Split", [x], hint, outputs=parts, axis=1).split(",")

    def blur(self, x: str, sigma_voxels: float, hint: str) -> str:
        """Separable Gaussian blur of an (N, 1, D, H, W) tensor, edge-padded so the shape is kept."""
        kernel = _gaussian_kernel(sigma_voxels)
        r = len(kernel) // 2
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = len(kernel)
            pads = [0] * 10
            pads[2 + axis] = pads[7 + axis] = r
            padded = self.op("Pad", [x, self.const(pads, "pads", np.int64)], f"{hint}_pad", mode="edge")
            x = self.op(
                "Conv",
                [padded, self.const(kernel.reshape(shape), f"{hint}_kernel")],
                f"{hint}_blur",
                kernel_shape=shape[2:],
            )
        return x

    def scale_space(
        self, x: str, sigma_voxels: float, scales_mm: Sequence[float], spacing_mm: float, level: str
    ) -> tuple[list[str], str, float]:
        """Blob responses of ``x`` (already blurred by ``sigma_voxels``) at each scale (sigma in mm), each level
        blurred incrementally from the previous one; returns them, the last blurred tensor and its sigma (voxels)."""
        responses = []
        for s_mm in scales_mm:
            s = s_mm / spacing_mm
            x = self.blur(x, math.sqrt(s * s - sigma_voxels * sigma_voxels), f"{level}{s_mm:g}")
            sigma_voxels = s
            responses.append(self.blob_response(x, s, f"{level}{s_mm:g}"))
        return responses, x, sigma_voxels

    def blob_response(self, smoothed: str, sigma_voxels: float, hint: str) -> str:
        """Scale-normalised blob response ``max(0, -largest Hessian eigenvalue) * sigma^2`` of an (N, 1, D, H, W)
        tensor: positive only where the intensity curves down in every direction (a bright blob), zero along a
        bright tube (one eigenvalue ~0) or a plate. Eigenvalues of the symmetric 3x3 Hessian in closed form
        (the trigonometric solution of the characteristic cubic), with elementwise ops only."""
        pads = self.const([0, 0, 1, 1, 1, 0, 0, 1, 1, 1], "pads", np.int64)
        padded = self.op("Pad", [smoothed, pads], f"{hint}_hpad", mode="edge")
        weight = _hessian_kernels() * np.float32(sigma_voxels**2)
        hessian = self.op(
            "Conv", [padded, self.const(weight, f"{hint}_hessian")], f"{hint}_hessian", kernel_shape=[3, 3, 3]
        )
        a, b, c, d, e, f = self.split(hessian, 6, f"{hint}_h")
        three = self.const(3.0, "three")
        q = self.op("Div", [self.op("Sum", [a, b, c], f"{hint}_trace"), three], f"{hint}_q")
        am, bm, cm = (self.op("Sub", [v, q], f"{hint}_shift") for v in (a, b, c))
        dd, ee, ff = (self.op("Mul", [v, v], f"{hint}_sq") for v in (d, e, f))
        p1 = self.op("Sum", [dd, ee, ff], f"{hint}_p1")
        two = self.const(2.0, "two")
        diag2 = self.op("Sum", [self.op("Mul", [v, v], f"{hint}_sq") for v in (am, bm, cm)], f"{hint}_diag2")
        p2 = self.op("Add", [diag2, self.op("Mul", [p1, two], f"{hint}_p1x2")], f"{hint}_p2")
        p = self.op(
            "Add",
            [
                self.op("Sqrt", [self.op("Div", [p2, self.const(6.0, "six")], f"{hint}_p2n")], f"{hint}_psqrt"),
                self.const(_EPS, "eps"),
            ],
            f"{hint}_p",
        )
        # det(H - qI) = am (bm cm - f^2) - d (d cm - f e) + e (d f - bm e)
        t1 = self.op(
            "Mul", [am, self.op("Sub", [self.op("Mul", [bm, cm], f"{hint}_m"), ff], f"{hint}_s")], f"{hint}_t1"
        )
        t2 = self.op(
            "Mul",
            [
                d,
                self.op(
                    "Sub", [self.op("Mul", [d, cm], f"{hint}_m"), self.op("Mul", [f, e], f"{hint}_m")], f"{hint}_s"
                ),
            ],
            f"{hint}_t2",
        )
        t3 = self.op(
            "Mul",
            [
                e,
                self.op(
                    "Sub", [self.op("Mul", [d, f], f"{hint}_m"), self.op("Mul", [bm, e], f"{hint}_m")], f"{hint}_s"
                ),
            ],
            f"{hint}_t3",
        )
        det = self.op("Add", [self.op("Sub", [t1, t2], f"{hint}_s"), t3], f"{hint}_det")
        p3 = self.op("Mul", [self.op("Mul", [p, p], f"{hint}_m"), p], f"{hint}_p3")
        r = self.op("Div", [det, self.op("Mul", [p3, two], f"{hint}_m")], f"{hint}_r")
        r = self.op("Clip", [r, self.const(-1.0, "minus_one"), self.const(1.0, "one")], f"{hint}_rclip")
        phi = self.op("Div", [self.op("Acos", [r], f"{hint}_acos"), three], f"{hint}_phi")
        two_p = self.op("Mul", [p, two], f"{hint}_2p")
        largest = self.op(
            "Add", [q, self.op("Mul", [two_p, self.op("Cos", [phi], f"{hint}_cos")], f"{hint}_m")], f"{hint}_lmax"
        )
        blob = self.op("Relu", [self.op("Neg", [largest], f"{hint}_neg")], f"{hint}_blob")
        if NODULE_SPHERICITY_POWER == 0.0:
            return blob
        # sphericity: largest / smallest eigenvalue, 1 for a sphere, lower for a vessel's end or a bifurcation
        phi_low = self.op("Add", [phi, self.const(2.0 * math.pi / 3.0, "two_thirds_pi")], f"{hint}_phi3")
        smallest = self.op(
            "Add", [q, self.op("Mul", [two_p, self.op("Cos", [phi_low], f"{hint}_cos")], f"{hint}_m")], f"{hint}_lmin"
        )
        ratio = self.op(
            "Div",
            [largest, self.op("Sub", [smallest, self.const(_EPS, "eps")], f"{hint}_lmin_eps")],
            f"{hint}_ratio",
        )
        ratio = self.op("Clip", [ratio, self.const(0.0, "zero"), self.const(1.0, "one")], f"{hint}_ratio01")
        if NODULE_SPHERICITY_POWER == 2.0:
            ratio = self.op("Mul", [ratio, ratio], f"{hint}_ratio_sq")
        elif NODULE_SPHERICITY_POWER != 1.0:
            ratio = self.op("Pow", [ratio, self.const(NODULE_SPHERICITY_POWER, "sph_power")], f"{hint}_ratio_pow")
        return self.op("Mul", [blob, ratio], f"{hint}_spherical_blob")


def lung_nodule_cad_graph() -> onnx.ModelProto:
    """The nodule-CAD graph: multi-scale Hessian blob detector on a 2 mm isotropic HU window.

    Input ``ct_hu`` INT16 [N, D, H, W]; output ``nodule_map`` UINT8 [N, 2, D, H, W]: channel 0 the nodule probability
    of each voxel x 250, channel 1 the estimated nodule diameter in quarter millimetres.
    """
    g = _GraphBuilder()
    low, high = NODULE_HU_WINDOW
    hu = g.op("Cast", ["ct_hu"], "hu_float", to=TensorProto.FLOAT)
    clipped = g.op("Clip", [hu, g.const(low, "hu_low"), g.const(high, "hu_high")], "hu_window")
    scaled = g.op(
        "Div",
        [g.op("Sub", [clipped, g.const(low, "hu_low")], "hu_shift"), g.const(high - low, "hu_scale")],
        "intensity",
    )
    x = g.op("Unsqueeze", [scaled, g.const([1], "channel_axis", np.int64)], "intensity_nc")

    responses, smoothed, sigma_prev = g.scale_space(x, 0.0, NODULE_FINE_SCALES_MM, NODULE_SPACING_MM, "fine")
    if NODULE_COARSE_OPENING_VOXELS > 1:
        # grey-level opening (erosion then dilation by a cube) before the coarse level: vessels thinner than the
        # cube vanish, blobs larger than it keep their shape, so a large nodule is not joined to its vessels
        k = NODULE_COARSE_OPENING_VOXELS
        pool = {"kernel_shape": [k, k, k], "strides": [1, 1, 1], "pads": [k // 2] * 6}
        negated = g.op("Neg", [x], "negated")
        eroded = g.op("Neg", [g.op("MaxPool", [negated], "erode_max", **pool)], "eroded")
        opened = g.op("MaxPool", [eroded], "opened", **pool)
        smoothed = g.blur(opened, sigma_prev, "opened_blur")
    coarse = g.op("AveragePool", [smoothed], "coarse", kernel_shape=[2, 2, 2], strides=[2, 2, 2], ceil_mode=1)
    coarse_spacing = 2.0 * NODULE_SPACING_MM
    # effective sigma after the 2x2x2 average: the box adds a variance of (spacing / 2)^2 per axis
    sigma_prev = math.sqrt((sigma_prev * NODULE_SPACING_MM) ** 2 + (NODULE_SPACING_MM / 2.0) ** 2) / coarse_spacing
    coarse_responses, _, _ = g.scale_space(coarse, sigma_prev, NODULE_COARSE_SCALES_MM, coarse_spacing, "coarse")
    stacked_coarse = g.op("Concat", coarse_responses, "coarse_stack", axis=1)
    fine_shape = g.op("Shape", [responses[0]], "fine_shape")
    sizes = g.op(
        "Concat",
        [
            g.op("Slice", [fine_shape, g.const([0], "i0", np.int64), g.const([1], "i1", np.int64)], "batch_dim"),
            g.const([len(coarse_responses)], "coarse_channels", np.int64),
            g.op("Slice", [fine_shape, g.const([2], "i2", np.int64), g.const([5], "i5", np.int64)], "spatial_dims"),
        ],
        "upsample_sizes",
        axis=0,
    )
    upsampled = g.op(
        "Resize",
        [stacked_coarse, "", "", sizes],
        "coarse_up",
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    stack = g.op("Concat", [*responses, upsampled], "scale_stack", axis=1)

    best = g.op("ReduceMax", [stack], "best_response", axes=[1], keepdims=0)
    scales = np.array([*NODULE_FINE_SCALES_MM, *NODULE_COARSE_SCALES_MM], dtype=np.float32)
    diameters = g.const((scales * NODULE_DIAMETER_PER_SIGMA).reshape(1, -1, 1, 1, 1), "scale_diameters")
    squared = g.op("Mul", [stack, stack], "scale_response_sq")
    weights = g.op("Mul", [squared, squared], "scale_weights")  # response ** NODULE_SCALE_WEIGHT_POWER (4)
    axis1 = g.const([1], "scale_axis", np.int64)
    weighted = g.op("ReduceSum", [g.op("Mul", [weights, diameters], "weighted_d"), axis1], "sum_wd", keepdims=0)
    total = g.op("Add", [g.op("ReduceSum", [weights, axis1], "sum_w", keepdims=0), g.const(1e-12, "tiny")], "sum_w_eps")
    diameter = g.op("Div", [weighted, total], "diameter_mm")

    logit = g.op(
        "Mul",
        [
            g.op("Sub", [best, g.const(NODULE_LOGIT_OFFSET, "logit_offset")], "centred"),
            g.const(NODULE_LOGIT_SLOPE, "logit_slope"),
        ],
        "logit",
    )
    probability = g.op("Sigmoid", [logit], "probability")

    def quantise(value: str, step: float, top: float, hint: str) -> str:
        q = g.op("Mul", [value, g.const(step, f"{hint}_step")], f"{hint}_scaled")
        q = g.op(
            "Round",
            [g.op("Clip", [q, g.const(0.0, "zero"), g.const(top, f"{hint}_top")], f"{hint}_clip")],
            f"{hint}_round",
        )
        q = g.op("Cast", [q], f"{hint}_u8", to=TensorProto.UINT8)
        return g.op("Unsqueeze", [q, g.const([1], "channel_axis", np.int64)], f"{hint}_nc")

    p8 = quantise(probability, NODULE_PROBABILITY_STEP, NODULE_PROBABILITY_STEP, "p")
    d8 = quantise(diameter, NODULE_DIAMETER_STEP, 255.0, "d")
    g.nodes.append(helper.make_node("Concat", [p8, d8], ["nodule_map"], name="nodule_map_op", axis=1))

    graph = helper.make_graph(
        g.nodes,
        "lung_nodule_cad",
        inputs=[helper.make_tensor_value_info("ct_hu", TensorProto.INT16, ["windows", "depth", "rows", "columns"])],
        outputs=[
            helper.make_tensor_value_info("nodule_map", TensorProto.UINT8, ["windows", 2, "depth", "rows", "columns"])
        ],
        initializer=g.initializers,
        doc_string=(
            "Pulmonary nodule candidates on a 2 mm isotropic CT window: multi-scale Hessian blob response "
            "(-largest eigenvalue, scale-normalised), probability x250 and diameter in 0.25 mm. Not for clinical use."
        ),
    )
    return finished_model(
        graph, "imaging-cds lung-nodule-cad: constructed multi-scale blob detector (no trained weights)."
    )


def triton_config(
    name: str,
    max_batch: int,
    input_dims: str,
    output: str,
    output_dims: str,
    *,
    instances: int = 1,
    queue_delay_us: int = 2000,
) -> str:
    """``config.pbtxt`` of one of our models: the onnxruntime backend, INT16 ``ct_hu`` in, one UINT8 output, dynamic
    batching with two priority levels (STAT requests overtake routine ones), ``instances`` CPU instances (their
    onnxruntime threads share the cores: scripts/triton/backends/onnxruntime/onnxruntime_backend.cc). The batcher
    waits up to ``queue_delay_us`` for more requests when a batch is not full; what is already queued is joined
    regardless.

    ``enable_mem_pattern: 0`` (a parameter of NVIDIA's onnxruntime backend too): onnxruntime's memory pattern plans
    one block per input shape, and dynamic batches come in many shapes (16 slices, 12, 32...). Each new shape
    re-planned and grew the arena: measured in-process on lung-density, a 32-slice batch after 16-slice ones took
    155,000 page faults and 343 ms instead of 55 ms; without the pattern no faults after the first of each size."""
    return f"""\
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{
    name: "ct_hu"
    data_type: TYPE_INT16
    dims: [ {input_dims} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_UINT8
    dims: [ {output_dims} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
  priority_levels: 2
  default_priority_level: 2
}}
instance_group [
  {{
    kind: KIND_CPU
    count: {instances}
  }}
]
parameters {{ key: "enable_mem_pattern" value: {{ string_value: "0" }} }}
"""


# lung-density is light (a 3x3 convolution and a threshold per voxel) and its requests are whole slabs of slices
# (TritonBackend sends about 8 MiB each): two single-threaded instances each run a slab while the next one arrives,
# and a slab needs no wait for company. On the 2-core test machine, bench/inference.py over gRPC: 0.34 s for 300
# slices with two instances, 0.41 s with one instance on two threads (same hour, 1x3x3 graph, 2026-12-07; with the
# old 2D graph the gRPC ratio went from about 0.72 to 0.76-0.80 the same way).
LUNG_DENSITY_CONFIG = triton_config(
    LUNG_DENSITY_MODEL, MAX_BATCH_SIZE, "-1, -1", "lung_candidate", "-1, -1", instances=2, queue_delay_us=0
)
LUNG_NODULE_CAD_CONFIG = triton_config(
    LUNG_NODULE_CAD_MODEL, NODULE_MAX_BATCH_SIZE, "-1, -1, -1", "nodule_map", "2, -1, -1, -1"
)


def write_model(out: Path, name: str, graph: onnx.ModelProto, config: str) -> Path:
    """Write ``<out>/<name>/1/model.onnx`` and ``config.pbtxt``; returns the model path."""
    model_dir = out / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    model_path = model_dir / "1" / "model.onnx"
    model_path.write_bytes(graph.SerializeToString(deterministic=True))
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    return model_path


def write_lung_density(out: Path) -> Path:
    return write_model(out, LUNG_DENSITY_MODEL, lung_density_graph(), LUNG_DENSITY_CONFIG)


def write_lung_nodule_cad(out: Path) -> Path:
    return write_model(out, LUNG_NODULE_CAD_MODEL, lung_nodule_cad_graph(), LUNG_NODULE_CAD_CONFIG)


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
    print(f"wrote {write_lung_nodule_cad(args.out)}")
    if args.evaluate:
        print(evaluate_lung_density(model_path, args.evaluate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
