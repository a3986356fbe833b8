"""Open Inference Protocol v2 wire format: JSON tensors and the binary tensor data extension.

A request body is JSON, or (with the ``Inference-Header-Content-Length`` header) JSON followed
by raw tensor bytes, each input saying its ``binary_data_size``; this is what the stock
``tritonclient[http]`` client sends by default. BYTES elements are length-prefixed (4-byte
little-endian) in binary form, and base64 strings in JSON form (raw image bytes are not valid
JSON strings). Responses are encoded the same way on request (``binary_data_output`` or an
output's ``binary_data``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadRequestError

HEADER_LENGTH = "inference-header-content-length"

# Datatypes we produce, with their numpy little-endian dtypes.
_NUMPY = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


def parse_request(body: bytes, header_length: str | None) -> tuple[V2Request, list[Any]]:
    """The request and, per input, its data: a numpy array (numeric) or a list of bytes (BYTES)."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequestError("Inference-Header-Content-Length must be an integer") from None
        if not 0 < n <= len(body):
            raise BadRequestError("Inference-Header-Content-Length is outside the body")
        body, binary = body[:n], body[n:]
    try:
        request = V2Request.model_validate(json.loads(body))
    except (ValueError, RecursionError):  # bad JSON or UTF-8, an integer of 4,300+ digits, "[[[..."
        raise BadRequestError("the inference request is not valid JSON") from None
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "request"
        raise BadRequestError(f"invalid inference request: {where}: {e['msg']}") from None
    offset = 0
    data: list[Any] = []
    for tensor in request.inputs:
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequestError(f"input {tensor.name!r}: bad binary_data_size")
            if offset + size > len(binary):
                raise BadRequestError(
                    f"input {tensor.name!r}: binary data is shorter than declared"
                )
            data.append(_from_binary(tensor, binary[offset : offset + size]))
            offset += size
        else:
            data.append(_from_json(tensor))
    if offset != len(binary):
        raise BadRequestError("the request carries binary data that no input claims")
    return request, data


def _count(tensor: V2Tensor) -> int:
    if any(d < 0 for d in tensor.shape):
        raise BadRequestError(f"input {tensor.name!r}: negative dimension in shape {tensor.shape}")
    return math.prod(tensor.shape)


def _from_binary(tensor: V2Tensor, raw: bytes) -> Any:
    count = _count(tensor)
    if tensor.datatype == "BYTES":
        items = _split_bytes(tensor.name, raw)
        if len(items) != count:
            raise BadRequestError(
                f"input {tensor.name!r}: {len(items)} elements for shape {tensor.shape}"
            )
        return items
    if tensor.datatype not in _NUMPY:
        raise BadRequestError(
            f"input {tensor.name!r}: unsupported datatype {shown(tensor.datatype)}"
        )
    dtype = np.dtype(_NUMPY[tensor.datatype])
    if len(raw) != count * dtype.itemsize:
        raise BadRequestError(
            f"input {tensor.name!r}: {len(raw)} bytes of binary data for shape {tensor.shape} "
            f"of {tensor.datatype}"
        )
    return _shaped(tensor, np.frombuffer(raw, dtype=dtype))


def _split_bytes(name: str, raw: bytes) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequestError(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequestError(f"input {name!r}: truncated BYTES element")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def shown(text: str) -> str:
    """A client's string as an error message can carry it: a lone surrogate (JSON's "\\ud800")
    is not UTF-8, and the message once failed to encode (a 500)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _shaped(tensor: V2Tensor, values: np.ndarray) -> np.ndarray:
    """``values`` in the tensor's shape; one numpy cannot make (an empty tensor with a
    dimension of 2**70: no element, so every count agreed) is the client's 400, not a 500."""
    try:
        return values.reshape(tensor.shape)
    except (ValueError, OverflowError):
        raise BadRequestError(f"input {tensor.name!r}: shape {tensor.shape} is not one") from None


def _flatten(value: Any) -> list[Any]:
    """The values of nested lists, in order; without recursion (data nested some 500 deep
    overflowed the interpreter's stack: a 500)."""
    out: list[Any] = []
    stack = [iter([value])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _from_json(tensor: V2Tensor) -> Any:
    if tensor.data is None:
        raise BadRequestError(f"input {tensor.name!r} has neither data nor binary_data_size")
    flat = _flatten(tensor.data)
    if len(flat) != _count(tensor):
        raise BadRequestError(f"input {tensor.name!r}: {len(flat)} values for shape {tensor.shape}")
    if tensor.datatype == "BYTES":
        items = []
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise BadRequestError(f"input {tensor.name!r}: element {i} is not a string")
            try:
                items.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise BadRequestError(
                    f"input {tensor.name!r}: element {i} is not base64 (JSON BYTES elements are "
                    "base64-encoded images; or send binary data)"
                ) from None
        return items
    if tensor.datatype not in _NUMPY:
        raise BadRequestError(
            f"input {tensor.name!r}: unsupported datatype {shown(tensor.datatype)}"
        )
    if any(isinstance(x, (bool, str)) or x is None for x in flat):
        raise BadRequestError(f"input {tensor.name!r}: data must be numbers")
    try:
        array = np.asarray(flat, dtype=np.dtype(_NUMPY[tensor.datatype]))
    except (TypeError, ValueError, OverflowError):
        raise BadRequestError(f"input {tensor.name!r}: data must be numbers") from None
    return _shaped(tensor, array)


# --- responses -------------------------------------------------------------------------------


def encode_response(
    header: dict[str, Any], outputs: list[tuple[str, str, Any]], binary: dict[str, bool]
) -> tuple[bytes, int | None]:
    """Body bytes and, when any output is binary, the JSON header's length.

    ``outputs``: (name, datatype, values) with values a numpy array or a list of str (BYTES).
    """
    entries = []
    chunks: list[bytes] = []
    for name, datatype, values in outputs:
        shape = [len(values)]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary.get(name, False):
            if datatype == "BYTES":
                raw = b"".join(
                    struct.pack("<I", len(b)) + b for b in (v.encode("utf-8") for v in values)
                )
            else:
                raw = np.asarray(values, dtype=np.dtype(_NUMPY[datatype])).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = list(values) if datatype == "BYTES" else np.asarray(values).tolist()
        entries.append(entry)
    head = json.dumps({**header, "outputs": entries}).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
