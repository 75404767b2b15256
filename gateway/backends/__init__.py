"""Model backends behind one interface: in-process SavedModel, or TF Serving over gRPC."""

from gateway.backends.base import (
    Condition,
    DecodeStepResult,
    Encoding,
    ModelBackend,
    ModelInfo,
    ModelUnavailableError,
    ModelVersionGoneError,
)

__all__ = [
    "Condition",
    "DecodeStepResult",
    "Encoding",
    "ModelBackend",
    "ModelInfo",
    "ModelUnavailableError",
    "ModelVersionGoneError",
]
