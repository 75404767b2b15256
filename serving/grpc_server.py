"""TF Serving's gRPC PredictionService and ModelService, answered from a ModelStore.

Status codes and messages follow tensorflow_model_server's, so a client tested against this
stand-in sees what it will see in production. Classify, Regress and MultiInference are not
implemented (UNIMPLEMENTED).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.apis.model_pb2 import ModelSpec
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import InvalidArgumentError, ServingError
from serving.model_store import DEFAULT_SIGNATURE, ModelStore
from serving.tensors import to_ndarray, to_tensor_proto

__all__ = ["build_server", "to_ndarray", "to_tensor_proto"]

# TF Serving's server builder calls SetMaxMessageSize(INT32_MAX); a smaller cap would reject
# image batches the real server accepts.
MAX_MESSAGE_BYTES = 2**31 - 1
# ToGRPCStatus (grpc_status_util.cc) cuts longer messages the same way.
MAX_ERROR_MESSAGE_CHARS = 1024
SIGNATURE_DEF_FIELD = "signature_def"

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _status_from_serving_errors(method: _Method) -> _Method:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ServingError as exc:
            message = exc.message
            if len(message) > MAX_ERROR_MESSAGE_CHARS:
                message = message[:MAX_ERROR_MESSAGE_CHARS] + "...TRUNCATED"
            context.abort(grpc.StatusCode[exc.code], message)

    return wrapper  # type: ignore[return-value]


def _model_spec(request: Any) -> ModelSpec:
    if not request.HasField("model_spec"):
        raise InvalidArgumentError("Missing ModelSpec")
    return request.model_spec


def _unimplemented(context: grpc.ServicerContext, method: str) -> None:
    context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not implemented by this local stand-in for tensorflow_model_server",
    )


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, store: ModelStore, tensor_content: bool = False) -> None:
        self._store = store
        self._tensor_content = tensor_content

    @_status_from_serving_errors
    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        spec = _model_spec(request)
        servable = self._store.resolve(spec)
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        servable.signature_def(signature_name)  # an unknown signature outranks bad inputs, as in TF Serving
        inputs = {alias: to_ndarray(alias, proto) for alias, proto in request.inputs.items()}
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        outputs = servable.predict(signature_name, inputs, list(request.output_filter), deadline)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(to_tensor_proto(array, self._tensor_content))
        return response

    @_status_from_serving_errors
    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = _model_spec(request)
        # Messages as in get_model_metadata_impl.cc; fields are checked before the model is looked up.
        if not request.metadata_field:
            raise InvalidArgumentError("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise InvalidArgumentError(f"Metadata field {field} is not supported")
        servable = self._store.resolve(spec)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signature_defs.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response

    def Classify(self, request: Any, context: grpc.ServicerContext) -> None:
        _unimplemented(context, "Classify")

    def Regress(self, request: Any, context: grpc.ServicerContext) -> None:
        _unimplemented(context, "Regress")

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> None:
        _unimplemented(context, "MultiInference")


# Applies a new ModelServerConfig (ServerCore::ReloadConfig); raises ServingError when refused.
ReloadConfig = Callable[[model_server_config_pb2.ModelServerConfig], None]


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, store: ModelStore, reload_config: ReloadConfig | None = None) -> None:
        self._store = store
        self._reload_config = reload_config

    @_status_from_serving_errors
    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = _model_spec(request)
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self._store.version_status(spec.name, version):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = error_codes_pb2.Code.Value(status.error_code)
            entry.status.error_message = status.error_message
        return response

    @_status_from_serving_errors
    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        if self._reload_config is None:
            _unimplemented(context, "HandleReloadConfigRequest")
        if request.config.WhichOneof("config") != "model_config_list":
            # Wording of model_service_impl.cc.
            raise InvalidArgumentError(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        self._reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse()


def build_server(
    store: ModelStore,
    port: int,
    max_threads: int,
    tensor_content: bool = False,
    reload_config: ReloadConfig | None = None,
) -> grpc.Server:
    """A gRPC server bound to ``0.0.0.0:port`` as tensorflow_model_server binds; not started yet."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # gRPC Python shares ports by default; a second server on a busy port must fail,
            # not silently split the traffic with whatever already listens there.
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(store, tensor_content), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(store, reload_config), server)
    server.add_insecure_port(f"0.0.0.0:{port}")
    return server
