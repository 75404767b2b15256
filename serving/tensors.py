"""TensorProto <-> NumPy conversions with TF Serving's wire conventions (no transport here)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import InvalidArgumentError


def dtype_name(dtype: int) -> str:
    """TensorFlow's C++ DataTypeString spelling ("float", "string", "int32"), used in messages."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def to_ndarray(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        # Same wording as TF Serving when Tensor::FromProto fails (saved_model/util.cc).
        raise InvalidArgumentError(f"tensor parsing error: {alias}") from exc


# Where C++ Tensor::AsProtoField puts each dtype's values; quantized and float8 types keep
# tensor_content here.
_PROTO_FIELDS: dict[int, tuple[str, type | None]] = {
    types_pb2.DT_FLOAT: ("float_val", None),
    types_pb2.DT_DOUBLE: ("double_val", None),
    types_pb2.DT_INT8: ("int_val", None),
    types_pb2.DT_INT16: ("int_val", None),
    types_pb2.DT_INT32: ("int_val", None),
    types_pb2.DT_UINT8: ("int_val", None),
    types_pb2.DT_UINT16: ("int_val", None),
    types_pb2.DT_INT64: ("int64_val", None),
    types_pb2.DT_UINT32: ("uint32_val", None),
    types_pb2.DT_UINT64: ("uint64_val", None),
    types_pb2.DT_HALF: ("half_val", np.uint16),
    types_pb2.DT_BFLOAT16: ("half_val", np.uint16),
    types_pb2.DT_COMPLEX64: ("scomplex_val", np.float32),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", np.float64),
}


# TensorProto's fixed-width repeated fields: (field number, little-endian element type).
_PACKED_FIXED_WIDTH: dict[str, tuple[int, str]] = {
    "float_val": (5, "<f4"),
    "double_val": (6, "<f8"),
    "scomplex_val": (9, "<f4"),
    "dcomplex_val": (12, "<f8"),
}
_LENGTH_DELIMITED = 2


def to_tensor_proto(array: np.ndarray, as_content: bool = False) -> tensor_pb2.TensorProto:
    """Serialises like TF Serving: typed ``*_val`` fields unless ``as_content`` (its
    ``--enable_serialization_as_tensor_content``); make_tensor_proto alone would use tensor_content."""
    proto = tf.make_tensor_proto(array)
    if as_content or not proto.tensor_content or proto.dtype not in _PROTO_FIELDS:
        return proto
    field, view_as = _PROTO_FIELDS[proto.dtype]
    values = np.ascontiguousarray(array).ravel()
    if view_as is not None:
        values = values.view(view_as)  # half_val holds bit patterns; complex fields interleave re, im
    proto.ClearField("tensor_content")
    if field in _PACKED_FIXED_WIDTH:
        # A packed fixed-width field's wire bytes are the little-endian values themselves: parsing them
        # gives the same message as extending from a list, without a Python float per value.
        number, wire_dtype = _PACKED_FIXED_WIDTH[field]
        payload = values.astype(wire_dtype, copy=False).tobytes()
        proto.MergeFromString(_varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload)
    else:
        getattr(proto, field).extend(values.tolist())
    return proto


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
