"""The sandbox's native onnxruntime backend for Triton (scripts/triton/backends/onnxruntime), on the real Triton.

Every model in ``triton_repo/`` already runs through it in the other Triton tests; these are the cases those do not
reach: requests joined into one dynamic batch and split back, a model without batching, outputs whose shape is
only known after the run, a subset of outputs asked for, an ONNX file whose declared output shape is wrong, and a
config that does not match its ONNX file (refused at load, naming both).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper

from tests.services import sandbox

pytestmark = pytest.mark.services


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:  # fmt: skip
    graph = helper.make_graph(nodes, "backend_test", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="imaging-cds tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _write(repo: Path, name: str, model: onnx.ModelProto, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "onnxruntime"\n{config}\n')


def _tensor(name: str, datatype: str, dims: str) -> str:
    return f'{{ name: "{name}" data_type: {datatype} dims: [ {dims} ] }}'


def _config(max_batch: int, inputs: list[str], outputs: list[str], *extra: str) -> str:
    return "\n".join([f"max_batch_size: {max_batch}", f"input [ {', '.join(inputs)} ]",
                      f"output [ {', '.join(outputs)} ]", *extra])  # fmt: skip


def plus_one() -> onnx.ModelProto:
    """x INT16 [n, w] -> y = x + 1 INT16 [n, w] and positive = (x > 0) UINT8 [n, w]: shapes known before the run."""
    one = numpy_helper.from_array(np.array(1, dtype=np.int16), name="one")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int16), name="zero")
    nodes = [
        helper.make_node("Add", ["x", "one"], ["y"]),
        helper.make_node("Greater", ["x", "zero"], ["gt"]),
        helper.make_node("Cast", ["gt"], ["positive"], to=TensorProto.UINT8),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.INT16, ["n", "w"])],
        [
            helper.make_tensor_value_info("y", TensorProto.INT16, ["n", "w"]),
            helper.make_tensor_value_info("positive", TensorProto.UINT8, ["n", "w"]),
        ],
        [one, zero],
    )


def row_sums() -> onnx.ModelProto:
    """x FP32 [n, w] -> s = sum over w, FP32 [n, 1], declared without dim names: shape known only after the run."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), name="axes")
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1)]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "w"])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [None, 1])],
        [axes],
    )


def drops_first_row() -> onnx.ModelProto:
    """x INT32 [n, w] -> y = x[1:], declared (wrongly) as [n, w]: the backend's shapes made before the run fail."""
    starts = numpy_helper.from_array(np.array([1], dtype=np.int64), name="starts")
    ends = numpy_helper.from_array(np.array([2**62], dtype=np.int64), name="ends")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), name="axes")
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["n", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["n", "w"])],
        [starts, ends, axes],
    )


def first_rows() -> onnx.ModelProto:
    """x INT32 [n, w], k INT64 [1] -> y = x[:k], declared [n, w]: the declared shape holds only when k >= n."""
    starts = numpy_helper.from_array(np.array([0], dtype=np.int64), name="starts")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), name="axes")
    nodes = [helper.make_node("Slice", ["x", "starts", "k", "axes"], ["y"])]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.INT32, ["n", "w"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["n", "w"])],
        [starts, axes],
    )


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repo = tmp_path_factory.mktemp("backend-repo")
    outputs = [_tensor("y", "TYPE_INT16", "-1"), _tensor("positive", "TYPE_UINT8", "-1")]
    batching = ["dynamic_batching { max_queue_delay_microseconds: 300000 }", "instance_group [ { count: 1 } ]"]
    _write(repo, "plus-one", plus_one(), _config(16, [_tensor("x", "TYPE_INT16", "-1")], outputs, *batching))
    _write(
        repo,
        "row-sums",
        row_sums(),
        _config(0, [_tensor("x", "TYPE_FP32", "-1, -1")], [_tensor("s", "TYPE_FP32", "-1, 1")]),
    )
    _write(repo, "drops-first-row", drops_first_row(),
           _config(0, [_tensor("x", "TYPE_INT32", "-1, -1")], [_tensor("y", "TYPE_INT32", "-1, -1")]))  # fmt: skip
    _write(repo, "first-rows", first_rows(), _config(0, [_tensor("x", "TYPE_INT32", "-1, -1"),
           _tensor("k", "TYPE_INT64", "1")], [_tensor("y", "TYPE_INT32", "-1, -1")], batching[1]))  # fmt: skip
    options = ("--only", "triton", "--model-repository", str(repo))
    with sandbox(tmp_path_factory.mktemp("backend-sandbox"), *options) as info:
        client = grpcclient.InferenceServerClient(info["IMAGING_CDS_TRITON_GRPC_URL"])
        try:
            yield {"client": client, "http": info["IMAGING_CDS_TRITON_HTTP_URL"], "repo": repo}
        finally:
            client.close()


def _infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, datatype: str,
           outputs: list[str] | None = None) -> grpcclient.InferResult:  # fmt: skip
    tensor = grpcclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=wanted)


def test_requests_joined_into_one_batch_get_their_own_rows_back(triton: dict[str, Any]) -> None:
    client = triton["client"]
    inputs = [np.arange(rows * 5, dtype=np.int16).reshape(rows, 5) - 7 * rows for rows in (1, 2, 3)]
    with ThreadPoolExecutor(len(inputs)) as pool:  # within the batcher's 0.3 s delay: one batch of 6 rows
        results = list(pool.map(lambda x: _infer(client, "plus-one", x, "INT16"), inputs))
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
        np.testing.assert_array_equal(result.as_numpy("positive"), (x > 0).astype(np.uint8))
    stats = client.get_inference_statistics("plus-one", as_json=True)["model_stats"][0]
    assert any(int(b["batch_size"]) == 6 for b in stats["batch_stats"]), stats["batch_stats"]


def test_only_the_outputs_asked_for_come_back(triton: dict[str, Any]) -> None:
    x = np.array([[-3, 0, 4]], dtype=np.int16)
    result = _infer(triton["client"], "plus-one", x, "INT16", outputs=["positive"])
    assert [o.name for o in result.get_response().outputs] == ["positive"]
    np.testing.assert_array_equal(result.as_numpy("positive"), [[0, 0, 1]])


def test_a_model_without_batching_whose_output_shape_is_known_only_after_the_run(triton: dict[str, Any]) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = _infer(triton["client"], "row-sums", x, "FP32")
    np.testing.assert_array_equal(result.as_numpy("s"), x.sum(axis=1, keepdims=True))


def test_an_onnx_file_that_declares_a_wrong_output_shape_is_still_answered_correctly(triton: dict[str, Any]) -> None:
    x = np.arange(8, dtype=np.int32).reshape(4, 2)
    for _ in range(2):  # the first run shows the declared shape wrong: outputs are made after every run
        np.testing.assert_array_equal(_infer(triton["client"], "drops-first-row", x, "INT32").as_numpy("y"), x[1:])


def test_a_shape_that_stops_holding_fails_that_request_alone_with_the_reason(triton: dict[str, Any]) -> None:
    from tritonclient.utils import InferenceServerException

    x = np.arange(8, dtype=np.int32).reshape(4, 2)

    def first(k: int) -> np.ndarray:
        inputs = [grpcclient.InferInput("x", [4, 2], "INT32"), grpcclient.InferInput("k", [1], "INT64")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(np.array([k], dtype=np.int64))
        return triton["client"].infer("first-rows", inputs).as_numpy("y")

    np.testing.assert_array_equal(first(4), x)  # the declared [n, w] held: outputs now made before the run (1 instance)
    with pytest.raises(InferenceServerException, match="first-rows: onnxruntime run"):
        first(3)
    np.testing.assert_array_equal(first(3), x[:3])  # from then on made after the run
    np.testing.assert_array_equal(first(4), x)


def test_a_config_that_does_not_match_its_onnx_file_is_refused_at_load_naming_both(triton: dict[str, Any]) -> None:
    x16, x32 = _tensor("x", "TYPE_INT16", "-1"), _tensor("x", "TYPE_INT32", "-1")
    _write(triton["repo"], "wrong-type", plus_one(), _config(16, [x32], [_tensor("y", "TYPE_INT16", "-1")]))
    _write(triton["repo"], "wrong-name", plus_one(), _config(16, [x16], [_tensor("mask", "TYPE_UINT8", "-1")]))
    expected = {
        "wrong-type": "wrong-type: config input 'x' is TYPE_INT32 but model.onnx has TYPE_INT16",
        "wrong-name": "wrong-name: config output 'mask' is not an output of model.onnx: [positive, y]",
    }
    for name, message in expected.items():
        request = urllib.request.Request(f"{triton['http']}/v2/repository/models/{name}/load", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert message in json.loads(refused.value.read())["error"]


def test_a_request_of_another_datatype_is_refused_naming_the_model(triton: dict[str, Any]) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="INT16"):
        _infer(triton["client"], "plus-one", np.zeros((1, 3), dtype=np.int32), "INT32")
