"""TensorProto <-> NumPy conversions with TF Serving's wire conventions (no transport here).

Numeric tensors are converted by NumPy and the proto alone: `tf.make_tensor_proto` and
`tf.make_ndarray` cost more Python per `decode_step` call than the rest of the handler. Other dtypes
(strings, quantized) go through TensorFlow's own functions.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import InvalidArgumentError

_NUMPY_DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_BFLOAT16: np.dtype(tf.bfloat16.as_numpy_dtype),
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
}
_DATA_TYPES = {dtype: data_type for data_type, dtype in _NUMPY_DTYPES.items()}

# Where C++ Tensor::AsProtoField puts each dtype's values, and the NumPy view written there: half_val
# holds bit patterns (of float16 or bfloat16), complex fields interleave re, im.
_PROTO_FIELDS: dict[int, tuple[str, np.dtype]] = {
    types_pb2.DT_FLOAT: ("float_val", np.dtype("<f4")),
    types_pb2.DT_DOUBLE: ("double_val", np.dtype("<f8")),
    types_pb2.DT_COMPLEX64: ("scomplex_val", np.dtype("<f4")),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", np.dtype("<f8")),
    types_pb2.DT_INT8: ("int_val", np.dtype(np.int8)),
    types_pb2.DT_INT16: ("int_val", np.dtype(np.int16)),
    types_pb2.DT_INT32: ("int_val", np.dtype(np.int32)),
    types_pb2.DT_UINT8: ("int_val", np.dtype(np.uint8)),
    types_pb2.DT_UINT16: ("int_val", np.dtype(np.uint16)),
    types_pb2.DT_INT64: ("int64_val", np.dtype(np.int64)),
    types_pb2.DT_UINT32: ("uint32_val", np.dtype(np.uint32)),
    types_pb2.DT_UINT64: ("uint64_val", np.dtype(np.uint64)),
    types_pb2.DT_BOOL: ("bool_val", np.dtype(np.bool_)),
    types_pb2.DT_HALF: ("half_val", np.dtype(np.uint16)),
    types_pb2.DT_BFLOAT16: ("half_val", np.dtype(np.uint16)),
}
_PACKED_KEYS = {
    # A packed repeated field's key: its number and wire type 2 (length-delimited), one byte below field 16.
    name: bytes([tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name[name].number << 3 | 2])
    for name in ("float_val", "double_val", "scomplex_val", "dcomplex_val")
}


def dtype_name(dtype: int) -> str:
    """TensorFlow's C++ DataTypeString spelling ("float", "string", "int32"), used in messages."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def to_ndarray(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        dtype = _NUMPY_DTYPES.get(proto.dtype)
        if dtype is not None and proto.tensor_content:
            shape = [dim.size for dim in proto.tensor_shape.dim]
            return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        # Same wording as TF Serving when Tensor::FromProto fails (saved_model/util.cc).
        raise InvalidArgumentError(f"tensor parsing error: {alias}") from exc


def to_tensor_proto(array: np.ndarray, as_content: bool = False) -> tensor_pb2.TensorProto:
    """Serialises like TF Serving: typed ``*_val`` fields unless ``as_content`` (its
    ``--enable_serialization_as_tensor_content``); make_tensor_proto alone would use tensor_content."""
    array = np.asarray(array)
    data_type = _DATA_TYPES.get(array.dtype)
    if data_type is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(
        dtype=data_type,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
    )
    if as_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
        return proto
    if array.size == 0:
        return proto
    field, view = _PROTO_FIELDS[data_type]
    values = np.ascontiguousarray(array).ravel().view(view)
    if view.kind == "f":
        # A packed fixed-width field's wire bytes are the little-endian values themselves: parsing them
        # gives the same message as extending from a list, without a Python float per value. Protobuf
        # writes the length: a BytesValue serializes as its own one-byte key, the length, the bytes.
        payload = wrappers_pb2.BytesValue(value=values.astype(view, copy=False).tobytes()).SerializeToString()
        proto.MergeFromString(_PACKED_KEYS[field] + payload[1:])
    else:
        getattr(proto, field).extend(values.tolist())
    return proto
