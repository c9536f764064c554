"""KServe v2 ``ModelInfer`` messages whose tensor bytes bypass protobuf (client side of ``triton.py``).

A ``ModelInferRequest`` carries each input tensor as a ``raw_input_contents`` bytes field, and a
``ModelInferResponse`` each output as ``raw_output_contents``. Built and parsed by the protobuf runtime, a volume's
tensors are copied four or five times in the client (``ndarray.tobytes``, into the message, out to the wire; out
of the wire, into the message, out of it again). On a CPU Triton that is a third of Triton's overhead for a model
as light as lung-density (``bench/inference.py``).

Protobuf's wire format lets a message be written as the concatenation of its fields, in any order, so here:

- :func:`encode_request` serialises the request's small part (names, shapes, parameters) with protobuf and appends
  each tensor as a length-delimited field 7 straight from the array's buffer: one copy, into the bytes gRPC sends;
- :func:`decode_response` walks the top-level fields of the answer, hands every field except 6 to protobuf, and
  keeps each ``raw_output_contents`` as a zero-copy view of the received bytes, so ``np.frombuffer`` reads it in
  place.

The result is byte-for-byte a message that protobuf itself would accept or produce (``tests/unit``), and Triton
sees nothing different.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

# Field numbers of grpc_service.proto (KServe v2).
RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_CONTENTS = 6  # ModelInferResponse.raw_output_contents
_LENGTH_DELIMITED = 2
_RAW_INPUT_TAG = bytes([RAW_INPUT_CONTENTS << 3 | _LENGTH_DELIMITED])


class WireFormatError(ValueError):
    """A ``ModelInferResponse`` that is not valid protobuf (truncated, or a wire type that does not exist)."""


@dataclass(frozen=True)
class InputTensor:
    """One input: its bytes (``data``) travel in the message unless ``shared_memory`` names a registered region
    (then ``data`` is None and Triton reads ``byte_size`` bytes from the region)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None
    shared_memory: tuple[str, int] | None = None  # (region name, byte size)


@dataclass(frozen=True)
class OutputTensor:
    """One requested output, answered in the message unless ``shared_memory`` names a region to write it to."""

    name: str
    shared_memory: tuple[str, int] | None = None


@dataclass(frozen=True)
class InferRequest:
    """A ``ModelInferRequest``: its protobuf part (no tensor bytes) and the tensors to append as field 7."""

    header: bytes
    tensors: tuple[memoryview, ...]


def infer_request(
    model_name: str,
    model_version: str,
    inputs: Sequence[InputTensor],
    outputs: Sequence[OutputTensor],
    priority: int = 0,
) -> InferRequest:
    """The request for ``inputs``; ``priority`` 0 leaves the model's default priority level."""
    message = service_pb2.ModelInferRequest(model_name=model_name, model_version=model_version)
    tensors = []
    for given in inputs:
        tensor = message.inputs.add(name=given.name, datatype=given.datatype, shape=list(given.shape))
        if given.shared_memory is not None:
            region, byte_size = given.shared_memory
            tensor.parameters["shared_memory_region"].string_param = region
            tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
        elif given.data is not None:
            tensors.append(_raw_bytes(given.data, given.datatype))
        else:
            raise ValueError(f"input {given.name!r} has neither data nor a shared-memory region")
    for wanted in outputs:
        output = message.outputs.add(name=wanted.name)
        if wanted.shared_memory is not None:
            region, byte_size = wanted.shared_memory
            output.parameters["shared_memory_region"].string_param = region
            output.parameters["shared_memory_byte_size"].int64_param = byte_size
    if priority:
        message.parameters["priority"].uint64_param = priority
    return InferRequest(message.SerializeToString(), tuple(tensors))


def encode_request(request: InferRequest) -> bytes:
    """The serialised message: the header, then each tensor as a length-delimited field 7 (the gRPC serializer)."""
    parts: list[bytes | memoryview] = [request.header]
    for tensor in request.tensors:
        parts += (_RAW_INPUT_TAG, _varint(tensor.nbytes), tensor)
    return b"".join(parts)


@dataclass(frozen=True)
class InferAnswer:
    """A ``ModelInferResponse`` without its tensor bytes, and those bytes as views of the received message."""

    response: service_pb2.ModelInferResponse
    raw_outputs: tuple[memoryview, ...]

    @property
    def model_version(self) -> str:
        return str(self.response.model_version)

    def output(self, name: str) -> service_pb2.ModelInferResponse.InferOutputTensor | None:
        for tensor in self.response.outputs:
            if tensor.name == name:
                return tensor
        return None

    def as_numpy(self, name: str) -> np.ndarray | None:
        """The output ``name`` carried in the message (read-only, sharing the message's memory); None when the
        answer has no such output or it went to shared memory. As in tritonclient, the n-th output owns the n-th
        raw content."""
        for index, tensor in enumerate(self.response.outputs):
            if tensor.name != name:
                continue
            if index >= len(self.raw_outputs):
                return None
            shape = tuple(int(d) for d in tensor.shape)
            raw = self.raw_outputs[index]
            if tensor.datatype == "BYTES":
                return np.asarray(deserialize_bytes_tensor(bytes(raw))).reshape(shape)
            return np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype)).reshape(shape)
        return None


def decode_response(data: bytes) -> InferAnswer:
    """The answer in ``data`` (the gRPC deserializer): field 6 kept as views, the rest parsed by protobuf."""
    view = memoryview(data)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    position, end = 0, len(data)
    while position < end:
        start = position
        key, position = _read_varint(data, position)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:  # varint
            _, position = _read_varint(data, position)
        elif wire_type == 1:  # 64-bit
            position += 8
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(data, position)
            if field_number == RAW_OUTPUT_CONTENTS:
                if position + length > end:
                    raise WireFormatError("ModelInferResponse truncated inside raw_output_contents")
                raw.append(view[position : position + length])
                position += length
                continue
            position += length
        elif wire_type == 5:  # 32-bit
            position += 4
        else:  # groups (3, 4) are not in grpc_service.proto; 6 and 7 do not exist
            raise WireFormatError(f"ModelInferResponse has field {field_number} with wire type {wire_type}")
        if position > end:
            raise WireFormatError(f"ModelInferResponse truncated inside field {field_number}")
        kept.append(view[start:position])
    response = service_pb2.ModelInferResponse.FromString(b"".join(kept))
    return InferAnswer(response, tuple(raw))


def _raw_bytes(data: np.ndarray, datatype: str) -> memoryview:
    if datatype == "BYTES":
        serialized = serialize_byte_tensor(data)
        return memoryview(serialized.item() if serialized.size else b"")
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8).data


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise WireFormatError("ModelInferResponse truncated or malformed inside a varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
