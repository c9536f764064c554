"""Models a hospital might bring: tiny ONNX models made with ``onnx.helper``, written as model folders.

``toy-slice-classifier``: input ``ct_hu`` INT16 [N, H, W], output ``probability`` FP32 [N, 1] = sigmoid(mean HU of
the slice / 1000 + 0.5).

``toy-segmenter``: input ``ct_hu`` INT16 [N, H, W], output ``labels`` UINT8 [N, H, W]: 1 where HU > 300
(bone-like), 2 where HU < -500 (air-like), else 0. Its manifest charts label 1 as bone structure and label 2 as a
made-up test-fixture region, with volume, mean and standard deviation.

Nothing in imaging-cds knows them: they exist only as the folders this module writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TOY_MODEL = "toy-slice-classifier"
TOY_MAX_BATCH = 8
TOY_SEGMENTER = "toy-segmenter"
SEGMENTER_BONE_HU = 300  # label 1 above this
SEGMENTER_AIR_HU = -500  # label 2 below this

CONFIG = """name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
version_policy: {{ specific: {{ versions: [ {version} ] }} }}
input [
  {{
    name: "ct_hu"
    data_type: TYPE_INT16
    dims: [ -1, -1 ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: {output_type}
    dims: [ {output_dims} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 1000
  priority_levels: 2
  default_priority_level: 2
}}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""

MANIFEST = """name: {name}
title: Toy slice classifier (test fixture)
version: 0.1.0
task: classification
triton:
  model_name: {name}
  model_version: "2"
  max_batch_size: {max_batch}
  input: {{name: ct_hu, datatype: INT16}}
  output: {{name: probability, datatype: FP32}}
selection:
  modalities: [CT]
  body_parts: [CHEST]
  min_instances: 10
  max_slice_spacing_mm: 5.0
# What the output means, so the worker charts it with no code of its own: a made-up finding of a test fixture.
classification:
  codes:
    - {{system: "https://example.org/fhir/CodeSystem/test-fixture", code: toy-finding, display: Toy finding}}
  threshold: 0.5
  aggregate: max
"""


def toy_classifier() -> onnx.ModelProto:
    scale = numpy_helper.from_array(np.array(1.0 / 1000.0, dtype=np.float32), name="scale")
    offset = numpy_helper.from_array(np.array(0.5, dtype=np.float32), name="offset")
    nodes = [
        helper.make_node("Cast", ["ct_hu"], ["hu"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["hu"], ["mean"], axes=[1, 2], keepdims=1),  # [N, 1, 1]
        helper.make_node("Squeeze", ["mean", "squeeze_axes"], ["mean_n1"]),
        helper.make_node("Mul", ["mean_n1", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), name="squeeze_axes")
    graph = helper.make_graph(
        nodes,
        "toy_slice_classifier",
        [helper.make_tensor_value_info("ct_hu", TensorProto.INT16, ["N", "H", "W"])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        initializer=[scale, offset, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="imaging-cds tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_toy_model(
    repository: Path,
    name: str = TOY_MODEL,
    max_batch: int = TOY_MAX_BATCH,
    output: str = "probability",
    output_type: str = "TYPE_FP32",
) -> Path:
    """The model folder (config.pbtxt, 2/model.onnx, manifest.yaml) under ``repository``; returns it."""
    folder = repository / name
    (folder / "2").mkdir(parents=True, exist_ok=True)
    onnx.save(toy_classifier(), str(folder / "2" / "model.onnx"))
    (folder / "config.pbtxt").write_text(
        CONFIG.format(
            name=name, max_batch=max_batch, version=2, output=output, output_type=output_type, output_dims="1"
        )
    )
    (folder / "manifest.yaml").write_text(MANIFEST.format(name=name, max_batch=max_batch))
    return folder


SEGMENTER_MANIFEST = """name: {name}
title: Toy segmenter (test fixture)
version: 0.1.0
task: segmentation
triton:
  model_name: {name}
  model_version: "1"
  max_batch_size: 16
  input: {{name: ct_hu, datatype: INT16}}
  output: {{name: labels, datatype: UINT8}}
selection:
  modalities: [CT]
  body_parts: [CHEST]
  min_instances: 10
  max_slice_spacing_mm: 5.0
# What the label map means, so the worker charts it with no code of its own.
segmentation:
  min_volume_ml: {min_volume_ml}
  labels:
    - value: 1
      key: bone
      site: {{system: "http://snomed.info/sct", code: "272673000", display: Bone structure}}
      measurements: [volume, mean, standard_deviation]
    - value: 2
      key: air
      site: {{system: "https://example.org/fhir/CodeSystem/test-fixture", code: air-like, display: Air-like region}}
      measurements: [volume]
"""


def toy_segmenter() -> onnx.ModelProto:
    bone = numpy_helper.from_array(np.array(SEGMENTER_BONE_HU, dtype=np.int16), name="bone_hu")
    air = numpy_helper.from_array(np.array(SEGMENTER_AIR_HU, dtype=np.int16), name="air_hu")
    two = numpy_helper.from_array(np.array(2, dtype=np.uint8), name="two")
    nodes = [
        helper.make_node("Greater", ["ct_hu", "bone_hu"], ["is_bone"]),
        helper.make_node("Less", ["ct_hu", "air_hu"], ["is_air"]),
        helper.make_node("Cast", ["is_bone"], ["bone_label"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["is_air"], ["air_flag"], to=TensorProto.UINT8),
        helper.make_node("Mul", ["air_flag", "two"], ["air_label"]),
        helper.make_node("Add", ["bone_label", "air_label"], ["labels"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_segmenter",
        [helper.make_tensor_value_info("ct_hu", TensorProto.INT16, ["N", "H", "W"])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "H", "W"])],
        initializer=[bone, air, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="imaging-cds tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_toy_segmenter(repository: Path, name: str = TOY_SEGMENTER, min_volume_ml: float = 1.0) -> Path:
    """The model folder (config.pbtxt, 1/model.onnx, manifest.yaml) under ``repository``; returns it."""
    folder = repository / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(toy_segmenter(), str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(
        CONFIG.format(
            name=name, max_batch=16, version=1, output="labels", output_type="TYPE_UINT8", output_dims="-1, -1"
        )
    )
    (folder / "manifest.yaml").write_text(SEGMENTER_MANIFEST.format(name=name, min_volume_ml=min_volume_ml))
    return folder


def repository_with_toy_model(root: Path) -> Path:
    """A copy of the committed model repository at ``root / "triton_repo"`` with the toy models' folders added."""
    from imaging_cds.config import DEFAULT_MODEL_REPOSITORY

    repo = root / "triton_repo"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repo)
    write_toy_model(repo)
    write_toy_segmenter(repo)
    return repo
