"""TF Serving's REST JSON for Predict: request bodies to arrays, outputs to response bodies.

The rules of tensorflow_serving/util/json_tensor.cc: what a client can tell, the JSON values, their
types and numbers and the status codes, are TF Serving's; the bodies are compact JSON rather than
rapidjson's pretty-printed text, and error messages keep TF Serving's words but quote values as
compact JSON and parse errors in Python's words.

- ``{"instances": [...]}`` (row format) stacks one value (or one object of named values) per row
  and answers ``{"predictions": [...]}``; ``{"inputs": ...}`` (columnar) sends each tensor whole
  and answers ``{"outputs": ...}``. A signature with one input or output drops the names.
- Binary strings are ``{"b64": "..."}`` in requests; outputs are base64-encoded that way only if
  their alias ends in ``_bytes``.
- A signature without inputs cannot be called ("Failed to get input map for signature"), and row
  format needs every output to have a 0th dimension, both as in TF Serving.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import InvalidArgumentError, ServingError, UnimplementedError
from serving.tensors import dtype_name

ROW = "row"
COLUMNAR = "columnar"
BYTES_SUFFIX = "_bytes"

InputInfos = Mapping[str, meta_graph_pb2.TensorInfo]
MAX_DEBUG_STRING_CHARS = 256  # kMaxJsonDebugStringBytes


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose repeated names keep their first value, as rapidjson's FindMember reads them."""
    members: dict[str, Any] = {}
    for name, value in pairs:
        members.setdefault(name, value)
    return members


def parse_json(body: bytes) -> dict[str, Any]:
    """ParseJson: the first JSON value of the body (anything after it is ignored), which must be an
    object. NaN and Infinity are numbers; strings may hold any bytes (kept by `surrogateescape`)."""
    text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise InvalidArgumentError("JSON Parse error: The document is empty")
    try:
        document, _ = json.JSONDecoder(object_pairs_hook=_first_wins).raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"JSON Parse error: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidArgumentError(f"JSON Value: {debug_string(document)} Is not object")
    return document


def debug_string(value: Any) -> str:
    """A JSON value quoted in a message (JsonValueToDebugString), cut after 256 characters."""
    return json.dumps(value, ensure_ascii=False)[:MAX_DEBUG_STRING_CHARS]


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # bytes that were not UTF-8 in the body
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _integer_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


_INT32 = (-(2**31), 2**31)
_INT64 = (-(2**63), 2**63)
_UINT32 = (0, 2**32)
_UINT64 = (0, 2**64)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar(value: Any, dtype: int) -> Any:
    """AddValueToTensor: one JSON value as the signature's dtype, or why it cannot be."""
    if isinstance(value, dict):
        if dtype != types_pb2.DT_STRING:
            raise _type_error(value, dtype)
        return _b64_decode(value)
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        ok = _is_number(value)
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        ok = _integer_in(value, *_INT32)
    elif dtype == types_pb2.DT_INT64:
        ok = _integer_in(value, *_INT64)
    elif dtype == types_pb2.DT_UINT32:
        ok = _integer_in(value, *_UINT32)
    elif dtype == types_pb2.DT_UINT64:
        ok = _integer_in(value, *_UINT64)
    elif dtype == types_pb2.DT_BOOL:
        ok = isinstance(value, bool)
    elif dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return utf8(value)
    else:
        raise UnimplementedError(f"Conversion of JSON Value: {debug_string(value)} to type: {dtype_name(dtype)}")
    if not ok:
        raise _type_error(value, dtype)
    return value


def _type_error(value: Any, dtype: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"JSON Value: {debug_string(value)} Type: {_type_name(value)} is not of expected type: {dtype_name(dtype)}"
    )


def _b64_decode(value: Any) -> bytes:
    if not _is_b64(value):
        raise InvalidArgumentError(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = value.get("b64")
    try:
        # absl::Base64Unescape takes the padding as optional.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentError("Unable to base64 decode") from exc


def _dense_shape(value: Any) -> list[int]:
    """GetDenseTensorShape: the shape read off the first element of each nesting level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    """FillTensorProto: appends the values in row-major order, checking the nesting is dense."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise InvalidArgumentError(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise InvalidArgumentError(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise InvalidArgumentError(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _array(values: list[Any], shape: list[int], dtype: int) -> np.ndarray:
    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif dtype in (types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_UINT8):
        array = np.array(values, dtype=np.int64).astype(np_dtype)  # int_val is cast down, wrapping
    else:
        with np.errstate(over="ignore"):  # float_val takes a double cast to float, overflowing to inf
            array = np.array(values, dtype=np.float64 if dtype == types_pb2.DT_FLOAT else np_dtype).astype(np_dtype)
    return array.reshape(shape)


def _tensor(value: Any, dtype: int) -> tuple[list[Any], list[int]]:
    shape = _dense_shape(value)
    values: list[Any] = []
    _fill(value, 0, shape, dtype, values)
    return values, shape


@dataclass(frozen=True)
class PredictJson:
    signature_name: str
    inputs: dict[str, np.ndarray]
    format: str  # ROW or COLUMNAR


def parse_predict_request(body: bytes, input_infos: Callable[[str], InputInfos]) -> PredictJson:
    """FillPredictRequestFromJson; ``input_infos`` looks up a signature's inputs by name."""
    document = parse_json(body)
    signature_name = document.get("signature_name", "")
    if "signature_name" in document and not isinstance(signature_name, str):
        raise InvalidArgumentError(
            f"JSON Value: {debug_string(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    infos = input_infos(signature_name)
    if not infos:
        raise InvalidArgumentError(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    if "instances" in document:
        if "inputs" in document:
            raise InvalidArgumentError(
                f"JSON Value: {debug_string(document)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        instances = document.get("instances")
        if not isinstance(instances, list):
            raise InvalidArgumentError(
                f"JSON Value: {debug_string(document)} Expecting 'instances' to be an list/array"
            )
        if not instances:
            raise InvalidArgumentError(f"JSON Value: {debug_string(document)} No values in 'instances' array")
        return PredictJson(signature_name, _from_instances(instances, infos), ROW)
    if "inputs" in document:
        return PredictJson(signature_name, _from_inputs(document.get("inputs"), infos), COLUMNAR)
    raise InvalidArgumentError("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list[Any], infos: InputInfos) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: one row per element, the rows stacked along a new 0th dimension."""
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise InvalidArgumentError(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )

    def named(value: Any) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    objects = named(instances[0])
    values: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add(value: Any, name: str) -> None:
        if name not in infos:
            raise InvalidArgumentError(f"JSON object: does not have named input: {name}")
        row, shape = _tensor(value, infos[name].dtype)
        values.setdefault(name, []).extend(row)
        if name not in sizes:
            sizes[name], shapes[name] = len(row), shape
        elif sizes[name] != len(row):
            raise InvalidArgumentError(f"Expecting tensor size: {sizes[name]} but got: {len(row)}")
        elif shapes[name] != shape:
            raise InvalidArgumentError(f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}")

    for index, element in enumerate(instances):
        if objects:
            if not named(element):
                raise InvalidArgumentError(f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                try:
                    add(value, name)
                except ServingError as exc:
                    raise InvalidArgumentError(
                        f"Failed to process element: {index} key: {name} of 'instances' list. Error: {exc.to_string()}"
                    ) from exc
            if set(element) != set(infos):
                raise InvalidArgumentError(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(sorted(infos))}"
                )
        else:
            if named(element):
                raise InvalidArgumentError(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(element, sorted(infos)[0])
            except ServingError as exc:
                raise InvalidArgumentError(
                    f"Failed to process element: {index} of 'instances' list. Error: {exc.to_string()}"
                ) from exc
    return {name: _array(values[name], [len(instances), *shapes[name]], infos[name].dtype) for name in sorted(values)}


def _from_inputs(inputs: Any, infos: InputInfos) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: each named input whole; extra names are ignored, as in TF Serving."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(infos) > 1:
            raise InvalidArgumentError(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        [(name, info)] = infos.items()
        values, shape = _tensor(inputs, info.dtype)
        return {name: _array(values, shape, info.dtype)}
    arrays = {}
    for name in sorted(infos):
        if name not in inputs:
            raise InvalidArgumentError(f"Missing named input: {name} in 'inputs' object.")
        values, shape = _tensor(inputs.get(name), infos[name].dtype)
        arrays[name] = _array(values, shape, infos[name].dtype)
    return arrays


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# ---- responses ---------------------------------------------------------------------------------


def _decimal(value: float, single: bool) -> str:
    """WriteDecimal: six significant digits unless they do not round-trip, and always a '.' or 'e'."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    round_trips = np.float32(float(text)) == np.float32(value) if single else float(text) == value
    if not round_trips:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _string(raw: bytes) -> str:
    """A JSON string of a tensor's bytes; bytes that are not UTF-8 go out as they are, as in TF Serving."""
    return json.dumps(raw.decode("utf-8", "surrogateescape"), ensure_ascii=False)


def _value_writer(array: np.ndarray, alias: str) -> Callable[[Any], str]:
    """How AddSingleValueAndAdvance writes one value of this output's dtype."""
    dtype = tf.as_dtype(array.dtype).as_datatype_enum
    if dtype == types_pb2.DT_FLOAT:
        return lambda v: _decimal(float(v), single=True)
    if dtype == types_pb2.DT_DOUBLE:
        return lambda v: _decimal(float(v), single=False)
    if dtype in (
        types_pb2.DT_INT8,
        types_pb2.DT_INT16,
        types_pb2.DT_INT32,
        types_pb2.DT_UINT8,
        types_pb2.DT_INT64,
        types_pb2.DT_UINT32,
        types_pb2.DT_UINT64,
    ):
        return lambda v: str(int(v))
    if dtype == types_pb2.DT_BOOL:
        return lambda v: "true" if v else "false"
    if dtype == types_pb2.DT_STRING and alias.endswith(BYTES_SUFFIX):
        return lambda v: '{"b64":"' + base64.b64encode(bytes(v)).decode("ascii") + '"}'
    if dtype == types_pb2.DT_STRING:
        return lambda v: _string(bytes(v))

    def unsupported(value: Any) -> str:
        raise InvalidArgumentError(f"Failed to write JSON value for tensor type: {dtype_name(dtype)}")

    return unsupported


def _tensor_json(array: np.ndarray, write_value: Callable[[Any], str]) -> str:
    """AddTensorValues: nested arrays, or the bare value of a scalar."""
    if array.ndim == 0:
        return write_value(array[()])
    if array.ndim == 1:
        return "[" + ",".join(map(write_value, array.tolist())) + "]"
    return "[" + ",".join(_tensor_json(item, write_value) for item in array) + "]"


def _tensors_json(outputs: Mapping[str, np.ndarray], writers: Mapping[str, Callable[[Any], str]]) -> str:
    """One tensor bare, several as an object by name."""
    if len(outputs) == 1:
        [(name, array)] = outputs.items()
        return _tensor_json(array, writers[name])
    members = (_string(utf8(name)) + ":" + _tensor_json(array, writers[name]) for name, array in outputs.items())
    return "{" + ",".join(members) + "}"


def predict_response(outputs: Mapping[str, np.ndarray], response_format: str) -> bytes:
    """MakeJsonFromTensors: ``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for columnar."""
    if not outputs:
        raise InvalidArgumentError("Cannot convert empty tensor map to JSON")
    outputs = {name: np.asarray(outputs[name]) for name in sorted(outputs)}
    writers = {name: _value_writer(array, name) for name, array in outputs.items()}
    if response_format == COLUMNAR:
        return ('{"outputs":' + _tensors_json(outputs, writers) + "}").encode("utf-8", "surrogateescape")
    batch = -1
    for name, array in outputs.items():
        if array.ndim == 0:
            raise InvalidArgumentError(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise InvalidArgumentError(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    rows = (_tensors_json({name: array[row, ...] for name, array in outputs.items()}, writers) for row in range(batch))
    return ('{"predictions":[' + ",".join(rows) + "]}").encode("utf-8", "surrogateescape")


def error_body(message: str) -> bytes:
    """MakeJsonFromStatus: ``{"error": message}``."""
    return ('{"error":' + _string(utf8(message)) + "}").encode("utf-8", "surrogateescape")
