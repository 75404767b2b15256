"""TF Serving's REST JSON for Predict: request bodies to arrays, outputs to response bodies.

A port of the rules of tensorflow_serving/util/json_tensor.cc, down to its messages and its
rapidjson ``PrettyWriter`` layout (4-space indent, rows printed on one line), because clients and
the SageMaker container compare these bodies as text:

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
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import InvalidArgumentError, ServingError, UnimplementedError
from serving.rapidjson import JsonObject, PrettyWriter, debug_string, parse_json, utf8
from serving.tensors import dtype_name

ROW = "row"
COLUMNAR = "columnar"
BYTES_SUFFIX = "_bytes"

InputInfos = Mapping[str, meta_graph_pb2.TensorInfo]


def _type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, JsonObject):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, JsonObject) and len(value.pairs) == 1 and isinstance(value.get("b64"), str)


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
    if isinstance(value, JsonObject):
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
    if not isinstance(instances[0], JsonObject) and len(infos) > 1:
        raise InvalidArgumentError(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )

    def named(value: Any) -> bool:
        return isinstance(value, JsonObject) and not _is_b64(value)

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
            for name, value in element.pairs:
                try:
                    add(value, name)
                except ServingError as exc:
                    raise InvalidArgumentError(
                        f"Failed to process element: {index} key: {name} of 'instances' list. Error: {exc.to_string()}"
                    ) from exc
            if {name for name, _ in element.pairs} != set(infos):
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
    if not isinstance(inputs, JsonObject) or _is_b64(inputs):
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


def _decimal(value: float, single: bool) -> bytes:
    """WriteDecimal: six significant digits unless they do not round-trip, and always a '.' or 'e'."""
    if math.isnan(value):
        return b"NaN"
    if math.isinf(value):
        return b"-Infinity" if value < 0 else b"Infinity"
    text = f"{value:.6g}"
    round_trips = np.float32(float(text)) == np.float32(value) if single else float(text) == value
    if not round_trips:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text.encode()


def _value_writer(array: np.ndarray, alias: str) -> Callable[[PrettyWriter, Any], None]:
    """How AddSingleValueAndAdvance writes one value of this output's dtype."""
    dtype = tf.as_dtype(array.dtype).as_datatype_enum
    if dtype == types_pb2.DT_FLOAT:
        return lambda w, v: w.raw(_decimal(float(v), single=True))
    if dtype == types_pb2.DT_DOUBLE:
        return lambda w, v: w.raw(_decimal(float(v), single=False))
    if dtype in (
        types_pb2.DT_INT8,
        types_pb2.DT_INT16,
        types_pb2.DT_INT32,
        types_pb2.DT_UINT8,
        types_pb2.DT_INT64,
        types_pb2.DT_UINT32,
        types_pb2.DT_UINT64,
    ):
        return lambda w, v: w.raw(str(int(v)).encode())
    if dtype == types_pb2.DT_BOOL:
        return lambda w, v: w.raw(b"true" if v else b"false")
    if dtype == types_pb2.DT_STRING and alias.endswith(BYTES_SUFFIX):
        return _write_b64
    if dtype == types_pb2.DT_STRING:
        return lambda w, v: w.string(bytes(v))

    def unsupported(writer: PrettyWriter, value: Any) -> None:
        raise InvalidArgumentError(f"Failed to write JSON value for tensor type: {dtype_name(dtype)}")

    return unsupported


def _write_b64(writer: PrettyWriter, value: bytes) -> None:
    writer.start(in_array=False)
    writer.string(b"b64")
    writer.string(base64.b64encode(bytes(value)))
    writer.end()


def _write_tensor(writer: PrettyWriter, array: np.ndarray, write_value: Callable[[PrettyWriter, Any], None]) -> None:
    """AddTensorValues: nested arrays, or the bare value of a scalar."""
    if array.ndim == 0:
        write_value(writer, array[()])
        return
    writer.start(in_array=True)
    for item in array:
        if isinstance(item, np.ndarray):
            _write_tensor(writer, item, write_value)
        else:
            write_value(writer, item)
    writer.end()


def predict_response(outputs: Mapping[str, np.ndarray], response_format: str) -> bytes:
    """MakeJsonFromTensors: ``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for columnar."""
    if not outputs:
        raise InvalidArgumentError("Cannot convert empty tensor map to JSON")
    outputs = {name: np.asarray(value) for name, value in outputs.items()}
    names = sorted(outputs)
    writers = {name: _value_writer(outputs[name], name) for name in names}
    writer = PrettyWriter()
    several = len(names) > 1
    writer.start(in_array=False)
    if response_format == COLUMNAR:
        writer.string(b"outputs")
        if several:
            writer.start(in_array=False)
        for name in names:
            if several:
                writer.string(utf8(name))
            _write_tensor(writer, outputs[name], writers[name])
        if several:
            writer.end()
        writer.end()
        return writer.getvalue()
    batch = -1
    for name in names:
        if outputs[name].ndim == 0:
            raise InvalidArgumentError(f"Tensor name: {name} has no shape information ")
        rows = outputs[name].shape[0]
        if batch >= 0 and rows != batch:
            raise InvalidArgumentError(f"Tensor name: {name} has inconsistent batch size: {rows} expecting: {batch}")
        batch = rows
    writer.string(b"predictions")
    writer.start(in_array=True)
    for row in range(batch):
        if several:
            writer.start(in_array=False)
        writer.single_line_arrays = True
        for name in names:
            if several:
                writer.string(utf8(name))
            _write_tensor(writer, outputs[name][row, ...], writers[name])
        writer.single_line_arrays = False
        if several:
            writer.end()
    writer.end()
    writer.end()
    return writer.getvalue()


def error_body(message: str) -> bytes:
    """MakeJsonFromStatus: ``{"error": message}`` as TF Serving prints it."""
    writer = PrettyWriter()
    writer.start(in_array=False)
    writer.string(b"error")
    writer.string(utf8(message))
    writer.end()
    return writer.getvalue()
