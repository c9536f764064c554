"""The ModelInfer codec (imaging_cds.inference.triton_wire) against protobuf's own encoding and tritonclient's own
reading of answers: the same messages, the same arrays, and clear failures on broken ones."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request

from imaging_cds.inference.triton_wire import (
    InputTensor,
    OutputTensor,
    WireFormatError,
    _varint,
    decode_response,
    encode_request,
    infer_request,
)

RNG = np.random.default_rng(7)
ARRAYS = {
    "INT16": RNG.integers(-1024, 3000, (3, 17, 9)).astype(np.int16),
    "UINT8": RNG.integers(0, 2, (2, 5)).astype(np.uint8),
    "BOOL": RNG.integers(0, 2, (4, 3)).astype(bool),
    "FP32": RNG.normal(size=(6, 4)).astype(np.float32).T,  # not C-contiguous
    "BYTES": np.array([[b"ct", b""], [b"\x00\xff", b"lung"]], dtype=object),
    "INT16 large": RNG.integers(-1024, 3000, (5, 512, 512)).astype(np.int16),  # > 2 MiB: a 4-byte length
    "INT16 empty": np.zeros((0, 8, 8), dtype=np.int16),
}


def _tritonclient_request(name: str, array: np.ndarray, datatype: str, priority: int) -> bytes:
    given = grpcclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    message = _get_inference_request(
        model_name="m",
        inputs=[given],
        model_version="3",
        request_id="",
        outputs=[grpcclient.InferRequestedOutput("out")],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=priority,
        timeout=None,
        parameters=None,
    )
    return bytes(message.SerializeToString())


@pytest.mark.parametrize("case", sorted(ARRAYS))
@pytest.mark.parametrize("priority", [0, 1])
def test_a_request_is_byte_for_byte_what_protobuf_and_tritonclient_send(case: str, priority: int) -> None:
    array, datatype = ARRAYS[case], case.split()[0]
    ours = encode_request(
        infer_request("m", "3", [InputTensor("x", datatype, array.shape, data=array)], [OutputTensor("out")], priority)
    )
    assert ours == _tritonclient_request("x", array, datatype, priority)
    parsed = service_pb2.ModelInferRequest.FromString(ours)
    assert parsed.parameters["priority"].uint64_param == priority  # STAT jobs ask for level 1
    if datatype != "BYTES":
        assert parsed.raw_input_contents[0] == np.ascontiguousarray(array).tobytes()


def test_shared_memory_tensors_send_their_regions_and_no_bytes() -> None:
    wire = encode_request(
        infer_request(
            "m",
            "1",
            [InputTensor("x", "INT16", (4, 2), shared_memory=("in-region", 16))],
            [OutputTensor("out", shared_memory=("out-region", 8))],
        )
    )
    parsed = service_pb2.ModelInferRequest.FromString(wire)
    assert not parsed.raw_input_contents
    assert parsed.inputs[0].parameters["shared_memory_region"].string_param == "in-region"
    assert parsed.inputs[0].parameters["shared_memory_byte_size"].int64_param == 16
    assert parsed.outputs[0].parameters["shared_memory_region"].string_param == "out-region"
    assert parsed.outputs[0].parameters["shared_memory_byte_size"].int64_param == 8
    with pytest.raises(ValueError, match="neither data nor a shared-memory region"):
        infer_request("m", "1", [InputTensor("x", "INT16", (1,))], [OutputTensor("out")])


def _response(outputs: dict[str, np.ndarray]) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="3", id="req-1")
    response.parameters["triton_final_response"].bool_param = True
    for name, array in outputs.items():
        datatype = "BYTES" if array.dtype == object else grpcclient.np_to_triton_dtype(array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        given = grpcclient.InferInput(name, list(array.shape), datatype)
        given.set_data_from_numpy(array)
        response.raw_output_contents.append(given._get_content())
    return response


def test_an_answer_reads_as_tritonclient_reads_it_without_copying_the_tensors() -> None:
    outputs = {case.replace(" ", "_"): array for case, array in ARRAYS.items()}
    response = _response(outputs)
    wire = bytes(response.SerializeToString())
    answer = decode_response(wire)
    theirs = grpcclient.InferResult(service_pb2.ModelInferResponse.FromString(wire))
    assert answer.model_version == "3"
    assert answer.response.id == "req-1" and answer.response.parameters["triton_final_response"].bool_param
    assert not answer.response.raw_output_contents  # the tensors stay out of protobuf
    for name, array in outputs.items():
        ours = answer.as_numpy(name)
        assert ours is not None
        np.testing.assert_array_equal(ours, theirs.as_numpy(name))
        np.testing.assert_array_equal(ours, array)
        assert ours.dtype == theirs.as_numpy(name).dtype and ours.shape == array.shape
        if array.dtype != object and array.size:
            assert not ours.flags.writeable and ours.base is not None  # a view of the received message
    assert answer.as_numpy("absent") is None and answer.output("absent") is None
    assert list(answer.output("INT16").shape) == [3, 17, 9]  # type: ignore[union-attr]


def test_field_order_does_not_matter() -> None:
    """Protobuf allows fields in any order; Triton's C++ server writes them in field-number order, others may not."""
    array = ARRAYS["INT16"]
    response = _response({"a": array})
    raw = bytes(response.raw_output_contents[0])
    del response.raw_output_contents[:]
    head = bytes(response.SerializeToString())
    field_6 = bytes([6 << 3 | 2]) + _varint(len(raw)) + raw
    answer = decode_response(field_6 + head)
    np.testing.assert_array_equal(answer.as_numpy("a"), array)


def test_an_output_written_to_shared_memory_has_metadata_and_no_bytes() -> None:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="out", datatype="UINT8", shape=[4, 2])
    answer = decode_response(bytes(response.SerializeToString()))
    assert answer.as_numpy("out") is None
    tensor = answer.output("out")
    assert tensor is not None and tensor.datatype == "UINT8" and list(tensor.shape) == [4, 2]


def test_broken_answers_fail_clearly() -> None:
    wire = bytes(_response({"a": ARRAYS["INT16"]}).SerializeToString())
    with pytest.raises(WireFormatError, match="truncated inside raw_output_contents"):
        decode_response(wire[:-1])
    with pytest.raises(WireFormatError, match="varint"):
        decode_response(b"\x0a\x80")  # field 1, length that never ends
    with pytest.raises(WireFormatError, match="truncated inside field 1"):
        decode_response(b"\x0a\x05ab")
    with pytest.raises(WireFormatError, match="wire type 7"):
        decode_response(bytes([1 << 3 | 7]))
    assert decode_response(b"").as_numpy("a") is None  # an empty message is a valid (empty) answer
