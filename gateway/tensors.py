"""NumPy arrays ⇄ TensorFlow `TensorProto`s, for TF Serving's gRPC API.

Numeric tensors travel as packed `tensor_content` bytes (what TF Serving itself sends back), strings
as `string_val`. Written against the proto directly: `tf.make_tensor_proto` would pull TensorFlow's
runtime into every call on the gateway's hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_TO_DTYPE = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
}
_FROM_DTYPE = {v: k for k, v in _TO_DTYPE.items()}
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
}


def _shape(dims: Sequence[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def strings_to_proto(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, tensor_shape=_shape([len(values)]), string_val=list(values)
    )


def array_to_proto(array: np.ndarray | int) -> tensor_pb2.TensorProto:
    array = np.asarray(array)
    if array.dtype not in _TO_DTYPE:
        raise TypeError(f"no TensorProto mapping for dtype {array.dtype}")
    return tensor_pb2.TensorProto(
        dtype=_TO_DTYPE[array.dtype],
        tensor_shape=_shape(array.shape),
        tensor_content=np.ascontiguousarray(array).tobytes(),
    )


def proto_to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.dtype == types_pb2.DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    dtype = _FROM_DTYPE.get(proto.dtype)
    if dtype is None:
        raise TypeError(f"unsupported TensorProto dtype {types_pb2.DataType.Name(proto.dtype)}")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    if proto.dtype == types_pb2.DT_HALF:
        # `half_val` carries each float16's bit pattern in an int32.
        values = np.array(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        values = np.array(getattr(proto, _VALUE_FIELDS[proto.dtype]), dtype=dtype)
    # A single repeated value stands for the whole tensor (TF's compact encoding).
    if values.size == 1 and np.prod(shape) != 1:
        return np.full(shape, values[0], dtype=dtype)
    return values.reshape(shape)
